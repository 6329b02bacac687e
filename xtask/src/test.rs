//! `cargo xtask test`: prepare this machine and run every check CI runs.
//!
//! The order puts the cheap checks first (format, lints) so that a mistake costs seconds,
//! not a full test run. The tests get the corpus path in `CAPSTATS_CORPUS`.
//!
//! Everything is built with `--all-features`: the `kernel-tests` features of
//! capstats-ebpf and capstats-cli add the tests that load programs into the kernel (they
//! need root), which a plain `cargo test` leaves out so that it passes as any user.
//! `--workspace` adds the end-to-end tests (`tests/`), which need root too.

use std::path::Path;

use crate::cmd::{self, Steps};
use crate::deps;

/// Which cargo profile builds and runs the tests.
///
/// Dev by default, measured on the 2-core development machine: a cold release build of
/// the tests takes 33 s more, and buys 7 s on the heaviest test (the corpus
/// differential: 24 s dev, 17 s release), whose time is spent in the kernel and in
/// libpcap. The end-to-end tests also run the `capstats` binary the build step made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Unoptimised: reuses the build of step "cargo build", nothing compiled twice.
    Dev,
    /// Optimised: a second full compile, paid back only if tests spend their time in
    /// our own code rather than in the kernel.
    Release,
}

pub fn test(profile: Profile) -> anyhow::Result<()> {
    let mut steps = Steps::new("test", deps::PREPARE_STEPS + 5);
    let corpus = deps::prepare(&mut steps, "test")?;
    steps.run("bpffs at /sys/fs/bpf", deps::ensure_bpffs)?;

    let fmt = "cargo fmt --all -- --check";
    if deps::cargo_tool("fmt") {
        steps.run(fmt, || {
            cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))
        })?;
    } else {
        steps.skip(
            fmt,
            "rustfmt is not installed (rustup component add rustfmt); CI must have it",
        );
    }

    let clippy = "cargo clippy --workspace --all-targets --all-features -- -D warnings";
    if deps::cargo_tool("clippy") {
        steps.run(clippy, || {
            cmd::run(cmd::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    } else {
        steps.skip(
            clippy,
            "clippy is not installed (rustup component add clippy); CI must have it",
        );
    }

    steps.run(
        "cargo build --workspace --all-targets --all-features",
        || cmd::run(cmd::cargo().args(["build", "--workspace", "--all-targets", "--all-features"])),
    )?;

    let mut cargo_test = cmd::cargo();
    cargo_test.args(["test", "--workspace", "--all-features"]);
    if profile == Profile::Release {
        cargo_test.arg("--release");
    }
    steps.run(&cmd::display(&cargo_test), || {
        run_tests(&mut cargo_test, &corpus)
    })?;

    steps.summary();
    Ok(())
}

fn run_tests(cargo_test: &mut std::process::Command, corpus: &Path) -> anyhow::Result<()> {
    println!("    CAPSTATS_CORPUS={}", corpus.display());
    cmd::run(cargo_test.env("CAPSTATS_CORPUS", corpus))
}
