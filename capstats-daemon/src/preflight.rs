//! Each new filter is compiled by a helper process, against a time limit, before the
//! daemon takes its lock.
//!
//! libpcap's compiler grows faster than the square of an expression's terms and its
//! optimizer about with their cube: 200 `or`ed hosts compile in 0.3 s, 600 in 9 s,
//! 2,000 (37 KB, well within a request line) in 8 minutes; 400 `or`ed port ranges take
//! 6 s. Names in an expression are resolved (DNS) while it compiles. A compile in the
//! daemon cannot be stopped, so each new expression is compiled by a helper process
//! (this binary again, see [`helper`]) that is killed when it takes longer than
//! [`COMPILE_LIMIT`]. The helper compiles for the session's interface and hook, as the
//! session will count, and hands libpcap's program back; the daemon validates it and
//! keeps it for the change (`session::precompiled`), so the expression is compiled
//! once. Where the helper could not compile it (no such interface, a syntax error),
//! the session table compiles it again to say why, which is quick for such filters.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstats_common::protocol::{self, ErrorKind, HookName};
use capstats_ebpf::cbpf::{Program, RawInsn};
use serde::{Deserialize, Serialize};

use crate::session::{self, Precompiled};

/// How long libpcap may take to compile an expression.
pub const COMPILE_LIMIT: Duration = Duration::from_secs(5);

/// The helper's first argument: `capstats __compile-filter`, a [`Job`] on stdin.
pub const HELPER_ARG: &str = "__compile-filter";

/// What the helper compiles: for the session's interface and hook when they are known
/// (a `new` names them; a `modify` finds them in the table), else for Ethernet, which
/// bounds the time alone.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    target: Option<(String, HookName)>,
    expression: String,
}

/// The size of one classic instruction as the helper writes it: `code` (u16), `jt`,
/// `jf` (u8), `k` (u32), little-endian.
const INSN_BYTES: usize = 8;

/// Refuses `new` and `modify` requests whose expression libpcap does not compile
/// within `limit`, and returns the filter compiled for `target` (the session's
/// interface and hook) when the helper could compile it there. Whether it compiles at
/// all is the session table's to say; this bounds the time and saves a second compile.
pub fn compile_in_time(
    command: &protocol::Command,
    target: Option<(String, HookName)>,
    limit: Duration,
) -> Result<Option<Precompiled>, (ErrorKind, String)> {
    let (name, filter) = match command {
        protocol::Command::New { name, filter, .. }
        | protocol::Command::Modify { name, filter } => (name, filter),
        _ => return Ok(None),
    };
    if filter.trim().is_empty() {
        return Ok(None);
    }
    let start = Instant::now();
    let failed = |what: &str, e: std::io::Error| {
        (
            ErrorKind::Internal,
            format!("cannot {what} the helper that compiles the filter of session {name:?}: {e}"),
        )
    };
    let job = Job {
        target,
        expression: filter.clone(),
    };
    let job_bytes = serde_json::to_vec(&job).map_err(|e| failed("encode a job for", e.into()))?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe. A daemon that dies takes its helper along.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
    // Read while it runs: a large program does not fit in the pipe.
    let reader = child.stdout.take().map(|mut stdout| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        })
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| failed("wait for", e))? {
            break status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err((
                ErrorKind::InvalidFilter,
                format!(
                    "the filter expression of session {name:?} ({} bytes) takes libpcap longer \
                     than {} s to compile (the limit; its compile time grows with the cube of \
                     the terms): use fewer terms, or split it into several sessions",
                    filter.len(),
                    limit.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = reader
        .and_then(|reader| reader.join().ok())
        .and_then(Result::ok)
        .unwrap_or_default();
    let Some((interface, hook)) = job.target else {
        return Ok(None);
    };
    if !status.success() {
        // Not compiled there: the session table compiles it again and says why.
        return Ok(None);
    }
    let program = decode(&output).map_err(|e| {
        (
            ErrorKind::Internal,
            format!("the helper that compiles the filter of session {name:?} answered {e}"),
        )
    })?;
    Ok(Some(session::precompiled(
        &interface, hook, filter, &program,
    )))
}

/// libpcap's program as the helper writes it.
fn encode(raw: &[RawInsn]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(raw.len() * INSN_BYTES);
    for insn in raw {
        bytes.extend_from_slice(&insn.code.to_le_bytes());
        bytes.extend_from_slice(&[insn.jt, insn.jf]);
        bytes.extend_from_slice(&insn.k.to_le_bytes());
    }
    bytes
}

/// The helper's answer: libpcap's program, validated as any classic program is.
fn decode(bytes: &[u8]) -> Result<Program, String> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(INSN_BYTES) {
        return Err(format!("{} bytes, not a program", bytes.len()));
    }
    let raw: Vec<RawInsn> = bytes
        .chunks_exact(INSN_BYTES)
        .map(|b| {
            RawInsn::new(
                u16::from_le_bytes([b[0], b[1]]),
                b[2],
                b[3],
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            )
        })
        .collect();
    Program::new(&raw).map_err(|e| format!("a program the daemon refuses: {e}"))
}

/// `capstats __compile-filter`: compiles the [`Job`] on stdin and writes libpcap's
/// program to stdout (exit 0), or exits 1 when it does not compile there. Without a
/// target it compiles for Ethernet and writes nothing: only the time matters then.
pub fn helper() -> std::process::ExitCode {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let Ok(job) = serde_json::from_slice::<Job>(&input) else {
        return std::process::ExitCode::FAILURE;
    };
    let Some((interface, hook)) = job.target else {
        let _ = capstats_ebpf::filter::Filter::for_linktype(
            pcap::Linktype::ETHERNET,
            &job.expression,
            0,
        );
        return std::process::ExitCode::SUCCESS;
    };
    let Ok(filter) = session::libpcap_filter(&interface, hook, &job.expression) else {
        return std::process::ExitCode::FAILURE;
    };
    match std::io::stdout().write_all(&encode(filter.raw())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_answer_decodes_to_the_program_it_encoded() {
        // ldh [12]; jeq #0x800, 0, 1; ret #262144; ret #0
        let raw = [
            RawInsn::new(0x28, 0, 0, 12),
            RawInsn::new(0x15, 0, 1, 0x800),
            RawInsn::new(0x06, 0, 0, 0x40000),
            RawInsn::new(0x06, 0, 0, 0),
        ];
        let bytes = encode(&raw);
        assert_eq!(decode(&bytes), Ok(Program::new(&raw).unwrap()));
        assert!(decode(&bytes[..7]).is_err(), "a cut answer is refused");
        assert!(decode(&[]).is_err(), "an empty answer is refused");
        // A jump past the end: validated, not trusted.
        let mut bad = bytes.clone();
        bad[10] = 9;
        assert!(decode(&bad).unwrap_err().contains("refuses"));
    }
}
