//! `cargo xtask bench`: builds and starts `xtask-bench` (src/bin/xtask-bench), optimised,
//! which measures the generated programs and writes bench/results.json.

use crate::cmd::{self, Steps};
use crate::deps;

/// Where the results go, relative to the workspace root; bench/README.md describes them.
const RESULTS: &str = "bench/results.json";

pub fn bench(repeat: u32, rounds: usize) -> anyhow::Result<()> {
    let mut steps = Steps::new("bench", 3);
    steps.run("check that we run as root", || deps::require_root("bench"))?;
    steps.run("Debian packages", deps::ensure_packages)?;
    let out = cmd::workspace_root().join(RESULTS);
    steps.run("measure with BPF_PROG_RUN (release build)", || {
        cmd::run(
            cmd::cargo()
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "--package",
                    "xtask",
                    "--bin",
                    "xtask-bench",
                    "--",
                ])
                .arg("--repeat")
                .arg(repeat.to_string())
                .arg("--rounds")
                .arg(rounds.to_string())
                .arg("--out")
                .arg(&out),
        )
    })?;
    steps.summary();
    Ok(())
}
