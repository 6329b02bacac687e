//! The socket hook (the default) end to end, counting live traffic exactly: `modify`
//! under a steady stream, 64 sessions at once on one interface, an interface that
//! disappears, and loopback.
//!
//! Each test has its own rig (namespaces A and B joined by a quiet veth pair, see
//! `capstats_tests::daemon::rig`), runs `capstats -d` in B and counts on B's end, and
//! writes its frames with an AF_PACKET socket on A's end. Nothing else is on the link,
//! so a session counting every frame (`all`) says when everything has arrived.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Sender, Setup};
use capstats_tests::frame::MacAddr;
use capstats_tests::joined;
use capstats_tests::link::VethPair;
use capstats_tests::require_root;

const TEST: &str = "daemon_socket";
/// How long frames may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
const QUIET: Duration = Duration::from_millis(100);

fn setup(tag: &str) -> anyhow::Result<Setup> {
    Setup::start(tag)
}

/// 30,000 UDP frames at 10,000 a second from A; meanwhile one session's filter is
/// swapped again and again between equivalent expressions. It must count every frame
/// exactly once, like a session left alone.
#[test]
fn modify_under_traffic_counts_every_frame_exactly_once() -> anyhow::Result<()> {
    require_root(TEST);
    const FRAMES: u64 = 30_000;
    const PER_SECOND: u32 = 10_000;
    const FILTERS: [&str; 3] = ["udp or tcp", "ip and udp", "udp"];
    let started = Instant::now();
    let setup = setup("modify")?;
    let (client, daemon, rig) = (&setup.client, &setup.daemon, &setup.rig);
    let interface = rig.interface();
    for (name, filter) in [("swapped", "udp"), ("steady", "udp"), ("all", "")] {
        client.ok(&["new", name, "interface", interface, "filter", filter])?;
    }
    let frame = rig::udp_a_to_b(9999, 18);
    let sender = rig.sender_a()?;

    // (filter, packets counted when the modify answered)
    let mut swaps: Vec<(&str, u64)> = Vec::new();
    let sent_in = std::thread::scope(|scope| -> anyhow::Result<Duration> {
        let stream = scope.spawn(|| {
            sender.send_paced(
                std::iter::repeat_n(frame.as_slice(), FRAMES as usize),
                PER_SECOND,
            )
        });
        while !stream.is_finished() {
            let filter = FILTERS[swaps.len() % FILTERS.len()];
            let session = match client.sessions(&["modify", "swapped", filter])?.as_slice() {
                [session] => session.clone(),
                other => anyhow::bail!("modify printed {} sessions", other.len()),
            };
            ensure!(
                session.filter == filter,
                "modify answered with filter {:?}",
                session.filter
            );
            swaps.push((filter, counts(&session).0));
            std::thread::sleep(Duration::from_millis(100));
        }
        joined(stream)
    })?;

    let all = client.settle("all", FRAMES, ARRIVAL, QUIET)?;
    let swapped = client.show("swapped")?;
    let steady = client.show("steady")?;
    let want = (FRAMES, FRAMES * frame.len() as u64);
    let under_traffic = swaps
        .iter()
        .filter(|(_, packets)| (1..FRAMES).contains(packets))
        .count();
    println!(
        "{FRAMES} frames of {} bytes written in {sent_in:.2?}; {} modifies, {under_traffic} of them \
         while frames were arriving; counted: swapped {:?}, steady {:?}, all {:?} ({:.1?} in all)",
        frame.len(),
        swaps.len(),
        counts(&swapped),
        counts(&steady),
        counts(&all),
        started.elapsed()
    );
    println!("modifies (filter, packets so far): {swaps:?}");
    ensure!(
        counts(&all) == want && counts(&steady) == want,
        "the link carried {:?} (session all) and an unmodified udp session counted {:?}; \
         {want:?} were written",
        counts(&all),
        counts(&steady)
    );
    ensure!(
        counts(&swapped) == want,
        "the session modified {} times counted {:?}, expected {want:?}: frames were counted \
         twice or lost across the swaps",
        swaps.len(),
        counts(&swapped)
    );
    ensure!(
        under_traffic >= 5,
        "only {under_traffic} modifies happened while frames were arriving: the test did not \
         test what it should ({swaps:?})"
    );
    ensure!(
        swapped.filter == swaps.last().map_or("", |s| s.0),
        "the session's filter is {:?} after the last modify",
        swapped.filter
    );
    let logged = daemon.log().matches("modified session \"swapped\"").count();
    ensure!(
        logged == swaps.len(),
        "the daemon logged {logged} modifies of {}",
        swaps.len()
    );
    Ok(())
}

/// 64 sessions on one interface, session i counting `udp dst port 5000+i`, with i + 1
/// frames of a size of its own sent to each port, interleaved; and overlapping
/// sessions beside them. Every count must be exact.
#[test]
fn sixty_four_sessions_on_one_interface_count_exactly() -> anyhow::Result<()> {
    require_root(TEST);
    const SESSIONS: u16 = 64;
    const BASE_PORT: u16 = 5000;
    const SYNS: u64 = 7;
    let started = Instant::now();
    let setup = setup("64")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();

    // name, filter, expected (packets, bytes)
    let mut want: Vec<(String, String, (u64, u64))> = Vec::new();
    let frames: Vec<Vec<u8>> = (0..SESSIONS)
        .map(|i| rig::udp_a_to_b(BASE_PORT + i, usize::from(i)))
        .collect();
    let sent = |i: u16| u64::from(i) + 1;
    for (i, frame) in (0..SESSIONS).zip(&frames) {
        want.push((
            format!("port-{:02}", i),
            format!("udp dst port {}", BASE_PORT + i),
            (sent(i), sent(i) * frame.len() as u64),
        ));
    }
    let sum = |range: std::ops::Range<u16>| {
        range.fold((0, 0), |(p, b), i| {
            (
                p + sent(i),
                b + sent(i) * frames[usize::from(i)].len() as u64,
            )
        })
    };
    let syn = rig::tcp_syn_a_to_b(80);
    let udp = sum(0..SESSIONS);
    let syns = (SYNS, SYNS * syn.len() as u64);
    let half = SESSIONS / 2;
    want.extend([
        ("udp".to_owned(), "udp".to_owned(), udp),
        (
            "all".to_owned(),
            String::new(),
            (udp.0 + syns.0, udp.1 + syns.1),
        ),
        (
            "low-half".to_owned(),
            format!("udp dst portrange {BASE_PORT}-{}", BASE_PORT + half - 1),
            sum(0..half),
        ),
        ("tcp".to_owned(), "tcp".to_owned(), syns),
        ("none".to_owned(), "icmp".to_owned(), (0, 0)),
    ]);
    for (name, filter, _) in &want {
        client.ok(&["new", name, "interface", interface, "filter", filter])?;
    }
    let created = started.elapsed();

    // Round r writes one frame to each port i >= r: port i gets i + 1 frames.
    let sender = rig.sender_a()?;
    for round in 0..SESSIONS {
        for (_, frame) in (0..SESSIONS).zip(&frames).filter(|(i, _)| *i >= round) {
            sender.send(frame)?;
        }
        if u64::from(round) < SYNS {
            sender.send(&syn)?;
        }
    }
    let total = want.iter().find(|w| w.0 == "all").expect("listed").2;
    client.settle("all", total.0, ARRIVAL, QUIET)?;
    let polled = client.poll()?;

    let mut failures = Vec::new();
    for (name, filter, expected) in &want {
        let Some(session) = polled.iter().find(|s| &s.name == name) else {
            failures.push(format!("session {name} is missing from poll"));
            continue;
        };
        if counts(session) != *expected || session.filter != *filter || !session.up {
            failures.push(format!(
                "{name} ({filter:?}): counted {:?}, expected {expected:?} (up: {})",
                counts(session),
                session.up
            ));
        }
    }
    println!(
        "{} sessions created in {created:.1?}; {} frames; all exact: {}; {:.1?} in all",
        want.len(),
        total.0,
        failures.is_empty(),
        started.elapsed()
    );
    for (name, filter, expected) in want.iter().skip(usize::from(SESSIONS) - 2) {
        println!("  {name:<9} {filter:<32} expected {expected:?}");
    }
    ensure!(
        polled.len() == want.len(),
        "poll reports {} sessions, {} were created",
        polled.len(),
        want.len()
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Deleting the veth under a session leaves the session listed, down, with its
/// counters; a session on another interface carries on.
#[test]
fn a_vanished_interface_leaves_its_session_down_with_its_counters() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = setup("vanish")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let other = VethPair::create(
        &rig.ns_a,
        ("other-a", MacAddr([2, 0, 0, 0, 0xd1, 0x0a])),
        &rig.ns_b,
        ("other-b", MacAddr([2, 0, 0, 0, 0xd1, 0x0b])),
    )?;
    let interface = rig.interface();
    client.ok(&["new", "doomed", "interface", interface, "filter", "udp"])?;
    client.ok(&["new", "doomed-all", "interface", interface])?;
    client.ok(&[
        "new",
        "survivor",
        "interface",
        &other.b.name,
        "filter",
        "udp",
    ])?;

    let frame = rig::udp_a_to_b(53, 100);
    let len = frame.len() as u64;
    rig.sender_a()?.send_n(&frame, 25)?;
    let other_sender = Sender::on(&rig.ns_a, &other.a)?;
    other_sender.send_n(&frame, 5)?;
    client.settle("doomed-all", 25, ARRIVAL, QUIET)?;
    client.settle("survivor", 5, ARRIVAL, QUIET)?;
    let before = client.show("doomed")?;
    ensure!(
        counts(&before) == (25, 25 * len) && before.up,
        "before: {before:?}"
    );

    rig.ns_b.ip(&["link", "del", interface])?;
    let listed = client.sessions(&["list"])?;
    let find = |name: &str| {
        listed
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("{name} is not listed: {listed:?}"))
    };
    let listed_down = find("doomed")?;
    ensure!(
        !listed_down.up
            && counts(listed_down) == (25, 25 * len)
            && listed_down.interface == interface,
        "after deleting {interface}, list says {listed_down:?}"
    );
    ensure!(
        !find("doomed-all")?.up,
        "doomed-all still up: {:?}",
        find("doomed-all")?
    );
    ensure!(find("survivor")?.up, "survivor went down");
    let text = client.ok(&["list"])?;
    let line = text
        .lines()
        .find(|l| l.starts_with("doomed "))
        .with_context(|| format!("list printed no line for doomed:\n{text}"))?;
    ensure!(
        line.split_whitespace().any(|w| w == "down"),
        "list shows doomed as {line:?}"
    );

    // The survivor counts on; the down session keeps its counters and can be read.
    other_sender.send_n(&frame, 5)?;
    let survivor = client.settle("survivor", 10, ARRIVAL, QUIET)?;
    ensure!(
        counts(&survivor) == (10, 10 * len),
        "survivor: {survivor:?}"
    );
    let polled = client.poll()?;
    ensure!(
        polled
            .iter()
            .any(|s| s.name == "doomed" && counts(s) == (25, 25 * len) && !s.up),
        "poll: {polled:?}"
    );
    // Modifying it fails (its interface is gone), and changes nothing.
    let failed = client.fails(&["modify", "doomed", "tcp"])?;
    ensure!(
        failed.stderr.contains(interface),
        "modify of a down session: {failed}"
    );
    let doomed = client.show("doomed")?;
    ensure!(
        doomed.filter == "udp" && counts(&doomed) == (25, 25 * len) && !doomed.up,
        "after the failed modify: {doomed:?}"
    );
    // Stopping it reports its counters.
    let stopped = client.sessions(&["stop", "doomed"])?;
    ensure!(
        stopped.len() == 1 && counts(&stopped[0]) == (25, 25 * len),
        "stop: {stopped:?}"
    );
    println!(
        "deleted {interface}: doomed listed down with {:?}, survivor counted on to {:?}",
        counts(listed_down),
        counts(&survivor)
    );
    Ok(())
}

/// On a loopback interface a packet socket sees each packet twice, leaving and
/// arriving; tcpdump shows it once (libpcap drops the leaving copy), and so must a
/// socket session: 25 datagrams sent over B's `lo` are 25 packets.
#[test]
fn a_socket_session_on_loopback_counts_each_packet_once() -> anyhow::Result<()> {
    require_root(TEST);
    const DATAGRAMS: u64 = 25;
    let setup = setup("loopback")?;
    let (client, rig) = (&setup.client, &setup.rig);
    rig.ns_b.ip(&["link", "set", "lo", "up"])?;
    client.ok(&["new", "lo-udp", "interface", "lo", "filter", "udp port 9"])?;
    rig.ns_b.run(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for _ in 0..DATAGRAMS {
            socket.send_to(b"loopback", "127.0.0.1:9")?;
        }
        Ok(())
    })?;
    client.settle("lo-udp", DATAGRAMS, ARRIVAL, QUIET)?;
    let session = client.show("lo-udp")?;
    // 8 bytes of payload, UDP 8, IPv4 20, the loopback's Ethernet header 14.
    ensure!(
        counts(&session) == (DATAGRAMS, DATAGRAMS * 50),
        "25 datagrams over lo: {session:?}"
    );
    Ok(())
}
