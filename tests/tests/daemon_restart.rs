//! The daemon across restarts: SIGTERM saves the session table, a new daemon on the
//! same state directory restores it (same names, interfaces, filters and times) and
//! its counters carry on from the saved values; and a second daemon refuses to start
//! beside a running one, on its socket or on its state directory, naming the running
//! one by its pid.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_common::protocol::Session;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{Daemon, DaemonSpec};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_restart";
const ARRIVAL: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(100);

/// The sessions' lasting parts: name, interface, filter, created, modified, up.
fn identity(sessions: &[Session]) -> Vec<(String, String, String, String, String, bool)> {
    sessions
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.interface.clone(),
                s.filter.clone(),
                s.created.clone(),
                s.modified.clone(),
                s.up,
            )
        })
        .collect()
}

fn find<'s>(sessions: &'s [Session], name: &str) -> anyhow::Result<&'s Session> {
    sessions
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no session {name} in {sessions:?}"))
}

#[test]
fn restart_restores_sessions_and_counters_carry_on() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("restart")?;
    let scratch = ScratchDir::new("restart")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let client = spec.client()?;
    let interface = rig.interface();
    let udp = rig::udp_a_to_b(53, 40);
    let syn = rig::tcp_syn_a_to_b(80);
    let (udp_len, syn_len) = (udp.len() as u64, syn.len() as u64);
    let sender = rig.sender_a()?;

    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    for (name, filter) in [("udp", "udp"), ("web", "tcp port 80"), ("all", "")] {
        client.ok(&["new", name, "interface", interface, "filter", filter])?;
    }
    // A modified session keeps its modified time across the restart too.
    client.ok(&["modify", "web", "tcp dst port 80"])?;
    sender.send_n(&udp, 30)?;
    sender.send_n(&syn, 12)?;
    client.settle("all", 42, ARRIVAL, QUIET)?;
    let before = client.poll()?;
    ensure!(
        counts(find(&before, "udp")?) == (30, 30 * udp_len)
            && counts(find(&before, "web")?) == (12, 12 * syn_len),
        "before the restart: {before:?}"
    );
    // Times are kept to the second: let a second pass so that re-created sessions
    // would show.
    std::thread::sleep(Duration::from_millis(1100));
    let log = first.stop()?;
    ensure!(
        log.contains("SIGTERM") && log.contains("session table saved (3 sessions)"),
        "the first daemon's log:\n{log}"
    );
    ensure!(
        !spec.socket.exists(),
        "the stopped daemon left its socket {}",
        spec.socket.display()
    );

    let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
    ensure!(
        second.log().contains("3 sessions restored"),
        "the second daemon's log:\n{}",
        second.log()
    );
    let restored = client.poll()?;
    ensure!(
        identity(&restored) == identity(&before),
        "restored sessions differ:\nbefore {before:?}\nafter  {restored:?}"
    );
    for session in &before {
        let now = find(&restored, &session.name)?;
        ensure!(
            counts(now) == counts(session),
            "{}: counted {:?} before the restart, {:?} after",
            session.name,
            counts(session),
            counts(now)
        );
    }
    // They count new traffic on top.
    sender.send_n(&udp, 5)?;
    sender.send_n(&syn, 3)?;
    client.settle("all", 50, ARRIVAL, QUIET)?;
    let after = client.poll()?;
    for (name, want) in [
        ("udp", (35, 35 * udp_len)),
        ("web", (15, 15 * syn_len)),
        ("all", (50, 35 * udp_len + 15 * syn_len)),
    ] {
        ensure!(
            counts(find(&after, name)?) == want,
            "{name} after the restart and new traffic: {:?}, expected {want:?}",
            find(&after, name)?
        );
    }
    println!(
        "restored {:?}; after new traffic {:?}",
        identity(&restored),
        after
            .iter()
            .map(|s| (&s.name, counts(s)))
            .collect::<Vec<_>>()
    );

    // A second restart right away: counters saved on shutdown, never back.
    second.stop()?;
    let third = Daemon::start(&rig.ns_b, &spec, &scratch.join("third.log"))?;
    let again = client.poll()?;
    for session in &after {
        ensure!(
            counts(find(&again, &session.name)?) == counts(session),
            "{} went from {:?} to {:?} across the second restart",
            session.name,
            counts(session),
            counts(find(&again, &session.name)?)
        );
    }
    third.stop()?;
    Ok(())
}

/// A crash (SIGKILL) saves nothing, yet the counters do not go back: they live in a
/// map pinned on bpffs, which the next daemon finds. (A socket session does not count
/// while no daemon holds its socket: frames sent meanwhile are not counted.)
#[test]
fn a_killed_daemon_loses_no_counts() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("killed")?;
    let scratch = ScratchDir::new("killed")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let client = spec.client()?;
    let udp = rig::udp_a_to_b(53, 40);
    let udp_len = udp.len() as u64;
    let sender = rig.sender_a()?;

    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    client.ok(&["new", "udp", "interface", rig.interface(), "filter", "udp"])?;
    sender.send_n(&udp, 20)?;
    client.settle("udp", 20, ARRIVAL, QUIET)?;
    first.kill()?;
    ensure!(
        spec.pin_dir.join("udp/counters").exists(),
        "the counter map is pinned at {}",
        spec.pin_dir.display()
    );
    sender.send_n(&udp, 5)?; // nobody counts these
    // Times are to the second: let one pass so the gap shows.
    std::thread::sleep(Duration::from_millis(1100));

    let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
    let polled = client.poll()?;
    let session = find(&polled, "udp")?;
    // The gap is said: the socket counts again since the restart, not since creation.
    ensure!(
        session
            .counting_since
            .as_ref()
            .is_some_and(|since| *since > session.created),
        "after the restart counting_since should be later than created: {session:?}"
    );
    let after_crash = counts(session);
    ensure!(
        after_crash == (20, 20 * udp_len),
        "after kill -9 and a restart the session shows {after_crash:?}, not the 20 packets it had"
    );
    sender.send_n(&udp, 10)?;
    client.settle("udp", 30, ARRIVAL, QUIET)?;
    second.stop()?;
    ensure!(
        !spec.pin_dir.exists(),
        "--detach-on-exit removes {} on a clean stop",
        spec.pin_dir.display()
    );
    Ok(())
}

fn refusal(
    rig: &Rig,
    spec: &DaemonSpec,
    log: &Path,
    says: &str,
) -> anyhow::Result<capstats_tests::daemon::Outcome> {
    let outcome = Daemon::expect_exit(&rig.ns_b, spec, log)?;
    ensure!(
        outcome.code == Some(1) && outcome.stderr.contains(says),
        "a second daemon ({spec:?}) should exit with 1 saying {says:?}: {outcome}"
    );
    println!("second daemon {spec:?}: {}", outcome.stderr.trim());
    Ok(outcome)
}

#[test]
fn a_second_daemon_refuses_to_start() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("second")?;
    let scratch = ScratchDir::new("second")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let mut first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    let client = first.client()?;
    client.ok(&["new", "kept", "interface", rig.interface(), "filter", "udp"])?;
    let frame = rig::udp_a_to_b(53, 1);
    rig.sender_a()?.send_n(&frame, 4)?;
    client.settle("kept", 4, ARRIVAL, QUIET)?;
    let state_file = spec.state_dir.join("sessions.json");
    let saved = std::fs::read(&state_file)?;
    // Each refusal names the daemon that runs, by the pid the kernel gives for the
    // socket's other end or the one in the state directory's lock.
    let pid = first.pid().context("the first daemon runs")?;

    // The same socket, another state directory.
    let same_socket = DaemonSpec::new(spec.socket.clone(), scratch.join("other-state"));
    refusal(
        &rig,
        &same_socket,
        &scratch.join("same-socket.log"),
        &format!(
            "another capstats daemon (pid {pid}) already answers on {}",
            spec.socket.display()
        ),
    )?;
    // Another socket, the same state directory.
    let same_state = DaemonSpec::new(scratch.join("other.sock"), spec.state_dir.clone());
    refusal(
        &rig,
        &same_state,
        &scratch.join("same-state.log"),
        &format!(
            "another capstats daemon (pid {pid}) uses the state directory {}",
            spec.state_dir.display()
        ),
    )?;
    ensure!(
        !same_state.socket.exists(),
        "the refused daemon left a socket at {}",
        same_state.socket.display()
    );
    // Both the same.
    refusal(
        &rig,
        &spec,
        &scratch.join("same-both.log"),
        "another capstats daemon",
    )?;

    // The first daemon is untouched: still running, still serving, same table.
    ensure!(
        first.is_running(),
        "the first daemon died:\n{}",
        first.log()
    );
    let kept = client.show("kept")?;
    ensure!(
        counts(&kept) == (4, 4 * frame.len() as u64) && kept.up,
        "kept after the refusals: {kept:?}"
    );
    ensure!(
        std::fs::read(&state_file)? == saved,
        "a refused daemon changed {}",
        state_file.display()
    );
    let log = first.stop()?;
    ensure!(
        log.contains("session table saved (1 session)"),
        "the first daemon's log:\n{log}"
    );
    Ok(())
}
