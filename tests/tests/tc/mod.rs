//! What the tc-hook test files (`daemon_tc*.rs`) share: counts, where a session
//! counts ([`At`]), creating and polling sessions, the kernel's view of B's tcx hooks
//! and the links' pins, and paced streams. Each file uses a part of it.
//!
//! Each test has its own rig (namespaces A and B joined by a quiet veth pair, see
//! `capstats_tests::daemon::rig`), runs `capstats -d` in B and counts on B's end.
//! Frames written on A's end ([`Rig::sender_a`], or tcpreplay in A) arrive at B
//! (received: TC ingress); frames written on B's end with an AF_PACKET socket
//! ([`Rig::sender_b`], or tcpreplay in B) leave from it (sent: TC egress). Nothing else
//! is on the link, so the oracles are exact: the frames the test wrote, the socket
//! hook's count, and sums of both.
#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeMap;
pub use std::net::{Ipv4Addr, Ipv6Addr};
pub use std::path::{Path, PathBuf};
pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub use std::time::{Duration, Instant};

pub use anyhow::{Context, bail, ensure};
pub use capstats_common::protocol::Session;
pub use capstats_ebpf::counters::CounterMap;
pub use capstats_tests::corpus;
pub use capstats_tests::daemon::rig::{self, IP_A, IP_B, MAC_A, MAC_B, Rig, Sender, Setup};
pub use capstats_tests::daemon::{Client, Count, Daemon, DaemonSpec, add, counts, times};
pub use capstats_tests::frame::{self, Ethernet, Ipv4, Ipv6, MacAddr, Tcp, VlanTag, ethertype};
pub use capstats_tests::scratch::ScratchDir;
pub use capstats_tests::tcx;
pub use capstats_tests::{joined, require_root};

/// How long frames may take to be counted after they were written.
pub const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
pub const QUIET: Duration = Duration::from_millis(100);

/// A count as the tests print it: `packets/bytes`.
pub fn shown(count: Count) -> String {
    format!("{}/{}", count.0, count.1)
}

/// What port `i` of `ports` gets of `total` frames written round robin over them
/// (frame k to port k mod `ports`).
pub fn round_robin_share(i: u16, total: u64, ports: u16) -> u64 {
    let ports = u64::from(ports);
    total / ports + u64::from(u64::from(i) < total % ports)
}

/// Where a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    TcIn,
    TcOut,
    TcBoth,
    Socket,
}

impl At {
    pub const ALL: [At; 4] = [At::TcIn, At::TcOut, At::TcBoth, At::Socket];

    pub fn words(self) -> &'static [&'static str] {
        match self {
            At::TcIn => &["hook", "tc", "direction", "in"],
            At::TcOut => &["hook", "tc", "direction", "out"],
            At::TcBoth => &["hook", "tc", "direction", "both"],
            At::Socket => &["hook", "socket"],
        }
    }

    /// What `list --json` says: hook and direction.
    pub fn reported(self) -> (&'static str, &'static str) {
        match self {
            At::TcIn => ("tc", "in"),
            At::TcOut => ("tc", "out"),
            At::TcBoth => ("tc", "both"),
            At::Socket => ("socket", "both"),
        }
    }

    /// Ends a session's name.
    pub fn suffix(self) -> &'static str {
        match self {
            At::TcIn => "in",
            At::TcOut => "out",
            At::TcBoth => "both",
            At::Socket => "sock",
        }
    }

    /// The name of the session of `short` here: `short-SUFFIX`.
    pub fn name(self, short: &str) -> String {
        format!("{short}-{}", self.suffix())
    }
}

/// `new NAME interface IF hook ... filter EXPR`, checking what the daemon answers.
pub fn new_session(
    client: &Client,
    name: &str,
    interface: &str,
    at: At,
    filter: &str,
) -> anyhow::Result<Session> {
    let mut args = vec!["new", name, "interface", interface];
    args.extend(at.words());
    args.extend(["filter", filter]);
    let session = client.session(&args)?;
    let (hook, direction) = at.reported();
    ensure!(
        session.hook.as_str() == hook
            && session.direction.as_str() == direction
            && session.filter == filter
            && session.up,
        "`{}` answered {session:?}",
        args.join(" ")
    );
    Ok(session)
}

/// A session of `expression` at each of `hooks`, named by [`At::name`] of `short`.
pub fn new_sessions_at(
    client: &Client,
    short: &str,
    interface: &str,
    hooks: &[At],
    expression: &str,
) -> anyhow::Result<()> {
    for &at in hooks {
        new_session(client, &at.name(short), interface, at, expression)?;
    }
    Ok(())
}

/// `poll --json`, by name.
pub fn poll(client: &Client) -> anyhow::Result<BTreeMap<String, Session>> {
    Ok(client
        .poll()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect())
}

pub fn count_of(polled: &BTreeMap<String, Session>, name: &str) -> anyhow::Result<Count> {
    polled
        .get(name)
        .map(counts)
        .with_context(|| format!("session {name} is missing from poll"))
}

/// Waits until `sent` reaches `at_least` (the stream's progress), or fails after
/// `timeout` or when the stream has ended short of it.
pub fn wait_for(sent: &AtomicU64, at_least: u64, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = sent.load(Ordering::SeqCst);
        if now >= at_least {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "the stream wrote {now} frames within {timeout:?}, expected {at_least}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a session's pinned counter map holds now, read straight from bpffs (for when
/// no daemon runs). Slot 0; the map is closed again before returning.
pub fn pinned_count(pin_dir: &Path, session: &str) -> anyhow::Result<Count> {
    let path = pin_dir.join(session).join("counters");
    let map = CounterMap::open_pinned(&path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
    let counter = map.read(0)?;
    Ok((counter.packets, counter.bytes))
}

/// Where the daemon pins the tc links and chains of `interface`: `PIN_DIR/%tc/IF`.
pub fn tc_links(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join("%tc").join(interface)
}

/// The entries of a directory, sorted (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// The programs on B's end's tcx ingress and egress, asked of the kernel.
pub fn tcx_on_b(rig: &Rig) -> anyhow::Result<(tcx::Attached, tcx::Attached)> {
    let ifindex = rig.veth.b.ifindex;
    rig.ns_b.run(|| {
        Ok((
            tcx::attached(ifindex, true)?,
            tcx::attached(ifindex, false)?,
        ))
    })
}

/// How many programs run on B's end's tcx ingress and egress.
pub fn tcx_counts(rig: &Rig) -> anyhow::Result<(usize, usize)> {
    let (ingress, egress) = tcx_on_b(rig)?;
    Ok((ingress.programs.len(), egress.programs.len()))
}

pub fn setup(tag: &str) -> anyhow::Result<Setup> {
    Setup::start(tag)
}

/// Sets its flag when dropped.
pub struct SetOnDrop<'a>(pub &'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writes `frame(k)` for k = 0, 1, ... at `per_second` until at least `min` frames are
/// written and `done` is set; `progress` counts them.
pub fn stream_until<'f>(
    sender: &Sender,
    frame: impl Fn(u64) -> &'f [u8],
    per_second: u32,
    min: u64,
    progress: &AtomicU64,
    done: &AtomicBool,
) -> anyhow::Result<Duration> {
    let frames = (0u64..)
        .map(frame)
        .take_while(|_| progress.load(Ordering::SeqCst) < min || !done.load(Ordering::SeqCst));
    sender.send_paced_counting(frames, per_second, progress)
}

/// Writes `n` copies of each frame, interleaved: round r writes every frame that has
/// more than r copies to write.
pub fn send_interleaved(sender: &Sender, frames: &[(Vec<u8>, u64)]) -> anyhow::Result<u64> {
    let rounds = frames.iter().map(|f| f.1).max().unwrap_or(0);
    let mut sent = 0;
    for round in 0..rounds {
        for (frame, n) in frames {
            if round < *n {
                sender.send(frame)?;
                sent += 1;
            }
        }
    }
    Ok(sent)
}
