//! Many TC sessions on one interface: 32 sessions count exactly and are not disturbed
//! when others come and go; 64 in one direction count through one program and 150
//! through a chain; `modify` swaps under traffic lose and double nothing; a session of
//! another shape beside 257 of one gets a program of its own. The rig they
//! count on, and what they share with the other `daemon_tc*.rs`, is in `tc/mod.rs`.
//!
//! All tc sessions of an interface count through one chain of programs per direction
//! (tcx runs at most 63 programs on a hook; 64 sessions in one direction all count;
//! 150 make a chain of three programs).

mod tc;

use tc::*;

const TEST: &str = "daemon_tc_sessions";

// ---------------------------------------------------------------------------------
// 4. Many sessions on one interface.

const MANY: u16 = 32;
const MANY_BASE: u16 = 6000;

/// Session i of the 32: `udp dst port 6000+i`, in, both or out by i mod 3.
fn many_at(i: u16) -> At {
    match i % 3 {
        0 => At::TcIn,
        1 => At::TcBoth,
        _ => At::TcOut,
    }
}

/// What session `at` on port i counts of `received[i]` and `sent[i]`.
fn seen(at: At, received: Count, sent: Count) -> Count {
    match at {
        At::TcIn => received,
        At::TcOut => sent,
        At::TcBoth | At::Socket => add(received, sent),
    }
}

/// 32 `tc` sessions on B's end, `udp dst port 6000+i`, a third each `in`, `both` and
/// `out`: frames of sizes of their own to each port, both ways, all counted exactly.
/// Then two steady streams (from A and from B, round-robin over the ports) while 8
/// sessions are added and 8 of the 32 are stopped, one after another: the 24 left alone
/// count exactly what they should; the others count part of it.
#[test]
fn thirty_two_tc_sessions_count_exactly_and_are_not_disturbed() -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let setup = setup("hooks-32")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    let name = |i: u16| format!("port-{i:02}");
    for i in 0..MANY {
        new_session(
            client,
            &name(i),
            interface,
            many_at(i),
            &format!("udp dst port {}", MANY_BASE + i),
        )?;
    }
    new_session(client, "all", interface, At::TcBoth, "")?;
    let created = started.elapsed();

    // Port i: i + 1 frames received, 1 + 7i mod 5 sent, each of a size of its own.
    let to_b: Vec<Vec<u8>> = (0..MANY)
        .map(|i| rig::udp_a_to_b(MANY_BASE + i, usize::from(i)))
        .collect();
    let to_a: Vec<Vec<u8>> = (0..MANY)
        .map(|i| rig::udp_b_to_a(MANY_BASE + i, 100 + usize::from(i)))
        .collect();
    let n_in = |i: u16| u64::from(i) + 1;
    let n_out = |i: u16| 1 + (7 * u64::from(i)) % 5;
    let (sender_a, sender_b) = (rig.sender_a()?, rig.sender_b()?);
    let interleave = |frames: &[Vec<u8>], n: &dyn Fn(u16) -> u64| -> Vec<(Vec<u8>, u64)> {
        (0..MANY)
            .map(|i| (frames[usize::from(i)].clone(), n(i)))
            .collect()
    };
    let received = send_interleaved(&sender_a, &interleave(&to_b, &n_in))?;
    let sent = send_interleaved(&sender_b, &interleave(&to_a, &n_out))?;
    client.settle("all", received + sent, ARRIVAL, QUIET)?;
    let first = poll(client)?;
    let phase1 = |i: u16| {
        let k = usize::from(i);
        seen(
            many_at(i),
            times(&to_b[k], n_in(i)),
            times(&to_a[k], n_out(i)),
        )
    };
    let mut failures = Vec::new();
    for i in 0..MANY {
        let got = count_of(&first, &name(i))?;
        if got != phase1(i) {
            failures.push(format!(
                "{} ({:?}, udp dst port {}): counted {got:?}, expected {:?}",
                name(i),
                many_at(i),
                MANY_BASE + i,
                phase1(i)
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {MANY} sessions miscounted {received} received and {sent} sent frames:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let exact_at = started.elapsed();

    // Steady streams, frame k to port k mod 32, while sessions come and go: at least
    // these many frames (4 s), and on until the operations are over.
    const STREAM_IN: u64 = 12_800;
    const STREAM_OUT: u64 = 4_800;
    let port_of = |k: u64| (k % u64::from(MANY)) as usize;
    let (progress_in, progress_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let ops_done = AtomicBool::new(false);
    let added = |j: u16| format!("added-{j}");
    // Added: on ports that untouched sessions count too, each direction.
    let added_port = |j: u16| j * 3;
    let added_at = |j: u16| [At::TcIn, At::TcOut, At::TcBoth][usize::from(j % 3)];
    let stopped: Vec<u16> = (MANY - 8..MANY).collect();
    // (operation, progress in, progress out, counts reported by stop)
    let mut ops: Vec<(String, u64, u64, Option<Count>)> = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let _end_streams = SetOnDrop(&ops_done);
        let a = scope.spawn(|| {
            let frame = |k| to_b[port_of(k)].as_slice();
            stream_until(&sender_a, frame, 3_200, STREAM_IN, &progress_in, &ops_done)
        });
        let b = scope.spawn(|| {
            let frame = |k| to_a[port_of(k)].as_slice();
            stream_until(
                &sender_b,
                frame,
                1_200,
                STREAM_OUT,
                &progress_out,
                &ops_done,
            )
        });
        wait_for(&progress_in, 400, ARRIVAL)?;
        for j in 0..8u16 {
            new_session(
                client,
                &added(j),
                interface,
                added_at(j),
                &format!("udp dst port {}", MANY_BASE + added_port(j)),
            )?;
            ops.push((
                format!("new {}", added(j)),
                progress_in.load(Ordering::SeqCst),
                progress_out.load(Ordering::SeqCst),
                None,
            ));
            std::thread::sleep(Duration::from_millis(80));
            let i = stopped[usize::from(j)];
            let last = counts(&client.session(&["stop", &name(i)])?);
            ops.push((
                format!("stop {}", name(i)),
                progress_in.load(Ordering::SeqCst),
                progress_out.load(Ordering::SeqCst),
                Some(last),
            ));
            std::thread::sleep(Duration::from_millis(80));
        }
        ops_done.store(true, Ordering::SeqCst);
        for stream in [a, b] {
            joined(stream)?;
        }
        Ok(())
    })?;
    let (stream_in, stream_out) = (
        progress_in.load(Ordering::SeqCst),
        progress_out.load(Ordering::SeqCst),
    );
    client.settle(
        "all",
        received + sent + stream_in + stream_out,
        ARRIVAL,
        QUIET,
    )?;
    let end = poll(client)?;
    // The live sessions' directions: the stopped ones' are gone.
    let live: Vec<At> = (0..MANY)
        .filter(|i| !stopped.contains(i))
        .map(many_at)
        .chain((0..8).map(added_at))
        .chain([At::TcBoth])
        .collect();
    // One program per direction that any session counts.
    let want_programs = (
        usize::from(live.iter().any(|at| *at != At::TcOut)),
        usize::from(live.iter().any(|at| *at != At::TcIn)),
    );
    let programs = tcx_counts(rig)?;
    ensure!(
        programs == want_programs,
        "tcx programs on {interface} (ingress, egress): {programs:?}, expected \
         {want_programs:?}"
    );
    let stream_share = |i: u16, at: At| {
        let k = usize::from(i);
        seen(
            at,
            times(&to_b[k], round_robin_share(i, stream_in, MANY)),
            times(&to_a[k], round_robin_share(i, stream_out, MANY)),
        )
    };
    let mut untouched = 0;
    for i in 0..MANY {
        let want = add(phase1(i), stream_share(i, many_at(i)));
        if stopped.contains(&i) {
            ensure!(
                !end.contains_key(&name(i)),
                "{} is still polled after stop",
                name(i)
            );
            ensure!(
                !setup.spec.pin_dir.join(name(i)).exists(),
                "{}'s pins stay after stop",
                name(i)
            );
            let last = ops
                .iter()
                .find(|(op, ..)| *op == format!("stop {}", name(i)))
                .and_then(|op| op.3)
                .context("the counts stop reported")?;
            ensure!(
                last.0 >= phase1(i).0 && last.0 <= want.0,
                "{} stopped at {last:?}, outside {:?}..={want:?}",
                name(i),
                phase1(i)
            );
            continue;
        }
        untouched += 1;
        let got = count_of(&end, &name(i))?;
        if got != want {
            failures.push(format!(
                "{} ({:?}, untouched): counted {got:?}, expected {want:?}",
                name(i),
                many_at(i)
            ));
        }
    }
    for j in 0..8u16 {
        let got = count_of(&end, &added(j))?;
        let most = stream_share(added_port(j), added_at(j));
        if got.0 == 0 || got.0 > most.0 {
            failures.push(format!(
                "{} ({:?}, added under traffic): counted {got:?}, expected some of {most:?}",
                added(j),
                added_at(j)
            ));
        }
    }
    let under_traffic = ops
        .iter()
        .filter(|(_, pin, pout, _)| *pin > 0 && *pin < stream_in && *pout < stream_out)
        .count();
    println!(
        "{MANY} tc sessions + 1 created in {created:.1?}, exact on {received} received and {sent} \
         sent frames at {exact_at:.1?}; then {stream_in} + {stream_out} frames streamed while \
         {} operations ran ({under_traffic} under traffic); {untouched} untouched sessions: \
         {} mismatches; {:.1?} in all",
        ops.len(),
        failures.len(),
        started.elapsed()
    );
    for (op, pin, pout, last) in &ops {
        println!(
            "  {op:<14} at frame {pin:>5} in, {pout:>4} out{}",
            last.map_or_else(String::new, |c| format!(", stopped at {c:?}"))
        );
    }
    ensure!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    ensure!(
        under_traffic >= 12,
        "only {under_traffic} of {} operations happened under traffic: the test did not test \
         what it should",
        ops.len()
    );
    Ok(())
}

/// 64 `tc in` sessions on one interface (as the socket hook takes 64, see
/// `daemon_socket`): tcx runs at most 63 programs on a hook, and the daemon attaches
/// one for all of them (the 64th session in a second program it tail-calls), so every
/// session is made and counts exactly.
#[test]
fn sixty_four_tc_in_sessions_count_exactly_through_one_program() -> anyhow::Result<()> {
    require_root(TEST);
    const SESSIONS: u16 = 64;
    const BASE: u16 = 7000;
    let started = Instant::now();
    let setup = setup("hooks-64")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    // Counts every frame without taking a tcx slot.
    new_session(client, "all", interface, At::Socket, "")?;
    let name = |i: u16| format!("in-{i:02}");
    let mut made: Vec<u16> = Vec::new();
    for i in 0..SESSIONS {
        let (session, filter) = (name(i), format!("udp dst port {}", BASE + i));
        let args = [
            "new",
            &session,
            "interface",
            interface,
            "hook",
            "tc",
            "direction",
            "in",
            "filter",
            &filter,
        ];
        let outcome = client.run(&args)?;
        ensure!(outcome.code == Some(0), "`new {session}` failed: {outcome}");
        made.push(i);
    }
    let programs = tcx_counts(rig)?;
    ensure!(
        programs == (1, 0),
        "tcx programs on {interface} with {SESSIONS} tc in sessions: {programs:?}"
    );
    let created = started.elapsed();
    // Port i gets 2 frames of 42 + i bytes.
    let frames: Vec<Vec<u8>> = (0..SESSIONS)
        .map(|i| rig::udp_a_to_b(BASE + i, usize::from(i)))
        .collect();
    let sender = rig.sender_a()?;
    for _ in 0..2 {
        for frame in &frames {
            sender.send(frame)?;
        }
    }
    client.settle("all", 2 * u64::from(SESSIONS), ARRIVAL, QUIET)?;
    let polled = poll(client)?;
    let mut wrong = Vec::new();
    for &i in &made {
        let got = count_of(&polled, &name(i))?;
        let want = times(&frames[usize::from(i)], 2);
        if got != want {
            wrong.push(format!("{}: {got:?}, expected {want:?}", name(i)));
        }
    }
    println!(
        "{} tc in sessions made in {created:.1?}; all exact: {}; {:.1?} in all",
        made.len(),
        wrong.is_empty(),
        started.elapsed()
    );
    ensure!(wrong.is_empty(), "miscounted:\n{}", wrong.join("\n"));
    Ok(())
}

/// `udp dst port PORT`, of a shape no other session `i` has (see
/// `a_hundred_and_fifty_tc_sessions_count_exactly_through_a_chain`).
fn apart(port: u16, i: u16) -> String {
    format!("udp dst port {port} and len <= {}", 1500 + i)
}

/// 150 `tc in` sessions on one interface, each of a shape of its own (`udp dst port P
/// and len <= L`, a different L each: a `jgt` constant, which shared evaluation does
/// not look up), so no two are evaluated together: a chain of three programs (63,
/// 63, 24 sessions), the first on the link, the others in the prog array pinned
/// beside it.
/// All count exactly; then, under a steady stream over their ports, a session of the
/// second program stops, one of the third is modified to an equivalent expression and
/// a new one fills the second program's hole: the others, the modified one included,
/// count every frame exactly once. Then the daemon is killed: frames for a session of
/// the third program are still counted (the pinned prog array keeps the chain), and a
/// new daemon takes the chain over and counts on exactly.
#[test]
fn a_hundred_and_fifty_tc_sessions_count_exactly_through_a_chain() -> anyhow::Result<()> {
    require_root(TEST);
    const SESSIONS: u16 = 150;
    const BASE: u16 = 7100;
    const STOPPED: u16 = 70; // in the second program
    const MODIFIED: u16 = 140; // in the third
    const STREAM: u64 = 6_000;
    let started = Instant::now();
    let Setup {
        client,
        daemon,
        spec,
        pins: _pins,
        rig,
        scratch,
    } = setup("hooks-chain")?;
    let interface = rig.interface();
    new_session(&client, "all", interface, At::Socket, "")?;
    let name = |i: u16| format!("in-{i:03}");
    for i in 0..SESSIONS {
        new_session(&client, &name(i), interface, At::TcIn, &apart(BASE + i, i))?;
    }
    let created = started.elapsed();
    let links = tc_links(&spec.pin_dir, interface);
    ensure!(
        tcx_counts(&rig)? == (1, 0) && links.join("in-chain").exists(),
        "with {SESSIONS} tc in sessions: tcx programs {:?}, pins {:?}",
        tcx_counts(&rig)?,
        entries(&links)
    );
    // Port i: one frame of 42 + i % 50 bytes.
    let frames: Vec<Vec<u8>> = (0..SESSIONS)
        .map(|i| rig::udp_a_to_b(BASE + i, usize::from(i % 50)))
        .collect();
    let sender = rig.sender_a()?;
    for frame in &frames {
        sender.send(frame)?;
    }
    let mut written = u64::from(SESSIONS);
    client.settle("all", written, ARRIVAL, QUIET)?;
    let want_of = |i: u16, n: u64| times(&frames[usize::from(i)], n);
    let check = |polled: &BTreeMap<String, Session>,
                 n_of: &dyn Fn(u16) -> u64,
                 skip: &[u16]|
     -> anyhow::Result<Vec<String>> {
        let mut wrong = Vec::new();
        for i in (0..SESSIONS).filter(|i| !skip.contains(i)) {
            let (got, want) = (count_of(polled, &name(i))?, want_of(i, n_of(i)));
            if got != want {
                wrong.push(format!(
                    "{} (program {}): {got:?}, expected {want:?}",
                    name(i),
                    i / 63
                ));
            }
        }
        Ok(wrong)
    };
    let wrong = check(&poll(&client)?, &|_| 1, &[])?;
    ensure!(wrong.is_empty(), "miscounted:\n{}", wrong.join("\n"));

    // Round robin over the ports while the chain's second and third programs change.
    let progress = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let _end = SetOnDrop(&done);
        let stream = scope.spawn(|| {
            let frame = |k: u64| frames[(k % u64::from(SESSIONS)) as usize].as_slice();
            stream_until(&sender, frame, 3_000, STREAM, &progress, &done)
        });
        wait_for(&progress, 300, ARRIVAL)?;
        client.sessions(&["stop", &name(STOPPED)])?;
        std::thread::sleep(Duration::from_millis(100));
        let equivalent = format!(
            "udp and dst port {} and len <= {}",
            BASE + MODIFIED,
            1500 + MODIFIED
        );
        client.sessions(&["modify", &name(MODIFIED), &equivalent])?;
        std::thread::sleep(Duration::from_millis(100));
        new_session(
            &client,
            "late",
            interface,
            At::TcIn,
            &format!("udp dst port {}", BASE + 5),
        )?;
        let after_ops = progress.load(Ordering::SeqCst);
        ensure!(
            after_ops < STREAM,
            "the stream ({after_ops} frames) ended before the operations did"
        );
        done.store(true, Ordering::SeqCst);
        joined(stream)?;
        Ok(())
    })?;
    let streamed = progress.load(Ordering::SeqCst);
    written += streamed;
    let share = |i: u16| round_robin_share(i, streamed, SESSIONS);
    client.settle("all", written, ARRIVAL, QUIET)?;
    let polled = poll(&client)?;
    let wrong = check(&polled, &|i| 1 + share(i), &[STOPPED])?;
    ensure!(
        wrong.is_empty(),
        "after stop/modify/new under {streamed} frames, miscounted:\n{}",
        wrong.join("\n")
    );
    ensure!(
        !polled.contains_key(&name(STOPPED)),
        "{} is polled after stop",
        name(STOPPED)
    );
    let late = count_of(&polled, "late")?;
    ensure!(
        late.0 > 0 && late.0 <= share(5),
        "late (added under traffic) counted {late:?}, expected some of {} frames",
        share(5)
    );

    // No daemon: the pinned chain counts on, the third program included.
    daemon.kill()?;
    let last = SESSIONS - 1;
    let before = pinned_count(&spec.pin_dir, &name(last))?;
    let n = 20;
    // The socket session ("all") misses these: its socket closed with the daemon.
    sender.send_n(&frames[usize::from(last)], n)?;
    let deadline = Instant::now() + ARRIVAL;
    let without_daemon = loop {
        let now = pinned_count(&spec.pin_dir, &name(last))?;
        if now.0 >= before.0 + n || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        without_daemon == add(before, want_of(last, n)),
        "{} counted {before:?} then {without_daemon:?} while no daemon ran, expected \
         {n} frames more",
        name(last)
    );
    let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
    let client = second.client()?;
    for frame in &frames {
        sender.send(frame)?;
    }
    written += u64::from(SESSIONS);
    client.settle("all", written, ARRIVAL, QUIET)?;
    let polled = poll(&client)?;
    let extra = |i: u16| 2 + share(i) + if i == last { n } else { 0 };
    let wrong = check(&polled, &extra, &[STOPPED])?;
    ensure!(
        wrong.is_empty(),
        "after the restart, miscounted:\n{}",
        wrong.join("\n")
    );
    ensure!(
        tcx_counts(&rig)? == (1, 0)
            && links.join("in-chain").exists()
            && !links.join("in-chain-new").exists(),
        "after the restart: tcx programs {:?}, pins {:?}",
        tcx_counts(&rig)?,
        entries(&links)
    );
    println!(
        "{SESSIONS} tc in sessions made in {created:.1?}; exact through stop, modify and new \
         under {streamed} frames, while no daemon ran and after a restart; {:.1?} in all",
        started.elapsed()
    );
    second.stop()?;
    ensure!(
        !links.exists(),
        "pins left after a clean stop: {:?}",
        entries(&links)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. modify under traffic.

/// Two steady streams (A to B and B to A) while three tc sessions (`in`, `out`, `both`)
/// are modified again and again between expressions equivalent on this traffic, with a
/// failing modify among them: each counts exactly what an untouched session beside it
/// counts, and what was written.
#[test]
fn modify_of_tc_sessions_under_traffic_counts_every_frame_once() -> anyhow::Result<()> {
    require_root(TEST);
    const IN: u64 = 15_000;
    const OUT: u64 = 6_000;
    const FILTERS: [&str; 3] = ["ip and udp", "udp or icmp", "udp"];
    /// Rounds of modifies (one of each session) at least, under traffic.
    const ROUNDS: usize = 8;
    let started = Instant::now();
    let setup = setup("hooks-modify")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    let swapped = [
        ("swapped-in", At::TcIn),
        ("swapped-out", At::TcOut),
        ("swapped-both", At::TcBoth),
    ];
    for (name, at) in swapped {
        new_session(client, name, interface, at, "udp")?;
    }
    new_session(client, "steady-both", interface, At::TcBoth, "udp")?;
    new_session(client, "steady-sock", interface, At::Socket, "udp")?;
    let (to_b, to_a) = (rig::udp_a_to_b(9999, 18), rig::udp_b_to_a(9998, 30));
    let (sender_a, sender_b) = (rig.sender_a()?, rig.sender_b()?);
    let (progress_in, progress_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let rounds_done = AtomicBool::new(false);

    // (session, filter, packets when modify answered)
    let mut swaps: Vec<(&str, &str, u64)> = Vec::new();
    let mut refused = 0;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // The streams write at least IN and OUT frames (3 s), and go on until the
        // modifies have had ROUNDS rounds.
        let _end_streams = SetOnDrop(&rounds_done);
        let a = scope.spawn(|| {
            let frame = |_| to_b.as_slice();
            stream_until(&sender_a, frame, 5_000, IN, &progress_in, &rounds_done)
        });
        let b = scope.spawn(|| {
            let frame = |_| to_a.as_slice();
            stream_until(&sender_b, frame, 2_000, OUT, &progress_out, &rounds_done)
        });
        let mut round = 0;
        while !(a.is_finished() && b.is_finished()) {
            if round >= ROUNDS {
                rounds_done.store(true, Ordering::SeqCst);
            }
            let filter = FILTERS[round % FILTERS.len()];
            for (name, _) in swapped {
                let session = client.session(&["modify", name, filter])?;
                ensure!(
                    session.filter == filter && session.hook.as_str() == "tc",
                    "modify answered {session:?}"
                );
                swaps.push((name, filter, counts(&session).0));
            }
            if round == 3 {
                // A bad expression changes nothing, under traffic too.
                let outcome = client.fails(&["modify", "swapped-both", "udp port"])?;
                ensure!(
                    client.show("swapped-both")?.filter == filter,
                    "a failed modify changed the filter: {outcome}"
                );
                refused += 1;
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(40));
        }
        for stream in [a, b] {
            joined(stream)?;
        }
        Ok(())
    })?;
    let (written_in, written_out) = (
        progress_in.load(Ordering::SeqCst),
        progress_out.load(Ordering::SeqCst),
    );
    let received = times(&to_b, written_in);
    let sent = times(&to_a, written_out);
    client.settle("steady-both", written_in + written_out, ARRIVAL, QUIET)?;
    let end = poll(client)?;
    let want = [
        ("swapped-in", received),
        ("swapped-out", sent),
        ("swapped-both", add(received, sent)),
        ("steady-both", add(received, sent)),
        ("steady-sock", add(received, sent)),
    ];
    let under_traffic = |session: &str| {
        swaps
            .iter()
            .filter(|(name, _, packets)| *name == session && *packets > 0)
            .count()
    };
    println!(
        "{written_in} frames received and {written_out} sent in {:.1?}; modifies under traffic: in {}, out {}, \
         both {} ({refused} refused); counted: {}",
        started.elapsed(),
        under_traffic("swapped-in"),
        under_traffic("swapped-out"),
        under_traffic("swapped-both"),
        want.iter()
            .map(|(name, _)| format!("{name} {:?}", end.get(*name).map(counts)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, want) in want {
        let got = count_of(&end, name)?;
        ensure!(
            got == want,
            "{name} counted {got:?}, expected {want:?}: frames were lost or counted twice \
             across {} modifies",
            under_traffic(name)
        );
    }
    for (name, _) in swapped {
        ensure!(
            under_traffic(name) >= 5,
            "only {} modifies of {name} happened under traffic: {swaps:?}",
            under_traffic(name)
        );
    }
    let logged = setup
        .daemon
        .log()
        .matches("modified session \"swapped-")
        .count();
    ensure!(
        logged == swaps.len(),
        "the daemon logged {logged} modifies of {}",
        swaps.len()
    );
    Ok(())
}

/// 257 `tc in` sessions of one shape (`udp dst port P`) are one group in the chain's
/// first program. A session of another shape (`tcp dst port 80`) joins no group: it
/// goes into a program of its own at the end of the chain rather than having the
/// first program, with its 257 sessions, made again (about 45 ms a direction at 4,096
/// sessions). The first program on the link stays the very one, through that `new`
/// and its `stop`, and every session counts exactly.
#[test]
fn a_new_shape_beside_a_large_group_gets_a_program_of_its_own() -> anyhow::Result<()> {
    require_root(TEST);
    const SESSIONS: u16 = 257;
    const BASE: u16 = 7300;
    const ODD_PORT: u16 = 80;
    let setup = setup("hooks-spread")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    new_session(client, "all", interface, At::Socket, "")?;
    let name = |i: u16| format!("grp-{i:03}");
    for i in 0..SESSIONS {
        new_session(
            client,
            &name(i),
            interface,
            At::TcIn,
            &format!("udp dst port {}", BASE + i),
        )?;
    }
    let first_program = || -> anyhow::Result<Vec<u32>> { Ok(tcx_on_b(rig)?.0.programs) };
    let before = first_program()?;
    ensure!(before.len() == 1, "tcx ingress programs: {before:?}");
    new_session(
        client,
        "odd",
        interface,
        At::TcIn,
        &format!("tcp dst port {ODD_PORT}"),
    )?;
    let after_new = first_program()?;
    ensure!(
        after_new == before,
        "the first program was made again for a session of another shape: tcx ingress \
         programs {before:?} before, {after_new:?} after"
    );
    let (grouped, odd) = (rig::udp_a_to_b(BASE + 5, 20), rig::tcp_syn_a_to_b(ODD_PORT));
    let sender = rig.sender_a()?;
    sender.send_n(&grouped, 2)?;
    sender.send_n(&odd, 3)?;
    client.settle("all", 5, ARRIVAL, QUIET)?;
    let polled = poll(client)?;
    for (session, want) in [
        (name(5), times(&grouped, 2)),
        ("odd".to_owned(), times(&odd, 3)),
        (name(6), (0, 0)),
    ] {
        let got = count_of(&polled, &session)?;
        ensure!(got == want, "{session}: {got:?}, expected {want:?}");
    }
    client.sessions(&["stop", "odd"])?;
    let after_stop = first_program()?;
    ensure!(
        after_stop == before,
        "the first program was made again when the session of another shape stopped: \
         {before:?} before, {after_stop:?} after"
    );
    sender.send_n(&grouped, 1)?;
    client.settle("all", 6, ARRIVAL, QUIET)?;
    let got = count_of(&poll(client)?, &name(5))?;
    ensure!(
        got == times(&grouped, 3),
        "{} after the stop: {got:?}, expected {:?}",
        name(5),
        times(&grouped, 3)
    );
    Ok(())
}
