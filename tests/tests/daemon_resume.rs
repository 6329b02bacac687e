//! An interface deleted and made again under running sessions: each session shows
//! down while its interface is gone, keeps its counters, and counts again, on every
//! hook, as soon as an interface of that name returns - without a client asking, and
//! also when the daemon was not running meanwhile.
//!
//! The rig's veth pair is deleted and created again with the same names
//! ([`Rig::recreate_veth`]): new interfaces, new indexes. Frames written on A's end
//! arrive on B's end, where the sessions count; nothing else is on the link.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use capstats_common::protocol::Session;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Rig, Setup};
use capstats_tests::require_root;

const TEST: &str = "daemon_resume";
/// How long frames may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// One session per hook, each counting the test's frames.
const SESSIONS: [(&str, &[&str]); 4] = [
    ("sock", &["hook", "socket"]),
    ("tc-in", &["hook", "tc", "direction", "in"]),
    ("tc-both", &["hook", "tc", "direction", "both"]),
    ("xdp", &["hook", "xdp"]),
];

/// Waits until every session is `up` (or not), as the daemon sees it.
fn wait_up(client: &capstats_tests::daemon::Client, up: bool) -> anyhow::Result<Vec<Session>> {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let sessions = client.poll()?;
        if sessions.iter().all(|s| s.up == up) {
            return Ok(sessions);
        }
        if Instant::now() > deadline {
            bail!("sessions not all up={up} within {ARRIVAL:?}: {sessions:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_sessions(setup: &Setup) -> anyhow::Result<()> {
    let interface = setup.rig.interface();
    for (name, hook) in SESSIONS {
        let mut args = vec!["new", name, "interface", interface];
        args.extend_from_slice(hook);
        args.extend(["filter", "udp port 53"]);
        setup.client.ok(&args)?;
    }
    Ok(())
}

/// Sends `n` frames A to B and waits until every session has counted `total`.
fn send_and_settle(setup: &Setup, frame: &[u8], n: u64, total: u64) -> anyhow::Result<()> {
    setup.send_and_settle(SESSIONS.iter().map(|(name, _)| *name), frame, n, total)
}

#[test]
fn sessions_resume_when_their_interface_returns() -> anyhow::Result<()> {
    require_root(TEST);
    let mut setup = Setup::start("resume")?;
    start_sessions(&setup)?;
    let frame = rig::udp_a_to_b(53, 60);
    let len = frame.len() as u64;
    send_and_settle(&setup, &frame, 10, 10)?;

    setup.rig.ns_b.ip(&["link", "del", setup.rig.interface()])?;
    let down = wait_up(&setup.client, false)?;
    for session in &down {
        ensure!(
            counts(session) == (10, 10 * len),
            "down, {} lost counts: {session:?}",
            session.name
        );
    }

    setup.rig.recreate_veth()?;
    let up = wait_up(&setup.client, true)?;
    ensure!(
        up.iter().all(|s| counts(s) == (10, 10 * len)),
        "back up: {up:?}"
    );
    // Every hook counts on the new interface, from where it left off.
    send_and_settle(&setup, &frame, 15, 25)?;
    let log = setup.daemon.log();
    ensure!(
        log.contains("was deleted") && log.contains("is back"),
        "the daemon's log says nothing of the interface:\n{log}"
    );
    println!(
        "veth-b deleted and made again: {} sessions down with their counts, then up, counting \
         on to 25",
        SESSIONS.len()
    );
    Ok(())
}

/// The interface is made again while no daemon runs (killed: the tc and XDP links it
/// pinned stay, and die with the old interface): the next daemon finds them dead and
/// attaches afresh, with the counters the pinned maps kept.
#[test]
fn sessions_resume_after_a_restart_on_a_new_interface() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("resume-restart")?;
    start_sessions(&setup)?;
    let frame = rig::udp_a_to_b(53, 60);
    let len = frame.len() as u64;
    send_and_settle(&setup, &frame, 10, 10)?;

    let setup = setup.restart("daemon2.log", Rig::recreate_veth)?;
    let up = wait_up(&setup.client, true)?;
    ensure!(
        up.iter().all(|s| counts(s) == (10, 10 * len)),
        "after the restart: {up:?}"
    );
    send_and_settle(&setup, &frame, 15, 25)?;
    let log = setup.daemon.log();
    ensure!(
        log.contains("not using the pinned"),
        "the new daemon did not say it replaced the dead links:\n{log}"
    );
    Ok(())
}
