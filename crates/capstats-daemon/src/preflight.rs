//! Filters that libpcap cannot compile in reasonable time are refused before the
//! daemon compiles them.
//!
//! libpcap's compiler grows faster than the square of an expression's terms and its
//! optimizer about with their cube: 200 `or`ed hosts compile in 0.3 s, 600 in 9 s,
//! 2,000 (37 KB, well within a request line) in 8 minutes; 400 `or`ed port ranges take
//! 6 s. Names in an expression are resolved (DNS) while it compiles. The daemon compiles
//! under its lock: one such request would stop it answering anyone. So each new
//! expression is first compiled by a helper process (this binary again, see
//! [`helper`]) that is killed when it takes longer than [`COMPILE_LIMIT`]; only an
//! expression that compiled in time reaches the session table.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstats_common::protocol::{self, ErrorKind};

/// How long libpcap may take to compile an expression.
pub const COMPILE_LIMIT: Duration = Duration::from_secs(5);

/// The helper's first argument: `capstats __compile-filter`, the expression on stdin.
pub const HELPER_ARG: &str = "__compile-filter";

/// Refuses `new` and `modify` requests whose expression libpcap does not compile
/// within `limit`. Whether it compiles at all is the session table's to say (it
/// compiles for the interface); this only bounds the time.
pub fn compiles_in_time(
    command: &protocol::Command,
    limit: Duration,
) -> Result<(), (ErrorKind, String)> {
    let (name, filter) = match command {
        protocol::Command::New { name, filter, .. }
        | protocol::Command::Modify { name, filter } => (name, filter),
        _ => return Ok(()),
    };
    if filter.trim().is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let failed = |what: &str, e: std::io::Error| {
        (
            ErrorKind::Internal,
            format!("cannot {what} the helper that compiles the filter of session {name:?}: {e}"),
        )
    };
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
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
        .map(|mut stdin| stdin.write_all(filter.as_bytes()));
    if let Some(Err(e)) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed("write to", e));
    }
    loop {
        if child
            .try_wait()
            .map_err(|e| failed("wait for", e))?
            .is_some()
        {
            return Ok(());
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
    }
}

/// `capstats __compile-filter`: compiles the expression on stdin for Ethernet and
/// exits; whether it compiled does not matter, only how long it took.
pub fn helper() -> std::process::ExitCode {
    let mut expression = String::new();
    if std::io::stdin().read_to_string(&mut expression).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let _ = capstats_ebpf::filter::Filter::for_linktype(pcap::Linktype::ETHERNET, &expression, 0);
    std::process::ExitCode::SUCCESS
}
