//! The daemon's figures: what `capstats -d` costs the machine besides the kernel
//! programs of the first table.
//!
//! - poll latency: how long reading every session's counters takes a client, with 1
//!   and with 64 sessions, on one connection, a connection per request, and the
//!   `capstats --json poll` command ([`latency`]);
//! - CPU while counting: the daemon's CPU time while a million frames are counted. It
//!   should be nothing: the kernel counts, and user space only reads counters when
//!   asked. The sessions' counts must equal the frames the interface received;
//! - memory: the daemon's resident set idle, with 64 sessions, and after the frames;
//! - scrape latency: how long `GET /metrics` (`--metrics`) takes a Prometheus-like
//!   scraper with 1 and with 256 sessions, on a keep-alive connection and on a
//!   connection per scrape ([`scrape`]).
//!
//! Everything happens in two network namespaces joined by a veth pair ([`netns`]):
//! the daemon runs in the receiving one and counts on its end of the pair, and the
//! frames are written on the other end, so none can reach the host's interfaces.
//!
//! The order, on one daemon: start it (RSS idle); session `udp` on the pair (polls with
//! 1 session); session `tcp` on the pair and 62 idle sessions on the receiving
//! namespace's loopback, where nothing is sent (polls with 64 sessions, RSS); the
//! frames, UDP all of them, so `udp` counts every one and `tcp` none, and each frame
//! meets two filters, not 64 (CPU, counts, RSS after); 192 more idle sessions on the
//! loopback (scrapes with 256 sessions; the scrapes with 1 session are made with the
//! polls with 1); stop the daemon (it must exit 0).

// client, netns, process and traffic are shared with the peer comparison (crate::peers).
pub mod changes;
pub mod client;
pub mod connections;
mod latency;
pub mod netns;
pub mod process;
pub mod report;
mod scrape;
pub mod traffic;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_common::protocol::{Command, Reply};

use crate::frame;
use client::Connection;
use latency::Latency;
use netns::{Pair, RECV_IF, SEND_IF};
use process::{CpuUsage, Daemon, Watchdog};
use scrape::Scrapes;
use traffic::{MachineCpu, PacketSender, Sent};

pub use report::{report, to_json};

/// Sessions of the larger daemon: the two on the pair and 62 idle ones.
const SESSIONS: usize = 64;
/// Sessions of the largest daemon, for the scrapes: [`SESSIONS`] and more idle ones.
const SCRAPE_SESSIONS: usize = 256;
/// Where the daemon serves `/metrics`: the receiving namespace's loopback, which is
/// the namespace's own (no port of the host's is taken).
const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9477);
/// The sessions counting on the pair, name and filter: every frame sent is UDP.
const COUNTING: [(&str, &str); 2] = [("udp", "udp"), ("tcp", "tcp")];
/// The interface of the idle sessions, in the receiving namespace: nothing is sent
/// there.
const IDLE_IF: &str = "lo";
/// The idle sessions' filter.
const IDLE_FILTER: &str = "tcp port 80";
/// The whole daemon bench normally takes under a minute (half of it the keep-alive
/// scrapes, each held up about 40 ms by a delayed ACK); past this the daemon is killed.
const DEADLINE: Duration = Duration::from_secs(120);

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `capstats` binary (a release build).
    pub capstats: PathBuf,
    /// Frames to send while the daemon's CPU time is measured.
    pub frames: u64,
    /// Timed polls per connection method and session count.
    pub polls: usize,
    /// Timed runs of `capstats --json poll` per session count.
    pub cli_polls: usize,
    /// Timed scrapes of `/metrics` per connection method and session count.
    pub scrapes: usize,
}

/// The daemon's figures.
#[derive(Debug)]
pub struct Figures {
    capstats: PathBuf,
    latencies: Vec<Latency>,
    /// Scrapes of `/metrics` with 1 and with [`SCRAPE_SESSIONS`] sessions.
    scrapes: Vec<Scrapes>,
    counting: Counting,
    rss: Rss,
}

/// What happened while the frames were counted.
#[derive(Debug)]
struct Counting {
    frame_bytes: usize,
    sent: Sent,
    /// Packets and bytes each of [`COUNTING`] counted meanwhile.
    counted: Vec<(u64, u64)>,
    /// The receiving interface's own counters meanwhile: frames received and dropped.
    received: u64,
    dropped: u64,
    daemon_before: CpuUsage,
    daemon_after: CpuUsage,
    machine: MachineCpu,
}

/// VmRSS of the daemon, KiB.
#[derive(Debug)]
struct Rss {
    idle: u64,
    sessions: u64,
    after_frames: u64,
}

/// Scratch directory for the daemon's socket, state and log; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    const PREFIX: &str = "capstats-bench-";

    pub fn create() -> anyhow::Result<Self> {
        Self::sweep_stale();
        let path = std::env::temp_dir().join(format!("{}{}", Self::PREFIX, std::process::id()));
        // Left by an earlier process with our pid that was killed: nothing of ours.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// Removes the directories of earlier bench processes that no longer exist (killed
    /// before their guards ran).
    fn sweep_stale() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(Ok(pid)) = name.strip_prefix(Self::PREFIX).map(str::parse::<u32>) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Runs the daemon bench; everything it made is gone when it returns, also on error.
pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    let capstats = options
        .capstats
        .canonicalize()
        .with_context(|| format!("no capstats binary at {}", options.capstats.display()))?;
    // Dropped in reverse order: the daemon first, then the namespaces, then the files.
    let scratch = Scratch::create()?;
    let pair = Pair::create(frame::SRC_MAC, frame::DST_MAC)?;
    let daemon = Daemon::start(&capstats, &pair.receiver, &scratch.0, METRICS)?;
    let watchdog = Watchdog::arm(&daemon, DEADLINE);
    let figures = with_daemon(options, &capstats, &pair, &daemon).with_context(|| {
        format!(
            "the daemon bench failed; capstats -d logged:\n{}",
            daemon.log()
        )
    })?;
    drop(watchdog);
    daemon.stop()?;
    Ok(figures)
}

fn with_daemon(
    options: &Options,
    capstats: &Path,
    pair: &Pair,
    daemon: &Daemon,
) -> anyhow::Result<Figures> {
    let pid = daemon.pid();
    let socket = daemon.socket();
    let idle = process::rss_kib(pid)?;

    eprintln!("daemon: polls with 1 session");
    let mut connection = Connection::open(socket)?;
    let new = |name: &str, interface: &str, filter: &str| Command::New {
        name: name.to_owned(),
        interface: Some(interface.to_owned()),
        filter: filter.to_owned(),
        hook: None,
        direction: None,
        packets: None,
    };
    let (first, first_filter) = COUNTING[0];
    connection.call(new(first, RECV_IF, first_filter))?;
    let mut latencies = latency::measure(capstats, socket, 1, options.polls, options.cli_polls)?;
    eprintln!("daemon: scrapes with 1 session");
    let mut scrapes = vec![scrape::measure(
        &pair.receiver,
        METRICS,
        1,
        options.scrapes,
    )?];

    eprintln!("daemon: polls with {SESSIONS} sessions");
    for &(name, filter) in &COUNTING[1..] {
        connection.call(new(name, RECV_IF, filter))?;
    }
    for i in COUNTING.len() + 1..=SESSIONS {
        connection.call(new(&format!("idle-{i:02}"), IDLE_IF, IDLE_FILTER))?;
    }
    latencies.extend(latency::measure(
        capstats,
        socket,
        SESSIONS,
        options.polls,
        options.cli_polls,
    )?);
    let sessions = process::rss_kib(pid)?;

    eprintln!("daemon: {} frames", options.frames);
    let counting = count_frames(options.frames, pair, pid, &mut connection)?;
    let after_frames = process::rss_kib(pid)?;

    eprintln!("daemon: scrapes with {SCRAPE_SESSIONS} sessions");
    for i in SESSIONS + 1..=SCRAPE_SESSIONS {
        connection.call(new(&format!("idle-{i:02}"), IDLE_IF, IDLE_FILTER))?;
    }
    scrapes.push(scrape::measure(
        &pair.receiver,
        METRICS,
        SCRAPE_SESSIONS,
        options.scrapes,
    )?);
    Ok(Figures {
        capstats: capstats.to_owned(),
        latencies,
        scrapes,
        counting,
        rss: Rss {
            idle,
            sessions,
            after_frames,
        },
    })
}

/// Sends the frames and reads, before and after, the [`COUNTING`] sessions' counters,
/// the receiving interface's counters, the daemon's CPU time and the machine's.
fn count_frames(
    frames: u64,
    pair: &Pair,
    pid: u32,
    connection: &mut Connection,
) -> anyhow::Result<Counting> {
    let frame = frame::udp_ipv4(
        "10.9.0.1:40000".parse()?,
        "10.9.0.2:9".parse()?,
        &[0x5a; 18],
    );
    let sender = pair.sender.run(|| PacketSender::open(SEND_IF))?;
    let counters_before = counters(connection)?;
    let link_before = link_counters(pair)?;
    // From here to `daemon_after` nobody talks to the daemon.
    let daemon_before = CpuUsage::of(pid)?;
    let machine_before = MachineCpu::now()?;
    let sent = sender.send(&frame, frames)?;
    let machine = MachineCpu::now()?.since(&machine_before);
    let daemon_after = CpuUsage::of(pid)?;
    let link_after = link_counters(pair)?;
    let counted = counters(connection)?
        .into_iter()
        .zip(counters_before)
        .map(|(after, before)| {
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            )
        })
        .collect();
    Ok(Counting {
        frame_bytes: frame.len(),
        sent,
        counted,
        received: link_after.0.saturating_sub(link_before.0),
        dropped: link_after.1.saturating_sub(link_before.1),
        daemon_before,
        daemon_after,
        machine,
    })
}

/// Packets and bytes of each of the [`COUNTING`] sessions, in that order.
fn counters(connection: &mut Connection) -> anyhow::Result<Vec<(u64, u64)>> {
    let names = COUNTING.iter().map(|(name, _)| name.to_string()).collect();
    let Reply::Sessions(sessions) = connection.call(Command::Poll { names })? else {
        anyhow::bail!("poll did not answer with sessions");
    };
    COUNTING
        .iter()
        .map(|(name, _)| {
            let session = sessions
                .iter()
                .find(|s| s.name == *name)
                .with_context(|| format!("poll did not report session {name}"))?;
            ensure!(session.up, "session {name} is not up");
            Ok((session.packets.unwrap_or(0), session.bytes.unwrap_or(0)))
        })
        .collect()
}

/// The receiving interface's frames received and dropped, as the kernel counts them.
fn link_counters(pair: &Pair) -> anyhow::Result<(u64, u64)> {
    let text = pair
        .receiver
        .ip(&["-s", "-j", "link", "show", "dev", RECV_IF])?;
    let value: serde_json::Value = serde_json::from_str(&text).context("ip -j output")?;
    let rx = &value[0]["stats64"]["rx"];
    let field = |name: &str| {
        rx[name]
            .as_u64()
            .with_context(|| format!("no rx {name} for {RECV_IF} in `ip -s -j link`: {text}"))
    };
    Ok((field("packets")?, field("dropped")?))
}

impl Counting {
    fn daemon_ticks(&self) -> u64 {
        self.daemon_after
            .ticks
            .saturating_sub(self.daemon_before.ticks)
    }

    fn daemon_on_cpu_ns(&self) -> u64 {
        self.daemon_after.on_cpu_ns_since(&self.daemon_before)
    }

    /// Whether the daemon counted what the interface received (and the interface
    /// everything sent), with the `tcp` session at zero.
    fn exact(&self) -> bool {
        let frames = self.sent.frames;
        self.received == frames
            && self.counted[0] == (frames, frames * self.frame_bytes as u64)
            && self.counted[1..].iter().all(|&c| c == (0, 0))
    }
}

/// Whether the sessions counted exactly the frames sent: `udp` every one, `tcp` none.
pub fn counted_exactly(figures: &Figures) -> bool {
    figures.counting.exact()
}
