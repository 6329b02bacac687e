//! The capture corpus (`../shared/corpus` beside the workspace, or `$CAPSTATS_CORPUS`)
//! and replaying its captures into a test's veth pair with tcpreplay.
//!
//! Read what the files hold with libpcap, replay them at a fixed rate with `tcpreplay`
//! inside a namespace, and parse what tcpreplay says it sent (the replay tests of every
//! hook use it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::daemon::output_within;
use crate::netns::NetNs;

/// The capture corpus: `$CAPSTATS_CORPUS`, or `shared/corpus` beside the workspace.
///
/// # Errors
/// When it is not there.
pub fn dir() -> anyhow::Result<PathBuf> {
    capstats_testkit::corpus::dir()
}

/// Records and their total captured length, as libpcap reads a file.
///
/// # Errors
/// When the file cannot be read.
pub fn records(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut capture = pcap::Capture::from_file(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (mut packets, mut bytes) = (0, 0);
    loop {
        match capture.next_packet() {
            Ok(packet) => {
                packets += 1;
                bytes += u64::from(packet.header.caplen);
            }
            Err(pcap::Error::NoMorePackets) => return Ok((packets, bytes)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// What tcpreplay said it did.
#[derive(Debug)]
pub struct Replayed {
    pub sent: u64,
    pub failed: u64,
    /// Its warnings and errors, to show.
    pub complaints: Vec<String>,
    pub took: Duration,
}

/// Replays `files` on `interface` in `ns` at `pps` frames a second.
///
/// # Errors
/// When tcpreplay cannot run, fails without saying how many frames failed, or does not
/// say what it sent.
pub fn replay(
    ns: &NetNs,
    interface: &str,
    files: &[PathBuf],
    pps: u32,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let mut command = ns.command("tcpreplay");
    command
        .args([
            "-i",
            interface,
            "--pps",
            &pps.to_string(),
            "--no-flow-stats",
        ])
        .args(files);
    let outcome = output_within(&mut command, Duration::from_secs(60))?;
    let number = |label: &str| -> anyhow::Result<u64> {
        outcome
            .stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label)?.trim().parse().ok())
            .with_context(|| format!("tcpreplay did not say {label:?}: {outcome}"))
    };
    let replayed = Replayed {
        sent: number("Successful packets:")?,
        failed: number("Failed packets:")?,
        complaints: outcome
            .stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
        took: started.elapsed(),
    };
    if outcome.code != Some(0) && replayed.failed == 0 {
        bail!("tcpreplay failed: {outcome}");
    }
    Ok(replayed)
}
