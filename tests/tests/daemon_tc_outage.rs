//! The TC hook through a dead daemon: the kernel goes on counting while no daemon runs
//! (`kill -9`, an upgrade), and the next daemon takes the links back and loses no
//! frame. The rig it counts on, and what it shares with the other `daemon_tc*.rs`, is
//! in `tc/mod.rs`.
//!
//! Every daemon has its own pin directory; the daemons that must leave their TC links
//! counting on a clean stop (the upgrade) run without `--detach-on-exit`, and a
//! [`capstats_tests::daemon::PinDir`] guard removes that directory whatever happens.

mod tc;

use tc::*;

const TEST: &str = "daemon_tc_outage";

// ---------------------------------------------------------------------------------
// 3. Counting through a dead daemon.

/// UDP frames of the streams of tests 3 (60 bytes each), at least: the stream goes
/// on until the new daemon has run for [`AFTER_RESTART`] frames.
const STREAM_FRAMES: u64 = 20_000;
/// About 3 s for [`STREAM_FRAMES`].
const STREAM_PPS: u32 = 6_500;
/// Frames the stream still writes once the new daemon answers (half a second).
const AFTER_RESTART: u64 = STREAM_PPS as u64 / 2;

/// How a daemon goes away in the middle of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// `kill -9`: nothing saved, nothing cleaned up.
    Kill,
    /// SIGTERM to a daemon without `--detach-on-exit`: the table saved, the pins left.
    Upgrade,
}

/// A stream of [`STREAM_FRAMES`] from A to B (longer if the new daemon is slow to
/// start: it goes on for [`AFTER_RESTART`] frames after the new daemon answers); after a
/// third of it the daemon goes away (`outage`), a new one starts on the same state and
/// pin directories after another third, takes the links back and swaps its programs in
/// under traffic, and counting goes on. The `tc in` and `tc both` sessions count every frame,
/// the kernel having counted on while no daemon ran (the pinned map, read from bpffs,
/// moves meanwhile); the socket session misses those written while its socket was
/// closed.
fn counting_through(outage: Outage) -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let tag = match outage {
        Outage::Kill => "hooks-kill",
        Outage::Upgrade => "hooks-upgrade",
    };
    // The first daemon is upgraded without `--detach-on-exit`, so that its links stay
    // pinned; the second, the last, runs with it (`spec`). Whatever happens, nothing
    // stays pinned: the setup's pin guard outlives both daemons.
    let setup = Setup::start_with(tag, |spec| spec.keeping_pins(outage == Outage::Upgrade))?;
    let (client, rig, scratch) = (&setup.client, &setup.rig, &setup.scratch);
    let spec = setup.spec.clone().keeping_pins(false);
    let first = setup.daemon;
    let interface = rig.interface();
    new_session(client, "tc-in", interface, At::TcIn, "udp")?;
    new_session(
        client,
        "tc-both",
        interface,
        At::TcBoth,
        "udp dst port 7000",
    )?;
    new_session(client, "sock", interface, At::Socket, "udp")?;
    let frame = rig::udp_a_to_b(7000, 18);
    let sender = rig.sender_a()?;
    let progress = AtomicU64::new(0);
    let enough = AtomicBool::new(false);

    struct Outcome {
        at_outage: Count,
        outage_at: u64,
        outage_done: u64,
        pinned: (Count, Count),
        restart_at: u64,
        restart_took: Duration,
        answered_at: u64,
        links_kept: bool,
        second: Daemon,
        first_log: String,
    }
    let (took, outcome) = std::thread::scope(|scope| -> anyhow::Result<(Duration, Outcome)> {
        // However this closure ends, the stream ends too (after STREAM_FRAMES).
        let _end_stream = SetOnDrop(&enough);
        let stream = scope.spawn(|| {
            let frame = |_| frame.as_slice();
            stream_until(
                &sender,
                frame,
                STREAM_PPS,
                STREAM_FRAMES,
                &progress,
                &enough,
            )
        });
        let third = STREAM_FRAMES / 3;
        let outage_at = wait_for(&progress, third, ARRIVAL)?;
        let at_outage = counts(&client.show("tc-in")?);
        let first_log = match outage {
            Outage::Kill => first.kill()?,
            Outage::Upgrade => first.stop()?,
        };
        let outage_done = progress.load(Ordering::SeqCst);
        let links = tc_links(&spec.pin_dir, rig.interface());
        let links_kept = links.join("in-link").exists()
            && links.join("out-link").exists()
            && tcx_counts(rig)? == (1, 1);
        let pinned_before = pinned_count(&spec.pin_dir, "tc-in")?;
        wait_for(&progress, outage_done + third, ARRIVAL)?;
        let pinned_after = pinned_count(&spec.pin_dir, "tc-in")?;
        let restart_at = progress.load(Ordering::SeqCst);
        let restarting = Instant::now();
        let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
        let restart_took = restarting.elapsed();
        let answered_at = progress.load(Ordering::SeqCst);
        wait_for(&progress, answered_at + AFTER_RESTART, ARRIVAL)?;
        enough.store(true, Ordering::SeqCst);
        let took = joined(stream)?;
        Ok((
            took,
            Outcome {
                at_outage,
                outage_at,
                outage_done,
                pinned: (pinned_before, pinned_after),
                restart_at,
                restart_took,
                answered_at,
                links_kept,
                second,
                first_log,
            },
        ))
    })?;
    let written = progress.load(Ordering::SeqCst);
    let want = times(&frame, written);
    let tc_in = counts(&client.settle("tc-in", written, ARRIVAL, QUIET)?);
    let polled = poll(client)?;
    let (tc_both, socket) = (count_of(&polled, "tc-both")?, count_of(&polled, "sock")?);
    let gap = outcome.restart_at - outcome.outage_done;
    println!(
        "{outage:?}: {written} frames of {} bytes written in {took:.2?}; the daemon went \
         away after frame {} (tc in had {:?}), was gone by frame {}, a new one started at \
         frame {} and answered in {:.0?} (frame {}); meanwhile the pinned map went from {:?} \
         to {:?}. Final: tc in {tc_in:?}, tc both {tc_both:?}, socket {socket:?} ({} frames \
         written while no daemon ran); {:.1?} in all",
        frame.len(),
        outcome.outage_at,
        outcome.at_outage,
        outcome.outage_done,
        outcome.restart_at,
        outcome.restart_took,
        outcome.answered_at,
        outcome.pinned.0,
        outcome.pinned.1,
        gap,
        started.elapsed()
    );
    let second_log = outcome.second.log();
    for (name, at) in [
        ("tc-in", At::TcIn),
        ("tc-both", At::TcBoth),
        ("sock", At::Socket),
    ] {
        let session = polled.get(name).context("a restored session")?;
        ensure!(
            (session.hook.as_str(), session.direction.as_str()) == at.reported() && session.up,
            "{name} after the restart: {session:?}"
        );
    }
    ensure!(
        outcome.links_kept,
        "the links are not pinned under {}/%tc and attached (1 tcx program on ingress, 1 on \
         egress) after the first daemon went away ({outage:?}); its log:\n{}",
        spec.pin_dir.display(),
        outcome.first_log
    );
    if outage == Outage::Upgrade {
        ensure!(
            outcome
                .first_log
                .contains("session table saved (3 sessions)")
                && !outcome.first_log.contains("--detach-on-exit"),
            "the first daemon's log:\n{}",
            outcome.first_log
        );
    }
    ensure!(
        outcome.at_outage.0 > 0 && outcome.at_outage.0 < written,
        "the outage did not happen in the middle of the stream: tc in had {:?}",
        outcome.at_outage
    );
    ensure!(
        outcome.pinned.1.0 > outcome.pinned.0.0,
        "the pinned map did not move while no daemon ran: {:?} then {:?}",
        outcome.pinned.0,
        outcome.pinned.1
    );
    ensure!(
        second_log.contains("3 sessions restored"),
        "the second daemon's log:\n{second_log}"
    );
    ensure!(
        tc_in == want && tc_both == want,
        "{written} frames ({want:?}) were written; tc in counted {tc_in:?}, tc both \
         {tc_both:?}: frames were lost or counted twice across the {outage:?}"
    );
    // The socket missed (about) what was written between the outage and the restart.
    ensure!(
        socket.0 < written - gap / 2 && socket.0 >= outcome.at_outage.0,
        "the socket session counted {socket:?}: it should have missed about {gap} frames \
         (written while no daemon held its socket)"
    );
    // A clean stop with --detach-on-exit takes everything out of the kernel.
    outcome.second.stop()?;
    ensure!(
        !spec.pin_dir.exists(),
        "{} is still there after a stop with --detach-on-exit",
        spec.pin_dir.display()
    );
    let programs = tcx_counts(rig)?;
    ensure!(
        programs == (0, 0),
        "tcx programs left on {interface} after the last stop: {programs:?}"
    );
    Ok(())
}

#[test]
fn a_killed_daemon_loses_no_tc_count() -> anyhow::Result<()> {
    counting_through(Outage::Kill)
}

#[test]
fn an_upgrade_loses_no_tc_count() -> anyhow::Result<()> {
    counting_through(Outage::Upgrade)
}
