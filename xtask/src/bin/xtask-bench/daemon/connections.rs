//! Many clients at once (`--connections-only`): what holding connections costs the
//! daemon, and whether a client that polls is served as fast beside them.
//!
//! On one daemon with one session (`udp` on the pair): poll latency on one connection
//! with nothing else connected; then [`Options::idle`] connections opened and left
//! silent, and [`Options::watch`] `watch` streams, each a connection asking `show udp`
//! once a [`Options::period`] as `capstats watch udp frequency 1` does (spread over
//! the period, every answer checked), and the poll latency measured again while they
//! run; at the end every idle connection must still answer a poll. The daemon's
//! threads, open descriptors and RSS (`/proc/PID/status`) are read alone, at the
//! peak, and after every connection has closed.
//!
//! The bench and the daemon hold a descriptor per connection each (two per watch
//! stream on the bench's side): the bench raises its own soft `RLIMIT_NOFILE` to the
//! hard one before it starts the daemon, which inherits it (20,000 here: the daemon
//! then serves 15,000 clients at once).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::{Command, Reply};

use super::client::{Connection, polled_sessions, request_line};
use super::netns::{Pair, RECV_IF};
use super::process::{Daemon, Watchdog};
use crate::frame;
use crate::stats::{median, percentile};

/// Threads that drive the watch streams, each its share of them in turn.
const WATCHERS: usize = 8;
/// Untimed polls before the timed ones.
const WARM_UP: usize = 50;
/// How long the whole run may take before the daemon is killed.
const DEADLINE: Duration = Duration::from_secs(600);

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    pub capstats: std::path::PathBuf,
    /// Connections opened and left silent.
    pub idle: usize,
    /// `watch` streams.
    pub watch: usize,
    /// How often each watch stream asks.
    pub period: Duration,
    /// Timed polls on one connection, alone and beside the others.
    pub polls: usize,
}

/// What `/proc/PID/status` and `/proc/PID/fd` say about the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub threads: u64,
    pub rss_kib: u64,
    pub fds: u64,
}

impl Usage {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            threads: field("Threads:")?,
            rss_kib: field("VmRSS:")?,
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64,
        })
    }

    fn max(self, other: Self) -> Self {
        Self {
            threads: self.threads.max(other.threads),
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }
}

/// Poll round trips, in ns.
#[derive(Debug, Clone)]
pub struct Polls(pub Vec<u64>);

impl Polls {
    pub fn median_ns(&self) -> u64 {
        median(&self.0)
    }

    pub fn p99_ns(&self) -> u64 {
        percentile(&self.0, 99.0)
    }
}

/// The figures of a run.
#[derive(Debug)]
pub struct Figures {
    pub options: Options,
    pub alone: Usage,
    pub peak: Usage,
    pub after: Usage,
    pub polls_alone: Polls,
    pub polls_beside: Polls,
    /// Answers the watch streams had, all checked.
    pub watched: u64,
    /// The slowest of them, in ns.
    pub slowest_watch_ns: u64,
    /// How long opening the idle connections took.
    pub opening: Duration,
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard one; returns it.
fn raise_open_files() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a pointer to a writable rlimit.
    ensure!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0,
        "getrlimit: {}",
        std::io::Error::last_os_error()
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a pointer to a valid rlimit, the hard limit unchanged.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "cannot raise RLIMIT_NOFILE to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

pub fn measure(options: &Options) -> anyhow::Result<Figures> {
    let capstats = options
        .capstats
        .canonicalize()
        .with_context(|| format!("no capstats binary at {}", options.capstats.display()))?;
    let open_files = raise_open_files()?;
    let needed = (options.idle + 2 * options.watch + 64) as u64;
    ensure!(
        open_files >= needed,
        "{} idle connections and {} watch streams need {needed} open files; the limit is \
         {open_files} (ulimit -Hn)",
        options.idle,
        options.watch
    );
    let scratch = super::Scratch::create()?;
    let pair = Pair::create(frame::SRC_MAC, frame::DST_MAC)?;
    let daemon = Daemon::start(&capstats, &pair.receiver, &scratch.0, super::METRICS)?;
    let watchdog = Watchdog::arm(&daemon, DEADLINE);
    let figures = with_daemon(options, &daemon).with_context(|| {
        format!(
            "the connections bench failed; capstats -d logged:\n{}",
            daemon.log()
        )
    })?;
    drop(watchdog);
    daemon.stop()?;
    Ok(figures)
}

/// `polls` timed polls of every session (one) on one connection.
fn polls(socket: &Path, polls: usize) -> anyhow::Result<Polls> {
    let request = request_line(Command::Poll { names: vec![] });
    let mut connection = Connection::open(socket)?;
    let mut answer = String::new();
    let mut samples = Vec::with_capacity(polls);
    for i in 0..WARM_UP + polls {
        let start = Instant::now();
        connection.round_trip(&request, &mut answer)?;
        let took = start.elapsed();
        polled_sessions(&answer, 1)?;
        if i >= WARM_UP {
            samples.push(took.as_nanos() as u64);
        }
    }
    Ok(Polls(samples))
}

/// Waits (up to 15 s) until the daemon's threads and descriptors are back to `base`'s
/// (the blocking threads end 2 s after their last work); returns the last reading.
fn settled(pid: u32, base: Usage) -> anyhow::Result<Usage> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = Usage::of(pid)?;
        if (now.threads <= base.threads && now.fds <= base.fds) || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_daemon(options: &Options, daemon: &Daemon) -> anyhow::Result<Figures> {
    let pid = daemon.pid();
    let socket = daemon.socket().to_owned();
    let mut connection = Connection::open(&socket)?;
    connection.call(Command::New {
        name: "udp".into(),
        interface: Some(RECV_IF.into()),
        filter: "udp".into(),
        hook: None,
        direction: None,
        packets: None,
    })?;
    drop(connection);
    eprintln!("connections: {} polls alone", options.polls);
    let polls_alone = polls(&socket, options.polls)?;
    // The blocking threads that did the work end 2 s after it.
    std::thread::sleep(Duration::from_secs(3));
    let alone = Usage::of(pid)?;

    eprintln!("connections: opening {} idle connections", options.idle);
    let started = Instant::now();
    // A bare stream each (one descriptor), read and written only at the end.
    let idle = (0..options.idle)
        .map(|i| {
            std::os::unix::net::UnixStream::connect(&socket)
                .with_context(|| format!("idle connection {i}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opening = started.elapsed();

    eprintln!(
        "connections: {} watch streams, every {:?}",
        options.watch, options.period
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let per_thread = options.watch.div_ceil(WATCHERS);
    let barrier = Arc::new(Barrier::new(WATCHERS + 1));
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|t| {
            let count = per_thread.min(options.watch.saturating_sub(t * per_thread));
            let (socket, stop, watched, slowest, barrier) = (
                socket.clone(),
                Arc::clone(&stop),
                Arc::clone(&watched),
                Arc::clone(&slowest),
                Arc::clone(&barrier),
            );
            let period = options.period;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let opened = (0..count)
                    .map(|_| Connection::open(&socket))
                    .collect::<anyhow::Result<Vec<_>>>();
                barrier.wait();
                let mut streams = opened?;
                let request = request_line(Command::Show { name: "udp".into() });
                let mut answer = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    for (i, stream) in streams.iter_mut().enumerate() {
                        // Spread over the period, as independent watchers are.
                        let due = round + period.mul_f64(i as f64 / count.max(1) as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let asked = Instant::now();
                        stream.round_trip(&request, &mut answer)?;
                        slowest.fetch_max(asked.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        match serde_json::from_str(&answer)? {
                            capstats_common::protocol::Response::Ok(Reply::Session(s))
                                if s.name == "udp" => {}
                            other => bail!("a watch stream was answered {other:?}"),
                        }
                        watched.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep((round + period).saturating_duration_since(Instant::now()));
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    // A period for every stream to have asked once, then the polls beside them.
    std::thread::sleep(options.period * 2);
    let mut peak = Usage::of(pid)?;
    eprintln!("connections: {} polls beside them", options.polls);
    let polls_beside = polls(&socket, options.polls)?;
    for _ in 0..10 {
        peak = peak.max(Usage::of(pid)?);
        std::thread::sleep(options.period / 5);
    }
    stop.store(true, Ordering::Relaxed);
    for watcher in watchers {
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("a watcher panicked"))??;
    }
    eprintln!("connections: every idle connection polls once");
    let request = request_line(Command::Poll { names: vec![] });
    for (i, stream) in idle.iter().enumerate() {
        use std::io::{BufRead, Write};
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&*stream)
            .write_all(&request)
            .with_context(|| format!("idle connection {i} at the end"))?;
        // The answer is one line; the daemon writes nothing else.
        let mut answer = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut answer)
            .with_context(|| format!("idle connection {i} at the end"))?;
        polled_sessions(&answer, 1).with_context(|| format!("idle connection {i} at the end"))?;
    }
    drop(idle);
    let after = settled(pid, alone)?;
    let watched = watched.load(Ordering::Relaxed);
    ensure!(
        options.watch == 0 || watched >= options.watch as u64,
        "only {watched} watch answers from {} streams",
        options.watch
    );
    Ok(Figures {
        options: options.clone(),
        alone,
        peak,
        after,
        polls_alone,
        polls_beside,
        watched,
        slowest_watch_ns: slowest.load(Ordering::Relaxed),
        opening,
    })
}

fn micros(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1000.0)
}

pub fn report(figures: &Figures) -> String {
    use super::report::thousands;
    let o = &figures.options;
    let mut out = format!(
        "{} idle connections and {} watch streams (show every {:?}), one session\n\
         daemon                          threads        RSS        fds\n",
        thousands(o.idle as u64),
        thousands(o.watch as u64),
        o.period
    );
    for (label, usage) in [
        ("alone", figures.alone),
        ("with them (peak)", figures.peak),
        ("after they closed", figures.after),
    ] {
        out += &format!(
            "{label:<30} {:>8} {:>10} {:>10}\n",
            usage.threads,
            format!("{} KiB", thousands(usage.rss_kib)),
            thousands(usage.fds)
        );
    }
    out += &format!(
        "\npoll (1 session), one connection   samples     median        p99\n\
         alone                              {:>7} {:>10} {:>10}\n\
         beside them                        {:>7} {:>10} {:>10}\n",
        figures.polls_alone.0.len(),
        micros(figures.polls_alone.median_ns()),
        micros(figures.polls_alone.p99_ns()),
        figures.polls_beside.0.len(),
        micros(figures.polls_beside.median_ns()),
        micros(figures.polls_beside.p99_ns()),
    );
    out += &format!(
        "\n{} idle connections opened in {:.2?}; {} watch answers, all checked, the slowest {}; \
         every idle connection answered a poll at the end\n",
        thousands(o.idle as u64),
        figures.opening,
        thousands(figures.watched),
        micros(figures.slowest_watch_ns)
    );
    out
}

pub fn to_json(figures: &Figures) -> serde_json::Value {
    let usage =
        |u: Usage| serde_json::json!({"threads": u.threads, "rss_kib": u.rss_kib, "fds": u.fds});
    let polls = |p: &Polls| {
        serde_json::json!({
            "samples": p.0.len(),
            "median_us": p.median_ns() as f64 / 1000.0,
            "p99_us": p.p99_ns() as f64 / 1000.0,
        })
    };
    serde_json::json!({
        "idle_connections": figures.options.idle,
        "watch_streams": figures.options.watch,
        "watch_period_s": figures.options.period.as_secs_f64(),
        "alone": usage(figures.alone),
        "peak": usage(figures.peak),
        "after": usage(figures.after),
        "polls_alone": polls(&figures.polls_alone),
        "polls_beside": polls(&figures.polls_beside),
        "watch_answers": figures.watched,
        "slowest_watch_us": figures.slowest_watch_ns as f64 / 1000.0,
    })
}
