//! `cargo xtask bench`: builds `capstats` and `xtask-bench` (src/bin/xtask-bench), both
//! optimised, and starts the latter, which measures the generated programs, the daemon,
//! each hook with 1, 8, 64 and 256 sessions, and capstats against its peers (tcpdump, Zeek's
//! capstats, iptables -m bpf) on an XDP-generated stream, and writes bench/results.json.

use crate::cmd::{self, Steps};
use crate::deps;

/// Where the results go, relative to the workspace root; bench/README.md describes them.
const RESULTS: &str = "bench/results.json";

pub fn bench(
    repeat: u32,
    rounds: usize,
    peers_frames: u64,
    peers_rounds: usize,
) -> anyhow::Result<()> {
    let mut steps = Steps::new("bench", 4);
    steps.run("check that we run as root", || deps::require_root("bench"))?;
    steps.run(
        "Debian packages (and the peers: Zeek's capstats, iptables)",
        deps::ensure_bench_packages,
    )?;
    // Release: as operators run it (the daemon's figures are for that build).
    let capstats = steps.run("build capstats (release)", || {
        cmd::build_capstats(cmd::Profile::Release)
    })?;
    let out = cmd::workspace_root().join(RESULTS);
    steps.run(
        "measure programs and hooks with BPF_PROG_RUN, the daemon (release build), the peers",
        || {
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
                    .arg("--peers-frames")
                    .arg(peers_frames.to_string())
                    .arg("--peers-rounds")
                    .arg(peers_rounds.to_string())
                    .arg("--capstats")
                    .arg(&capstats)
                    .arg("--out")
                    .arg(&out),
            )
        },
    )?;
    steps.summary();
    Ok(())
}
