//! Changes at scale (`--daemon-changes-only`): how long a client waits for `new`,
//! `modify` and `stop` when an interface already has N sessions at a hook (issue 11:
//! at 256 and 4,096, no slower than ≈25 ms).
//!
//! For each hook (socket, tc, xdp) and each N, a daemon of its own in the receiving
//! namespace of a fresh veth pair, with N sessions `udp and dst port P` (P = 10,000 +
//! i) on the receiving veth. They are made the way a restart makes them, not with N
//! `new`s (4,096 `new`s took minutes per hook): the bench writes a session table (in
//! the oldest format a daemon reads, so that format is exercised too) into the
//! daemon's state directory before starting it, and waits until every session counts
//! (the fill time is reported). Then `--changes` rounds, after two untimed ones, of:
//! `new` of one more session (`udp and dst port` 20,000 + k), `modify` of it (to
//! 30,000 + k), `stop` of it, each timed from the request written to the answer read on
//! one connection. Every answer must be OK and the session up; at the end the daemon
//! must still list exactly the N sessions, all up.
//!
//! The figures are the client's: they include compiling the filter (the daemon's
//! helper process), generating and swapping the interface's program, and saving the
//! session table durably before the answer. `XTASK_CHANGES_LOGS=DIR` keeps each
//! daemon's log there (`changes-HOOK-N.log`), for profiling.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::{Command, HookName, Reply};
use serde_json::json;

use super::Scratch;
use super::client::Connection;
use super::netns::{Pair, RECV_IF};
use super::process::{Daemon, Watchdog};
use crate::frame;
use crate::stats::{median, percentile};

/// Where the daemon serves `/metrics` (its namespace's loopback); unused here.
const METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9481);
/// The hooks measured.
const HOOKS: [HookName; 3] = [HookName::Socket, HookName::Tc, HookName::Xdp];
/// Untimed rounds before the timed ones.
const WARM_UP: usize = 2;
/// How long the sessions of a table may take to come up (4,096 filters compiled two at
/// a time by the daemon's helper).
const FILL_LIMIT: Duration = Duration::from_secs(900);

/// What to measure with.
#[derive(Debug, Clone)]
pub struct Options {
    pub capstats: PathBuf,
    /// Sessions already on the interface.
    pub sizes: Vec<usize>,
    /// Timed rounds of new, modify, stop.
    pub changes: usize,
}

/// The figures of one hook and size.
#[derive(Debug)]
pub struct Row {
    pub hook: HookName,
    pub sessions: usize,
    /// From the daemon's start until every session counted.
    pub fill: Duration,
    /// Round trips, ns.
    pub new: Vec<u64>,
    pub modify: Vec<u64>,
    pub stop: Vec<u64>,
}

/// Session `i` of the table.
fn fill_name(i: usize) -> String {
    format!("fill-{i:04}")
}

fn fill_filter(i: usize) -> String {
    format!("udp and dst port {}", 10_000 + i)
}

/// The session table of `n` sessions at `hook` on [`RECV_IF`], in the first format
/// (no base counts, no `packets_counted`).
fn table(hook: HookName, n: usize) -> serde_json::Value {
    // Any time will do: only shown.
    let now = "2026-01-01T00:00:00Z";
    let sessions: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "name": fill_name(i),
                "interface": RECV_IF,
                "filter": fill_filter(i),
                "hook": hook.as_str(),
                "direction": if hook == HookName::Xdp { "in" } else { "both" },
                "created": now,
                "modified": now,
                "packets": 0,
                "bytes": 0,
            })
        })
        .collect();
    json!({ "version": 1, "sessions": sessions })
}

/// Writes the table where the daemon started in `dir` reads it: `dir/state`, 0700,
/// the file 0600 (the daemon trusts nothing else).
fn write_table(dir: &Path, hook: HookName, n: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let state = dir.join("state");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .with_context(|| format!("creating {}", state.display()))?;
    let path = state.join("sessions.json");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer(&mut file, &table(hook, n))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Polls until the `n` sessions all count (none compiling, all up); how many do not yet.
fn wait_until_up(connection: &mut Connection, n: usize, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let Reply::Sessions(sessions) = connection.call(Command::Poll { names: Vec::new() })?
        else {
            bail!("poll did not answer with sessions");
        };
        let up = sessions.iter().filter(|s| s.up && !s.compiling).count();
        ensure!(
            sessions.len() == n,
            "the daemon lists {} sessions, not {n}",
            sessions.len()
        );
        if up == n {
            return Ok(());
        }
        if let Some(down) = sessions
            .iter()
            .find(|s| !s.compiling && !s.up && s.reason.is_some())
        {
            bail!(
                "session {} is down: {}",
                down.name,
                down.reason.as_deref().unwrap_or("")
            );
        }
        ensure!(
            started.elapsed() < limit,
            "only {up} of {n} sessions count after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `command`, which must answer with an up session; its round trip in ns.
fn timed(connection: &mut Connection, command: Command) -> anyhow::Result<u64> {
    let what = format!("{command:?}");
    let started = Instant::now();
    let reply = connection.call(command).with_context(|| what.clone())?;
    let ns = started.elapsed().as_nanos() as u64;
    match reply {
        Reply::Session(s) if s.up => {}
        Reply::Stopped(_) => {}
        other => bail!("{what} answered {other:?}"),
    }
    Ok(ns)
}

/// One hook and size, on a daemon of its own; everything it made is gone when it
/// returns.
fn measure_one(capstats: &Path, hook: HookName, n: usize, changes: usize) -> anyhow::Result<Row> {
    let scratch = Scratch::create()?;
    write_table(&scratch.0, hook, n)?;
    let pair = Pair::create(frame::SRC_MAC, frame::DST_MAC)?;
    let started = Instant::now();
    let daemon = Daemon::start_restoring(capstats, &pair.receiver, &scratch.0, METRICS)?;
    let watchdog = Watchdog::arm(
        &daemon,
        FILL_LIMIT + Duration::from_secs(60) + Duration::from_secs(10) * changes as u32,
    );
    let mut row = Row {
        hook,
        sessions: n,
        fill: Duration::ZERO,
        new: Vec::new(),
        modify: Vec::new(),
        stop: Vec::new(),
    };
    let result = (|| -> anyhow::Result<()> {
        let mut connection = Connection::open(daemon.socket())?;
        wait_until_up(&mut connection, n, FILL_LIMIT)?;
        row.fill = started.elapsed();
        for k in 0..WARM_UP + changes {
            let name = format!("change-{k:04}");
            let new = timed(
                &mut connection,
                Command::New {
                    name: name.clone(),
                    interface: Some(RECV_IF.to_owned()),
                    filter: format!("udp and dst port {}", 20_000 + k),
                    hook: Some(hook),
                    direction: None,
                    packets: None,
                },
            )?;
            let modify = timed(
                &mut connection,
                Command::Modify {
                    name: name.clone(),
                    filter: format!("udp and dst port {}", 30_000 + k),
                },
            )?;
            let stop = timed(&mut connection, Command::Stop { name })?;
            if k >= WARM_UP {
                row.new.push(new);
                row.modify.push(modify);
                row.stop.push(stop);
            }
        }
        wait_until_up(&mut connection, n, Duration::ZERO)
    })();
    result.with_context(|| {
        format!(
            "{n} sessions at the {} hook; capstats -d logged:\n{}",
            hook.as_str(),
            tail(&daemon.log(), 40)
        )
    })?;
    drop(watchdog);
    let log = daemon.log();
    daemon.stop()?;
    // For profiling: the daemon's log, kept where asked (the scratch directory goes).
    if let Some(dir) = std::env::var_os("XTASK_CHANGES_LOGS") {
        let path = Path::new(&dir).join(format!("changes-{}-{n}.log", hook.as_str()));
        std::fs::write(&path, log).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(row)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Measures every hook at every size.
pub fn measure(options: &Options) -> anyhow::Result<Vec<Row>> {
    ensure!(options.changes > 0, "--changes must be at least 1");
    let capstats = options
        .capstats
        .canonicalize()
        .with_context(|| format!("no capstats binary at {}", options.capstats.display()))?;
    let mut rows = Vec::new();
    for &n in &options.sizes {
        for hook in HOOKS {
            eprintln!(
                "daemon changes: {n} sessions at the {} hook (filling)",
                hook.as_str()
            );
            rows.push(measure_one(&capstats, hook, n, options.changes)?);
        }
    }
    Ok(rows)
}

fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// The table for people.
pub fn report(rows: &[Row], changes: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Changes through the daemon: round trip of new / modify / stop with N sessions \
         `udp and dst port P` on the interface and hook, median and p90 of {changes} each, ms"
    );
    let _ = writeln!(
        out,
        "{:<7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "hook", "N", "fill s", "new med", "new p90", "mod med", "mod p90", "stop med", "stop p90"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<7} {:>6} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            row.hook.as_str(),
            row.sessions,
            row.fill.as_secs_f64(),
            ms(median(&row.new)),
            ms(percentile(&row.new, 90.0)),
            ms(median(&row.modify)),
            ms(percentile(&row.modify, 90.0)),
            ms(median(&row.stop)),
            ms(percentile(&row.stop, 90.0)),
        );
    }
    out
}

pub fn to_json(rows: &[Row]) -> serde_json::Value {
    let stats = |v: &[u64]| json!({ "median_ns": median(v), "p90_ns": percentile(v, 90.0), "samples": v.len() });
    json!(
        rows.iter()
            .map(|r| json!({
                "hook": r.hook.as_str(),
                "sessions": r.sessions,
                "fill_s": r.fill.as_secs_f64(),
                "new": stats(&r.new),
                "modify": stats(&r.modify),
                "stop": stats(&r.stop),
            }))
            .collect::<Vec<_>>()
    )
}
