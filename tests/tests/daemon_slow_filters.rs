//! Filters that take libpcap seconds to compile never hold up the daemon's clients:
//! a restart answers at once and brings its sessions up as their filters compile, an
//! interface coming back does not block `list`, a filter over the time limit at
//! restore leaves its session down, with the reason and its counters, and one in a
//! request is refused, its helper killed, and the next filter compiled by another.
//!
//! A slow filter is a long `host A or host B or ...` (libpcap takes about half a
//! second for 400 hosts here, several on a loaded machine); every one of them also matches the test's frames (from
//! [`rig::IP_A`]), so each session counts what it should once it is up. Frames written
//! on A's end arrive on B's end, where the sessions count; nothing else is on the
//! link.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Session;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Setup};
use capstats_tests::require_root;

const TEST: &str = "daemon_slow_filters";
/// How long frames may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
const QUIET: Duration = Duration::from_millis(100);
/// The longest a `list` or `poll` may take while filters compile: a client process
/// starting and one answer (old code: every filter compiled first, seconds each).
const ANSWER: Duration = Duration::from_millis(1500);
/// How long every session may take to come up after a restart or an interface's
/// return: each filter within the daemon's 5 s limit, two at a time.
const UP: Duration = Duration::from_secs(60);
/// Hosts in a slow filter (about 0.5 s each here; within the 5 s limit when the
/// test's compiles run side by side on a loaded machine).
const SLOW_HOSTS: usize = 400;
/// Hosts in a filter libpcap takes far longer than the daemon's 5 s to compile.
const OVER_LIMIT_HOSTS: usize = 4000;

/// Two sessions per hook, each with a slow filter.
const SESSIONS: [(&str, &[&str]); 6] = [
    ("sock-1", &["hook", "socket"]),
    ("sock-2", &["hook", "socket"]),
    ("tc-1", &["hook", "tc", "direction", "in"]),
    ("tc-2", &["hook", "tc", "direction", "both"]),
    ("xdp-1", &["hook", "xdp"]),
    ("xdp-2", &["hook", "xdp"]),
];

/// `udp and (host ... or host IP_A)`: `hosts` addresses that are not on the link, then
/// the one that is; `salt` makes filters of one test differ.
fn slow_filter(hosts: usize, salt: usize) -> String {
    let others: Vec<String> = (0..hosts)
        .map(|i| format!("host 10.{}.{}.{}", 100 + salt, (i / 250) % 250, 1 + i % 250))
        .collect();
    format!("udp and ({} or host {})", others.join(" or "), rig::IP_A)
}

/// Creates the sessions and counts `n` frames in each.
fn start_sessions(setup: &Setup, frame: &[u8], n: u64) -> anyhow::Result<()> {
    let interface = setup.rig.interface();
    for (salt, (name, hook)) in SESSIONS.iter().enumerate() {
        // Lengths differ: filters equal but for their constants would be planned as
        // one shared group, which is not what this test is about.
        let filter = slow_filter(SLOW_HOSTS + 7 * salt, salt);
        let mut args = vec!["new", name, "interface", interface];
        args.extend_from_slice(hook);
        args.extend(["filter", &filter]);
        setup.client.ok(&args)?;
    }
    send_and_settle(setup, frame, n, n)
}

/// Sends `n` frames A to B and waits until every session has counted `total`.
fn send_and_settle(setup: &Setup, frame: &[u8], n: u64, total: u64) -> anyhow::Result<()> {
    setup.send_and_settle(SESSIONS.iter().map(|(name, _)| *name), frame, n, total)
}

/// What [`until_up`] saw.
struct Watched {
    /// The slowest `list` or `poll`.
    slowest: Duration,
    /// Polls that showed a session compiling.
    compiling: usize,
    /// The sessions, all up.
    sessions: Vec<Session>,
}

/// Lists and polls, each timed, until every session is up; `check` sees every poll.
fn until_up(
    setup: &Setup,
    check: impl Fn(&[Session]) -> anyhow::Result<()>,
) -> anyhow::Result<Watched> {
    let deadline = Instant::now() + UP;
    let mut slowest = Duration::ZERO;
    let mut compiling = 0;
    loop {
        let asked = Instant::now();
        setup.client.ok(&["list"])?;
        slowest = slowest.max(asked.elapsed());
        let asked = Instant::now();
        let sessions = setup.client.poll()?;
        slowest = slowest.max(asked.elapsed());
        check(&sessions)?;
        if sessions.iter().any(|s| s.compiling) {
            compiling += 1;
        }
        if sessions.iter().all(|s| s.up) {
            return Ok(Watched {
                slowest,
                compiling,
                sessions,
            });
        }
        if Instant::now() > deadline {
            bail!("not every session up within {UP:?}: {sessions:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every session shown has counted `total` frames so far, up or not; at a restart, a
/// session that is not up is compiling or says why.
fn counters_kept(
    sessions: &[Session],
    total: u64,
    frame: &[u8],
    restart: bool,
) -> anyhow::Result<()> {
    ensure!(sessions.len() == SESSIONS.len(), "sessions: {sessions:?}");
    for s in sessions {
        ensure!(
            counts(s) == (total, total * frame.len() as u64),
            "{} shows {:?}, not the {total} frames it counted: {s:?}",
            s.name,
            counts(s)
        );
        ensure!(
            !restart || s.up || s.compiling || s.reason.is_some(),
            "{} is down without a reason: {s:?}",
            s.name
        );
    }
    Ok(())
}

#[test]
fn a_restart_answers_at_once_and_sessions_come_up_as_their_filters_compile() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("slowrestart")?;
    let frame = rig::udp_a_to_b(53, 60);
    start_sessions(&setup, &frame, 10)?;

    let (setup, answered) = setup.restart_answering("daemon-2.log", |_| Ok(()))?;
    ensure!(
        answered < ANSWER * 2,
        "the restarted daemon answered after {answered:?}; its log:\n{}",
        setup.daemon.log()
    );
    let watched = until_up(&setup, |sessions| counters_kept(sessions, 10, &frame, true))?;
    ensure!(
        watched.slowest < ANSWER,
        "a list or poll took {:?} while the filters compiled (bound {ANSWER:?})",
        watched.slowest
    );
    ensure!(
        watched.compiling > 0,
        "no poll saw a session compiling: the filters were compiled before the daemon \
         answered ({answered:?}); its log:\n{}",
        setup.daemon.log()
    );
    ensure!(
        watched
            .sessions
            .iter()
            .all(|s| !s.compiling && s.reason.is_none()),
        "up, yet compiling or with a reason: {:?}",
        watched.sessions
    );
    send_and_settle(&setup, &frame, 10, 20)?;
    eprintln!(
        "answered {answered:?} after the restart; slowest list/poll {:?}; {} polls saw \
         sessions compiling",
        watched.slowest, watched.compiling
    );
    Ok(())
}

#[test]
fn an_interface_coming_back_does_not_block_list() -> anyhow::Result<()> {
    require_root(TEST);
    let mut setup = Setup::start("slowflap")?;
    let frame = rig::udp_a_to_b(53, 60);
    start_sessions(&setup, &frame, 10)?;

    setup.rig.recreate_veth()?;
    let watched = until_up(&setup, |sessions| {
        counters_kept(sessions, 10, &frame, false)
    })?;
    ensure!(
        watched.slowest < ANSWER,
        "a list or poll took {:?} while the filters compiled for the new interface \
         (bound {ANSWER:?}); the daemon's log:\n{}",
        watched.slowest,
        setup.daemon.log()
    );
    ensure!(
        watched.compiling > 0,
        "no poll saw a session compiling; the daemon's log:\n{}",
        setup.daemon.log()
    );
    send_and_settle(&setup, &frame, 10, 20)?;
    eprintln!(
        "slowest list/poll {:?} while the interface's filters compiled; {} polls saw \
         sessions compiling",
        watched.slowest, watched.compiling
    );
    Ok(())
}

#[test]
fn a_filter_over_the_time_limit_at_restore_leaves_its_session_down_with_the_reason()
-> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("slowlimit")?;
    let frame = rig::udp_a_to_b(53, 60);
    let len = frame.len() as u64;
    let interface = setup.rig.interface().to_owned();
    for name in ["quick", "slow"] {
        setup.client.ok(&[
            "new",
            name,
            "interface",
            &interface,
            "hook",
            "tc",
            "direction",
            "in",
            "filter",
            "udp",
        ])?;
    }
    setup.rig.sender_a()?.send_n(&frame, 10)?;
    for name in ["quick", "slow"] {
        setup.client.settle(name, 10, ARRIVAL, QUIET)?;
    }

    // The table, as a daemon that has not run since left it, now says "slow" counts
    // a filter libpcap takes far longer than 5 s to compile.
    let (setup, answered) = setup.restart_answering("daemon-2.log", |spec| {
        let table_path = spec.state_dir.join("sessions.json");
        let mut table: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&table_path).context("reading the session table")?,
        )?;
        let sessions = table["sessions"]
            .as_array_mut()
            .context("the table has sessions")?;
        let slow = sessions
            .iter_mut()
            .find(|s| s["name"] == "slow")
            .context("session slow in the table")?;
        slow["filter"] = slow_filter(OVER_LIMIT_HOSTS, 0).into();
        std::fs::write(&table_path, serde_json::to_vec(&table)?)?;
        Ok(())
    })?;
    ensure!(
        answered < ANSWER * 2,
        "the restarted daemon answered after {answered:?}; its log:\n{}",
        setup.daemon.log()
    );
    // Down with the reason once the limit has passed; the other up; counters kept.
    let deadline = Instant::now() + UP;
    let (quick, slow) = loop {
        let asked = Instant::now();
        let quick = setup.client.show("quick")?;
        let slow = setup.client.show("slow")?;
        ensure!(
            asked.elapsed() < ANSWER,
            "show took {:?} while a filter compiled",
            asked.elapsed()
        );
        for s in [&quick, &slow] {
            ensure!(counts(s) == (10, 10 * len), "counters not kept: {s:?}");
        }
        if !slow.compiling && quick.up {
            break (quick, slow);
        }
        ensure!(
            Instant::now() < deadline,
            "not settled within {UP:?}: {quick:?} {slow:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(!slow.up, "slow counts: {slow:?}");
    let reason = slow.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("longer than 5 s"),
        "slow is down without the time limit as its reason: {slow:?}"
    );
    ensure!(quick.reason.is_none(), "quick has a reason: {quick:?}");
    let shown = setup.client.ok(&["show", "slow"])?;
    ensure!(
        shown.contains("longer than 5 s"),
        "`show slow` does not say why it is down:\n{shown}"
    );
    // Only quick counts now; slow keeps what it had.
    setup.rig.sender_a()?.send_n(&frame, 10)?;
    let quick = setup.client.settle("quick", 20, ARRIVAL, QUIET)?;
    ensure!(counts(&quick) == (20, 20 * len), "quick: {quick:?}");
    let slow = setup.client.show("slow")?;
    ensure!(counts(&slow) == (10, 10 * len), "slow: {slow:?}");
    Ok(())
}

/// A filter that fits in a request line (51 KB) and that libpcap takes far longer than
/// the daemon's 5 s to compile (more than 15 s here; 2,500 `or`ed hosts, as long, take
/// it about 5 s, too close to the limit): 2,500 `or`ed networks.
fn over_limit_in_a_line() -> String {
    let nets: Vec<String> = (0..2500)
        .map(|i| format!("net 10.{}.{}.0/24", i / 250, i % 250))
        .collect();
    format!("({})", nets.join(" or "))
}

/// The compile helpers of the daemon `daemon` (its children running
/// `__compile-filter`).
fn helpers_of(daemon: u32) -> anyhow::Result<Vec<u32>> {
    let mut helpers = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone since it was listed: not a helper now.
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, not a `)`.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        let helper = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"__compile-filter");
        if parent == Some(daemon) && helper {
            helpers.push(pid);
        }
    }
    Ok(helpers)
}

#[test]
fn a_new_filter_over_the_time_limit_is_refused_its_helper_killed_and_the_next_compiles()
-> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("slownew")?;
    let interface = setup.rig.interface().to_owned();
    let daemon = setup.daemon.pid().context("the daemon's pid")?;
    setup
        .client
        .ok(&["new", "quick", "interface", &interface, "filter", "udp"])?;
    let waiting = helpers_of(daemon)?;
    ensure!(
        waiting.len() == 1,
        "after one compile the daemon has helpers {waiting:?}, not one waiting for the next"
    );

    let filter = over_limit_in_a_line();
    let asked = Instant::now();
    let refused =
        setup
            .client
            .fails(&["new", "slow", "interface", &interface, "filter", &filter])?;
    let took = asked.elapsed();
    let expected = format!(
        "the filter expression of session \"slow\" ({} bytes) takes libpcap longer than 5 s \
         to compile",
        filter.len()
    );
    ensure!(
        refused.stderr.contains(&expected),
        "`new slow` was refused otherwise: {refused}"
    );
    ensure!(
        took < Duration::from_secs(5) + ANSWER,
        "the refusal took {took:?}"
    );
    // The helper that took the job was the one waiting: killed, and reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while helpers_of(daemon)?.contains(&waiting[0]) {
        ensure!(
            Instant::now() < deadline,
            "helper {} still runs after the time limit refused its job",
            waiting[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    setup.client.ok(&[
        "new",
        "next",
        "interface",
        &interface,
        "filter",
        "udp port 53",
    ])?;
    let now = helpers_of(daemon)?;
    ensure!(
        now.len() == 1 && now != waiting,
        "after the next compile the daemon has helpers {now:?} (the killed one was {})",
        waiting[0]
    );
    let frame = rig::udp_a_to_b(53, 60);
    setup.rig.sender_a()?.send_n(&frame, 10)?;
    for name in ["quick", "next"] {
        let session = setup.client.settle(name, 10, ARRIVAL, QUIET)?;
        ensure!(
            counts(&session) == (10, 10 * frame.len() as u64),
            "{session:?}"
        );
    }
    ensure!(
        setup
            .client
            .fails(&["show", "slow"])?
            .stderr
            .contains("slow"),
        "a session slow exists"
    );
    Ok(())
}
