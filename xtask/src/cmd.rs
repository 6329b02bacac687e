//! Numbered steps and the commands they run, printed as they happen, so that a log of
//! `cargo xtask test` says which step failed and how to repeat it by hand.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `cargo` in the workspace root: the same cargo that started xtask (`$CARGO`), so the
/// toolchain does not change halfway.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// The command as one would type it (the program's file name, arguments quoted for sh).
pub fn display(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(name)
        .chain(command.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints and runs `command` with the terminal as its stdio; fails unless it exits 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = display(command);
    println!("    $ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Prints and runs `command`, returning its standard output; stderr goes to the terminal.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = display(command);
    println!("    $ {shown}");
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{shown}` printed something that is not UTF-8"))
}

/// Whether `command` exists and exits 0, without printing anything.
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// How a step ended.
enum Outcome {
    Done,
    Skipped(String),
}

/// A task's numbered steps, with their durations for the summary.
pub struct Steps {
    task: &'static str,
    total: usize,
    log: Vec<(String, Outcome, Duration)>,
    started: Instant,
}

impl Steps {
    pub fn new(task: &'static str, total: usize) -> Self {
        Self {
            task,
            total,
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs one step: prints its number and title, and names it if it fails.
    pub fn run<T>(
        &mut self,
        title: &str,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let number = self.log.len() + 1;
        println!("\n==> [{number}/{}] {title}", self.total);
        let start = Instant::now();
        let value = step().with_context(|| {
            format!("cargo xtask {}: step {number} ({title}) failed", self.task)
        })?;
        self.log
            .push((title.to_owned(), Outcome::Done, start.elapsed()));
        Ok(value)
    }

    /// Records a step that cannot run here, loudly: the summary repeats it.
    pub fn skip(&mut self, title: &str, reason: &str) {
        let number = self.log.len() + 1;
        println!("\n==> [{number}/{}] {title}", self.total);
        println!("    !!! SKIPPED: {reason}");
        self.log.push((
            title.to_owned(),
            Outcome::Skipped(reason.to_owned()),
            Duration::ZERO,
        ));
    }

    /// Prints every step with its time, and the skipped ones again.
    pub fn summary(&self) {
        println!(
            "\n==> cargo xtask {}: done in {:.1} s",
            self.task,
            self.started.elapsed().as_secs_f64()
        );
        for (title, outcome, took) in &self.log {
            match outcome {
                Outcome::Done => println!("    {:>7.1} s  {title}", took.as_secs_f64()),
                Outcome::Skipped(_) => println!("    SKIPPED    {title}"),
            }
        }
        for (title, outcome, _) in &self.log {
            if let Outcome::Skipped(reason) = outcome {
                println!("!!! WARNING: {title} was skipped: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_sh_needs() {
        let mut command = Command::new("/usr/bin/capstats");
        command.args(["test", "a.pcap", "udp port 53", "it's", ""]);
        assert_eq!(
            display(&command),
            r"capstats test a.pcap 'udp port 53' 'it'\''s' ''"
        );
    }
}

/// A cargo profile to build `capstats` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The quickest to compile.
    Dev,
    Release,
}

/// Builds the `capstats` binary and returns its path as cargo reports it, wherever the
/// target directory is.
pub fn build_capstats(profile: Profile) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.arg("build");
    if profile == Profile::Release {
        command.arg("--release");
    }
    command.args([
        "--package",
        "capstats-cli",
        "--bin",
        "capstats",
        "--message-format",
        "json-render-diagnostics",
    ]);
    let stdout = output(&mut command)?;
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "capstats"
            && let Some(path) = message["executable"].as_str()
        {
            println!("    built {path}");
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo built capstats-cli but did not name the capstats executable")
}
