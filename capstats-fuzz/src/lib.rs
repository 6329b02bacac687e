//! Fuzzing what the daemon reads from its socket: the properties every input must
//! keep, whatever its bytes.
//!
//! - [`request_line`]: one line through `Request::parse` and `Command::check`, the
//!   request decoder. Never a panic; a request it accepts serializes back to itself; a
//!   refusal says why in one line without control characters, at most 1 KiB long
//!   however much of the request it quotes.
//! - [`conversation`]: any byte stream through the daemon's connection loop
//!   (`capstats_daemon::converse`: line framing with the 64 KiB limit, UTF-8, decoding,
//!   checks, answers), with a stand-in for the session table. Exactly one response
//!   line per request line, each the one [`request_line`] gives for that line alone;
//!   only accepted requests reach the table, unchanged and in order.
//! - [`generate`]: hostile input from a seed: random bytes, truncated and mutated
//!   requests, deep nesting, invalid UTF-8, lines at and over the limit, unknown fields
//!   and commands, wrong types; and valid requests, which must round-trip.
//! - [`fuzz`]: the loop that runs generated cases against both, counting requests
//!   and outcomes; a failing case is named by its seed, which regenerates it.
//!
//! Session tables need the kernel (pinned maps, programs): the table's own checks
//! (duplicate names, unknown interfaces, libpcap's verdict) are exercised end to end by
//! `tests/tests/hostile_input.rs`, not here.
//!
//! Three drivers: the cargo-fuzz targets in `fuzz/` (libFuzzer's coverage-guided
//! inputs), the property test `tests/properties.rs` (CI, a few seconds), and
//! `cargo xtask fuzz` (long runs on stable Rust).

pub mod generate;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use capstats_common::protocol::{Command, LineError, Reply, Request, Response};
use capstats_common::text::MAX_MESSAGE_BYTES;
use capstats_common::{MAX_REQUEST_BYTES, PROTOCOL_VERSION};

/// What the daemon does with a request line: dispatch the command, or refuse it (its
/// answer is the refusal's kind and text).
pub type Verdict = Result<Command, LineError>;

/// One request line, as the daemon decodes and checks it before dispatch.
///
/// # Panics
/// When a property is broken: an accepted request that does not serialize back to
/// itself, or a refusal with an empty or oversized message, or one with control
/// characters.
pub fn request_line(line: &str) -> Verdict {
    let request = match Request::parse(line) {
        Ok(request) => request,
        Err(message) => {
            check_message(line.len(), &message);
            return Err(LineError::Malformed(message));
        }
    };
    assert_eq!(
        request.version, PROTOCOL_VERSION,
        "{line:?} was accepted with another protocol version"
    );
    let json = serde_json::to_string(&request).expect("a request serializes");
    assert!(
        !json.contains('\n'),
        "{request:?} serializes to several lines"
    );
    match Request::parse(&json) {
        Ok(again) => assert_eq!(
            again, request,
            "{line:?} was read as {request:?}, which serializes to {json}, read back as {again:?}"
        ),
        Err(e) => panic!("{line:?} was read as {request:?}, whose JSON {json} is refused: {e}"),
    }
    match request.command.check() {
        Ok(()) => Ok(request.command),
        Err(error) => {
            check_message(line.len(), &error.to_string());
            Err(LineError::Refused(error))
        }
    }
}

fn check_message(request_bytes: usize, message: &str) {
    assert!(!message.is_empty(), "an empty error message");
    assert!(
        !message.chars().any(char::is_control),
        "an error message with control characters (a newline, an escape): {message:?}"
    );
    assert!(
        message.len() <= MAX_MESSAGE_BYTES,
        "a {}-byte error message for a {request_bytes}-byte request: {:?}...",
        message.len(),
        &message[..message.floor_char_boundary(200)]
    );
}

/// What the daemon does with one raw line (without its newline), framing included.
pub fn raw_line(line: &[u8]) -> Verdict {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(LineError::TooLong);
    }
    match std::str::from_utf8(line) {
        Ok(text) => request_line(text),
        Err(_) => Err(LineError::NotUtf8),
    }
}

/// The request lines of a byte stream as the daemon frames them: split at each `\n`;
/// a last line without one counts unless it is empty.
pub fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|last| last.is_empty()) {
        lines.pop();
    }
    lines
}

/// A byte stream through the daemon's connection loop, read `chunk` bytes at a time
/// (so that lines straddle the reader's buffer), with a stand-in session table that
/// records what reaches it. Returns each line's verdict.
///
/// # Panics
/// When a property is broken (see the crate's documentation).
pub fn conversation(data: &[u8], chunk: usize) -> Vec<Verdict> {
    let mut reader = BufReader::with_capacity(chunk.max(1), data);
    let mut written = Vec::new();
    let mut dispatched = Vec::new();
    let mut table = |command: Command| {
        dispatched.push(command);
        Response::Ok(Reply::Sessions(Vec::new()))
    };
    capstats_daemon::converse(&mut reader, &mut written, &mut table)
        .expect("a conversation over bytes in memory cannot fail");
    let written = String::from_utf8(written).expect("responses are UTF-8");
    assert!(
        written.is_empty() || written.ends_with('\n'),
        "the last response has no newline"
    );
    let responses: Vec<Response> = written
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("response {line:?}: {e}")))
        .collect();
    let lines = lines(data);
    assert_eq!(
        responses.len(),
        lines.len(),
        "{} request lines got {} responses",
        lines.len(),
        responses.len()
    );
    let mut dispatched = dispatched.into_iter();
    let verdicts: Vec<Verdict> = lines.iter().map(|line| raw_line(line)).collect();
    for (i, (verdict, response)) in verdicts.iter().zip(responses).enumerate() {
        match (verdict, response) {
            (Ok(command), Response::Ok(_)) => {
                assert_eq!(
                    dispatched.next().as_ref(),
                    Some(command),
                    "line {i}: the table did not get the request"
                );
            }
            (Err(refusal), Response::Error(e)) => {
                assert_eq!(
                    (refusal.kind(), refusal.to_string()),
                    (e.kind, e.message),
                    "line {i}: another error than the line alone gives"
                );
            }
            (verdict, response) => {
                panic!("line {i}: the line alone gives {verdict:?}, the conversation {response:?}")
            }
        }
    }
    assert!(
        dispatched.next().is_none(),
        "the table got more requests than were accepted"
    );
    verdicts
}

/// A verdict in a few words, for the counts a run prints.
pub fn outcome(verdict: &Verdict) -> String {
    let (kind, message) = match verdict {
        Ok(command) => {
            let json = serde_json::to_value(command).expect("a command serializes");
            return format!("dispatched {}", json["command"].as_str().unwrap_or("?"));
        }
        Err(refusal) => (refusal.kind(), refusal.to_string()),
    };
    let kind = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let why = [
        ("longer than", "too long"),
        ("not UTF-8", "not UTF-8"),
        ("levels deep", "nested too deep"),
        ("not JSON", "not JSON"),
        ("must be a JSON object", "not an object"),
        ("\"version\"", "bad version"),
        ("not spoken here", "other version"),
        ("unknown variant", "unknown command or value"),
        ("unknown field", "unknown field"),
        ("missing field", "missing field"),
        ("invalid type", "wrong type"),
        ("must be a", "wrong type"),
        ("NUL byte", "NUL in filter"),
        ("session name", "bad session name"),
        ("interface name", "bad interface name"),
    ]
    .iter()
    .find(|(says, _)| message.contains(says))
    .map_or("other", |(_, why)| why);
    format!("refused {kind} ({why})")
}

/// How many cases, requests and bytes a run went through, and what became of the
/// requests.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub cases: u64,
    pub requests: u64,
    pub bytes: u64,
    /// [`outcome`] → how many requests had it.
    pub outcomes: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} requests fuzzed in {} cases ({:.1} MB) in {:.1?}, no failure",
            self.requests,
            self.cases,
            self.bytes as f64 / 1e6,
            self.elapsed
        )?;
        for (outcome, n) in &self.outcomes {
            writeln!(f, "  {n:>10}  {outcome}")?;
        }
        Ok(())
    }
}

/// A failing case: its seed regenerates it ([`case`]).
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
    pub input: Vec<u8>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "case {:#018x} failed ({} bytes of input): {}\nreplay it with `cargo xtask fuzz --case {:#x}`",
            self.seed,
            self.input.len(),
            self.message,
            self.seed
        )
    }
}

/// Runs the case of `seed`: a generated stream through [`conversation`] (which checks
/// each line with [`request_line`]), and the generated valid requests through the
/// decoder from the other side (they must come back as they were).
///
/// # Errors
/// The failure, with the input, when a property is broken.
pub fn case(seed: u64, report: &mut Report) -> Result<(), Failure> {
    let mut rng = generate::Rng::new(seed);
    let case = generate::case(&mut rng);
    let run = catch_unwind(AssertUnwindSafe(|| {
        for command in &case.valid {
            let json = serde_json::to_string(&Request::new(command.clone()))
                .expect("a request serializes");
            assert_eq!(
                Request::parse(&json).map(|r| r.command).as_ref(),
                Ok(command),
                "a valid request does not come back as it was"
            );
        }
        conversation(&case.stream, case.chunk)
    }));
    match run {
        Ok(verdicts) => {
            report.cases += 1;
            report.requests += verdicts.len() as u64;
            report.bytes += case.stream.len() as u64;
            for verdict in &verdicts {
                *report.outcomes.entry(outcome(verdict)).or_default() += 1;
            }
            Ok(())
        }
        Err(panic) => Err(Failure {
            seed,
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into()),
            input: case.stream,
        }),
    }
}

/// Runs cases from `seed` on until `enough` says so (it sees the report so far).
///
/// # Errors
/// The first failing case.
pub fn fuzz(seed: u64, mut enough: impl FnMut(&Report) -> bool) -> Result<Report, Failure> {
    let start = Instant::now();
    let mut report = Report::default();
    let mut seeds = generate::Rng::new(seed);
    while !enough(&report) {
        case(seeds.next_u64(), &mut report)?;
        report.elapsed = start.elapsed();
    }
    report.elapsed = start.elapsed();
    Ok(report)
}
