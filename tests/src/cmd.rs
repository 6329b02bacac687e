//! Running the system's networking tools (`ip`, `ethtool`, `tcpdump`).

use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Runs `command` to completion and returns its standard output.
///
/// # Errors
/// When it cannot be started or exits unsuccessfully; the error shows the command line,
/// the exit status and what it wrote to standard error.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let line = command_line(command);
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!(
            "`{line}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The program and its arguments, as a shell would show them.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stops a child as an administrator would: SIGTERM, then SIGKILL if it has not exited
/// within `timeout`. Returns its exit status, or `None` when it had to be killed.
///
/// # Errors
/// When waiting for it fails.
pub fn terminate(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    // SAFETY: signals our own child, which has not been waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
