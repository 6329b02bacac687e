//! Running the system's networking tools (`ip`, `ethtool`, `tcpdump`).

use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Shared with the daemon launcher (`capstats_testkit::launch`).
pub use capstats_testkit::launch::{command_line, terminate};

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
