//! `cargo xtask run`: a newcomer sees the kernel count packets within a minute.
//!
//! Three parts, kept apart so the last can change alone: prepare the machine (shared
//! with `cargo xtask test`), build the `capstats` binary, show it working. Today the
//! daemon does not exist, so "working" is `capstats test` on corpus captures; when it
//! does, [`show`] starts `capstats -d` and a few sessions instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{self, Steps};
use crate::deps;

/// Captures from the corpus and the expressions counted on each: together they cover
/// TCP, DNS, 802.1Q, IPv6 and LLDP traffic.
const SHOWCASE: &[(&str, &[&str])] = &[
    (
        "pcap/tcpdump/mptcp-aa-v1.pcap",
        &["tcp", "tcp[tcpflags] & tcp-syn != 0", "udp port 53"],
    ),
    (
        "pcap/tcpdump/ldp-common-session.pcap",
        &["tcp", "udp", "vlan", "vlan and udp"],
    ),
    (
        "pcap/tcpdump/dcb_ets.pcap",
        &["ip6", "icmp6", "ether proto 0x88cc"],
    ),
];

/// The one shown with `--dump`: libpcap's classic program and the eBPF it becomes.
const DUMP: (&str, &str) = ("pcap/tcpdump/ldp-common-session.pcap", "vlan and udp");

pub fn run() -> anyhow::Result<()> {
    let mut steps = Steps::new("run", deps::PREPARE_STEPS + 2);
    let corpus = deps::prepare(&mut steps, "run")?;
    let capstats = steps.run("build capstats", build_capstats)?;
    steps.run(
        "count packets of corpus captures in the kernel (capstats test)",
        || show(&capstats, &corpus),
    )?;
    steps.summary();
    Ok(())
}

/// Builds the `capstats` binary (dev profile: the quickest to compile) and returns its
/// path as cargo reports it, wherever the target directory is.
fn build_capstats() -> anyhow::Result<PathBuf> {
    let stdout = cmd::output(cmd::cargo().args([
        "build",
        "--package",
        "capstats-cli",
        "--bin",
        "capstats",
        "--message-format",
        "json-render-diagnostics",
    ]))?;
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

/// What a newcomer sees. Later: start the daemon, create sessions on a veth pair,
/// send traffic, `capstats show`.
fn show(capstats: &Path, corpus: &Path) -> anyhow::Result<()> {
    // Ours by path: Zeek's unrelated `capstats` may be installed as /usr/bin/capstats.
    for &(capture, expressions) in SHOWCASE {
        let file = corpus.join(capture);
        println!("\n    {capture}");
        for &expression in expressions {
            let mut command = Command::new(capstats);
            command.arg("test").arg(&file).arg(expression);
            let out = command
                .output()
                .with_context(|| format!("cannot start {}", capstats.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                bail!(
                    "`{}` failed ({}): {}",
                    cmd::display(&command),
                    out.status,
                    stderr.trim()
                );
            }
            println!(
                "    {:<50} {}",
                format!("capstats test FILE '{expression}'"),
                stdout.trim()
            );
            for line in stderr.lines() {
                println!("    {:<50} {line}", "");
            }
        }
    }

    let (capture, expression) = DUMP;
    println!("\n    and what runs in the kernel for '{expression}':\n");
    cmd::run(
        Command::new(capstats)
            .arg("test")
            .arg("--dump")
            .arg(corpus.join(capture))
            .arg(expression),
    )
}
