//! Every filter is compiled by a helper process, against a time limit, outside the
//! service's lock.
//!
//! libpcap's compiler grows faster than the square of an expression's terms and its
//! optimizer about with their cube: 200 `or`ed hosts compile in 0.3 s, 600 in 9 s,
//! 2,000 (37 KB, well within a request line) in 8 minutes; 400 `or`ed port ranges take
//! 6 s. Names in an expression are resolved (DNS) while it compiles. A compile in the
//! daemon cannot be stopped, so each expression is compiled by a helper process (this
//! binary again, see [`helper`]) that is killed when it takes longer than
//! [`COMPILE_LIMIT`]. The helper compiles for the session's interface and hook, as the
//! session will count, and answers libpcap's program or libpcap's reason for refusing
//! it; the daemon validates the program and hands it, as a [`Compiled`], to the
//! request, restore or resume that uses it. Nothing is compiled twice, and nothing is
//! compiled while the session table is locked.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstats_common::protocol::{ErrorKind, HookName};
use capstats_ebpf::cbpf::{ClassicError, Program, RawInsn};
use capstats_ebpf::filter::LiveHandle;
use serde::{Deserialize, Serialize};

use crate::session::{self, Compiled, SessionError};

/// How long libpcap may take to compile an expression.
pub const COMPILE_LIMIT: Duration = Duration::from_secs(5);

/// The helper's first argument: `capstats __compile-filter`, a [`Job`] on stdin.
pub const HELPER_ARG: &str = "__compile-filter";

/// What the helper compiles: an expression for an interface and hook.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    interface: String,
    hook: HookName,
    expression: String,
}

/// What the helper answers: libpcap's program, or why libpcap did not compile the
/// expression there, with the protocol's error kind.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// `code`, `jt`, `jf`, `k` of each classic instruction.
    Program(Vec<(u16, u8, u8, u32)>),
    Refused {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a filter was not compiled: libpcap's reason as the helper gave it, the time
/// limit, a helper that could not run or answered nonsense, or a program the session
/// cannot count with. `whose` names the filter (`session "web"`).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// libpcap refused the expression there; the helper's words and kind, as given.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    #[error(
        "the filter expression of {whose} ({bytes} bytes) takes libpcap longer than {} s to \
         compile (the limit; its compile time grows with the cube of the terms): use fewer \
         terms, or split it into several sessions",
        limit.as_secs_f64()
    )]
    TooSlow {
        whose: String,
        bytes: usize,
        limit: Duration,
    },
    #[error("cannot {what} the helper that compiles the filter of {whose}: {cause}")]
    Helper {
        whose: String,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error(
        "the helper that compiles the filter of {whose} ended ({status}) and answered {reason}"
    )]
    Answer {
        whose: String,
        /// How it ended (`exit status: 1`), as std prints it.
        status: String,
        reason: BadAnswer,
    },
    /// libpcap's program, which the session cannot count with there.
    #[error(transparent)]
    Program(Box<SessionError>),
    /// Not compiled: no interface of the name is there.
    #[error("no interface named {interface:?}")]
    UnknownInterface { interface: String },
    /// The compiler thread ended without an answer.
    #[error("its compiler stopped")]
    CompilerStopped,
}

/// What was wrong with a helper's answer that gave neither a program nor libpcap's
/// reason: printed in [`CompileError::Answer`]'s words (`... and answered {reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// Bytes that are no [`Answer`] (an empty or cut output, a helper that crashed).
    #[error("{bytes} bytes, not an answer ({reason})")]
    NotAnAnswer { bytes: usize, reason: String },
    /// libpcap's program, which fails the kernel's classic rules: validated, not trusted.
    #[error("a program the daemon refuses: {0}")]
    Invalid(ClassicError),
}

impl CompileError {
    /// The protocol's kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CompileError::Refused { kind, .. } => *kind,
            CompileError::TooSlow { .. } => ErrorKind::InvalidFilter,
            CompileError::Helper { .. }
            | CompileError::Answer { .. }
            | CompileError::CompilerStopped => ErrorKind::Internal,
            CompileError::Program(cause) => cause.kind(),
            CompileError::UnknownInterface { .. } => ErrorKind::UnknownInterface,
        }
    }
}

/// Compiles `expression` for `interface` at `hook` in a helper process stopped after
/// `limit`, and returns the program a session there counts with. `whose` names the
/// filter in errors (`session "web"`).
pub fn compile(
    interface: &str,
    hook: HookName,
    expression: &str,
    whose: &str,
    limit: Duration,
) -> Result<Compiled, CompileError> {
    let start = Instant::now();
    let failed = |what: &'static str, cause: std::io::Error| CompileError::Helper {
        whose: whose.to_owned(),
        what,
        cause,
    };
    let job = Job {
        interface: interface.to_owned(),
        hook,
        expression: expression.to_owned(),
    };
    let job_bytes = serde_json::to_vec(&job).map_err(|e| failed("encode a job for", e.into()))?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // A daemon that dies takes its helper along.
    crate::sys::process::die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|e| failed("start", e))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&job_bytes));
    if let Some(Err(e)) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed("write to", e));
    }
    // Read while it runs (a large program does not fit in the pipe), to the end of its
    // answer: the helper ends its output before it lets its live handle go.
    let (sender, answered) = std::sync::mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = sender.send(stdout.read_to_end(&mut bytes).map(|_| bytes));
        });
    }
    let too_slow = || CompileError::TooSlow {
        whose: whose.to_owned(),
        bytes: expression.len(),
        limit,
    };
    let output = match answered.recv_timeout(limit.saturating_sub(start.elapsed())) {
        Ok(read) => read.unwrap_or_default(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(too_slow());
        }
        // No stdout to read: what the helper's status says.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Vec::new(),
    };
    let program = match decode(&output, whose, None) {
        Err(CompileError::Answer { whose, reason, .. }) => {
            // Not an answer: say how the helper ended.
            let status = loop {
                if let Some(status) = child.try_wait().map_err(|e| failed("wait for", e))? {
                    break status;
                }
                if start.elapsed() >= limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(too_slow());
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            return Err(CompileError::Answer {
                whose,
                status: status.to_string(),
                reason,
            });
        }
        answered => {
            reap(child);
            answered?
        }
    };
    Compiled::new(interface, hook, expression, &program)
        .map_err(|cause| CompileError::Program(Box::new(cause)))
}

/// Waits for a helper that has answered to end, off the caller's path: it closes its
/// live handle after its answer, which takes the kernel about 30 ms (RCU grace periods
/// of the handle's packet socket). On the runtime's blocking threads when there is a
/// runtime (their number is bounded), else on a thread of its own.
fn reap(mut child: std::process::Child) {
    let wait = move || {
        let _ = child.wait();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(wait)),
        Err(_) => drop(std::thread::spawn(wait)),
    }
}

/// libpcap's program as the helper writes it.
fn encode(raw: &[RawInsn]) -> Answer {
    Answer::Program(raw.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
}

/// The answer of the helper for `whose`, which ended with `status`: libpcap's program,
/// validated as any classic program is; libpcap's reason for refusing the expression,
/// with its kind ([`CompileError::Refused`]); or an answer that is neither
/// ([`CompileError::Answer`]).
fn decode(
    bytes: &[u8],
    whose: &str,
    status: Option<std::process::ExitStatus>,
) -> Result<Program, CompileError> {
    let bad = |reason| CompileError::Answer {
        whose: whose.to_owned(),
        status: status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
        reason,
    };
    let answer: Answer = serde_json::from_slice(bytes).map_err(|e| {
        bad(BadAnswer::NotAnAnswer {
            bytes: bytes.len(),
            reason: e.to_string(),
        })
    })?;
    let raw = match answer {
        Answer::Refused { kind, message } => {
            return Err(CompileError::Refused { kind, message });
        }
        Answer::Program(raw) => raw,
    };
    let raw: Vec<RawInsn> = raw
        .into_iter()
        .map(|(code, jt, jf, k)| RawInsn::new(code, jt, jf, k))
        .collect();
    Program::new(&raw).map_err(|e| bad(BadAnswer::Invalid(e)))
}

/// `capstats __compile-filter`: compiles the [`Job`] on stdin and writes an
/// [`Answer`] to stdout: libpcap's program, or why libpcap did not compile it there.
pub fn helper() -> std::process::ExitCode {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let Ok(job) = serde_json::from_slice::<Job>(&input) else {
        return std::process::ExitCode::FAILURE;
    };
    // The handle is let go after the answer is out (see [`reap`]).
    let mut handle = None;
    let compiled = LiveHandle::open(&job.interface).and_then(|opened| {
        let handle = handle.insert(opened);
        session::libpcap_filter_on(handle, job.hook, &job.expression)
    });
    let answer = match compiled {
        Ok(filter) => encode(filter.raw()),
        Err(e) => {
            let e = SessionError::from(e);
            Answer::Refused {
                kind: e.kind(),
                message: e.to_string(),
            }
        }
    };
    let Ok(bytes) = serde_json::to_vec(&answer) else {
        return std::process::ExitCode::FAILURE;
    };
    let mut stdout = std::io::stdout();
    if stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    // The end of the answer for the daemon, which reads to it: the pipe is closed.
    if crate::sys::process::end_stdout().is_err() {
        return std::process::ExitCode::FAILURE;
    }
    drop(handle);
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// The time limit's refusal, word for word as clients got it before it was typed.
    #[test]
    fn a_filter_too_slow_to_compile_is_an_invalid_filter_saying_why() {
        let error = CompileError::TooSlow {
            whose: "session \"web\"".into(),
            bytes: 37_000,
            limit: COMPILE_LIMIT,
        };
        assert_eq!(error.kind(), ErrorKind::InvalidFilter);
        assert_eq!(
            error.to_string(),
            "the filter expression of session \"web\" (37000 bytes) takes libpcap longer \
             than 5 s to compile (the limit; its compile time grows with the cube of the \
             terms): use fewer terms, or split it into several sessions"
        );
    }

    #[test]
    fn the_helpers_answer_decodes_to_the_program_it_encoded() {
        // ldh [12]; jeq #0x800, 0, 1; ret #262144; ret #0
        let raw = [
            RawInsn::new(0x28, 0, 0, 12),
            RawInsn::new(0x15, 0, 1, 0x800),
            RawInsn::new(0x06, 0, 0, 0x40000),
            RawInsn::new(0x06, 0, 0, 0),
        ];
        let exited = std::process::ExitStatus::from_raw(0);
        let decode = |bytes: &[u8]| decode(bytes, "session \"web\"", Some(exited));
        let bytes = serde_json::to_vec(&encode(&raw)).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Program::new(&raw).unwrap());
        // A cut answer, an empty one: refused, an internal error saying what came.
        for (cut, len) in [(&bytes[..7], 7), (&[][..], 0)] {
            let error = decode(cut).unwrap_err();
            assert!(
                matches!(
                    &error,
                    CompileError::Answer {
                        reason: BadAnswer::NotAnAnswer { bytes, .. },
                        ..
                    } if *bytes == len
                ),
                "{error:?}"
            );
            assert_eq!(error.kind(), ErrorKind::Internal);
            let prefix = format!(
                "the helper that compiles the filter of session \"web\" ended (exit status: \
                 0) and answered {len} bytes, not an answer ("
            );
            assert!(error.to_string().starts_with(&prefix), "{error}");
        }
        // A jump past the end: validated, not trusted.
        let mut bad = raw;
        bad[1] = RawInsn::new(0x15, 9, 1, 0x800);
        let bytes = serde_json::to_vec(&encode(&bad)).unwrap();
        let error = decode(&bytes).unwrap_err();
        let CompileError::Answer {
            reason: BadAnswer::Invalid(cause),
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(
            error.to_string(),
            format!(
                "the helper that compiles the filter of session \"web\" ended (exit status: \
                 0) and answered a program the daemon refuses: {cause}"
            )
        );
        // libpcap's reason, carried as it was given.
        let refused = Answer::Refused {
            kind: ErrorKind::InvalidFilter,
            message: "syntax error".into(),
        };
        let bytes = serde_json::to_vec(&refused).unwrap();
        let error = decode(&bytes).unwrap_err();
        assert!(
            matches!(
                &error,
                CompileError::Refused { kind: ErrorKind::InvalidFilter, message }
                    if message == "syntax error"
            ),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "syntax error");
    }
}
