//! `cargo xtask fuzz`: the request decoder and the daemon's connection loop against
//! hostile input for as long as asked (CI runs the same properties for a few seconds in
//! `capstats-fuzz/tests/properties.rs`).
//!
//! Two engines, each run for `--seconds` per target:
//! - `stable`: `capstats-fuzz`, a seeded generator of hostile request streams, built in
//!   release mode; needs nothing but the toolchain.
//! - `libfuzzer`: `cargo fuzz run` on the targets in `fuzz/` (`request`, `conversation`),
//!   coverage-guided, seeded from the generator. On stable Rust it runs without a
//!   sanitizer (`-s none`: AddressSanitizer needs nightly, and the code under test has
//!   no `unsafe`); cargo-fuzz is installed with `cargo install` if missing.
//!
//! A failure stops the task with the failing input's path and the command that
//! replays it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::cmd::{self, Steps};
use crate::deps;

/// Which fuzzers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The generator, then libFuzzer on each target.
    All,
    /// The seeded generator only (stable Rust, no other tool).
    Stable,
    /// libFuzzer through cargo-fuzz only.
    Libfuzzer,
}

/// The cargo-fuzz targets in `fuzz/fuzz_targets`.
const TARGETS: &[&str] = &["request", "conversation"];
/// The cargo-fuzz release `cargo xtask fuzz` installs when none is.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";
/// The longest input libFuzzer makes: past the 64 KiB line limit, so that the limit's
/// edge is reached.
const MAX_LEN: usize = 70_000;

pub fn fuzz(seconds: u64, engine: Engine, seed: Option<String>) -> anyhow::Result<()> {
    let libfuzzer = engine != Engine::Stable;
    let stable = engine != Engine::Libfuzzer;
    let total = 1 + usize::from(stable) + if libfuzzer { 2 + TARGETS.len() } else { 0 };
    let mut steps = Steps::new("fuzz", total);
    // The daemon's crate links libpcap.
    steps.run("Debian packages", deps::ensure_packages)?;
    let mut figures = Vec::new();
    if stable {
        let mut command = cmd::cargo();
        command.args(["run", "--release", "--package", "capstats-fuzz", "--"]);
        command.args(["--seconds", &seconds.to_string()]);
        if let Some(seed) = &seed {
            command.args(["--seed", seed]);
        }
        let summary = steps.run("the seeded generator (stable Rust)", || {
            run_capturing(&mut command, |line| line.contains(" requests fuzzed in "))
        })?;
        figures.push(format!("generator: {}", summary.unwrap_or_default()));
    }
    if libfuzzer {
        steps.run("cargo-fuzz", ensure_cargo_fuzz)?;
        let corpus = cmd::workspace_root().join("fuzz/corpus");
        steps.run("seed inputs from the generator", || {
            let mut command = cmd::cargo();
            command.args(["run", "--release", "--package", "capstats-fuzz", "--"]);
            command.arg("--write-corpus").arg(&corpus);
            if let Some(seed) = &seed {
                command.args(["--seed", seed]);
            }
            cmd::run(&mut command)
        })?;
        for target in TARGETS {
            let runs = steps.run(&format!("libFuzzer: {target}"), || {
                run_target(target, seconds, &corpus.join(target))
            })?;
            figures.push(format!("libFuzzer {target}: {runs}"));
        }
    }
    steps.summary();
    println!("\nno failure:");
    for figure in figures {
        println!("    {figure}");
    }
    Ok(())
}

/// `--case SEED`: the generator's case of that seed, shown and run again.
pub fn replay(case: &str) -> anyhow::Result<()> {
    let mut command = cmd::cargo();
    command.args([
        "run",
        "--release",
        "--package",
        "capstats-fuzz",
        "--",
        "--case",
        case,
    ]);
    cmd::run(&mut command)
}

/// Installs cargo-fuzz unless `cargo fuzz` works already.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if deps::cargo_tool("fuzz") {
        println!(
            "    {}",
            cmd::output(cmd::cargo().args(["fuzz", "--version"]))?.trim()
        );
        return Ok(());
    }
    println!("    `cargo fuzz` is missing: installing {CARGO_FUZZ} from crates.io");
    cmd::run(cmd::cargo().args(["install", "--locked", CARGO_FUZZ]))
}

/// `cargo fuzz run -s none TARGET CORPUS -- -max_total_time=SECONDS`; returns
/// libFuzzer's count of runs.
fn run_target(target: &str, seconds: u64, corpus: &Path) -> anyhow::Result<String> {
    let fuzz_dir = cmd::workspace_root().join("fuzz");
    let mut command = cmd::cargo();
    command
        .current_dir(&fuzz_dir)
        // Without -O: optimised, with debug assertions and overflow checks on.
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-print_final_stats=1");
    let result = run_capturing(&mut command, |line| line.starts_with("Done "));
    match result {
        Ok(done) => Ok(done.unwrap_or_else(|| "(libFuzzer printed no count)".into())),
        Err(e) => bail!(
            "{e:#}\nlibFuzzer found a failing input: it is in {}/artifacts/{target}/ \
             (replay it with `cd fuzz && cargo fuzz run -s none {target} FILE`)",
            fuzz_dir.display()
        ),
    }
}

/// Runs `command` with its output on the terminal, and returns the last line (of
/// stdout or stderr) that `wanted` picks.
fn run_capturing(
    command: &mut Command,
    wanted: impl Fn(&str) -> bool + Send + Copy + 'static,
) -> anyhow::Result<Option<String>> {
    let shown = cmd::display(command);
    println!("    $ {shown}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let echo = |pipe: Box<dyn std::io::Read + Send>, err: bool| {
        std::thread::spawn(move || {
            let mut found = None;
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if err {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                if wanted(&line) {
                    found = Some(line.trim().to_owned());
                }
            }
            found
        })
    };
    let out = echo(Box::new(child.stdout.take().context("no stdout")?), false);
    let err = echo(Box::new(child.stderr.take().context("no stderr")?), true);
    let status = child.wait()?;
    let found = [out, err]
        .into_iter()
        .filter_map(|reader| reader.join().ok().flatten())
        .last();
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(found)
}
