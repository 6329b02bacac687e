//! Sessions on links as they are: raw-IP links (tun), `interface any`, and interfaces
//! renamed or moved to another namespace under running sessions, each held to tcpdump
//! on the same interfaces.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use capstats_common::protocol::Session;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Setup};
use capstats_tests::daemon::xdp::{Attachment, ForeignXdp, XdpMode};
use capstats_tests::frame::{Ethernet, Ipv4, VlanTag, ethertype};
use capstats_tests::link::Tun;
use capstats_tests::require_root;
use capstats_tests::tcpdump::{Recorded, Tcpdump};

const TEST: &str = "daemon_links";
/// How long packets may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
const QUIET: Duration = Duration::from_millis(100);

fn recorded(r: &Recorded) -> (u64, u64) {
    (
        r.lengths.len() as u64,
        r.lengths.iter().map(|&l| u64::from(l)).sum(),
    )
}

/// XDP on a raw-IP link reads the IP header at offset 0, as tcpdump's program for
/// `LINKTYPE_RAW` does: every hook counts what tcpdump records on the tun device.
#[test]
fn every_hook_counts_what_tcpdump_sees_on_a_tun_device() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-tun")?;
    let ns = &setup.rig.ns_b;
    let tun = Tun::create(ns, "tun0")?;
    let from = Ipv4Addr::new(10, 9, 0, 9);
    let other = Ipv4Addr::new(10, 9, 0, 7);
    let to = Ipv4Addr::new(10, 9, 0, 2);
    let expressions = [("udp", "udp"), ("host", "ip host 10.9.0.9"), ("all", "")];
    let dir = tempfile_dir()?;
    let mut dumps = Vec::new();
    for (tag, expression) in expressions {
        dumps.push(Tcpdump::start(
            ns,
            "tun0",
            expression,
            &dir.join(&format!("{tag}.pcap")),
        )?);
    }
    let hooks: [(&str, &[&str]); 3] = [
        ("xdp", &["hook", "xdp"]),
        ("sock", &["hook", "socket"]),
        ("tc", &["hook", "tc", "direction", "in"]),
    ];
    for (hook, words) in hooks {
        for (tag, expression) in expressions {
            let name = format!("{hook}-{tag}");
            let mut args = vec!["new", &name, "interface", "tun0"];
            args.extend_from_slice(words);
            args.extend(["filter", expression]);
            setup.client.ok(&args)?;
        }
    }
    for seq in 0..10u16 {
        tun.send(&Ipv4::new(from, to).udp(40000, 53, &vec![7; 20 + usize::from(seq)]))?;
    }
    for seq in 0..5u16 {
        tun.send(&Ipv4::new(other, to).icmp_echo(false, 1, seq, &[1; 30]))?;
    }
    let mut oracle = Vec::new();
    for ((tag, _), dump) in expressions.iter().zip(dumps) {
        // tcpdump's ring is read after the sessions settle: give it the same time.
        std::thread::sleep(Duration::from_millis(300));
        oracle.push((*tag, recorded(&dump.stop()?)));
    }
    let expected = [("udp", 10), ("host", 10), ("all", 15)];
    for ((tag, want), (_, got)) in expected.iter().zip(&oracle) {
        ensure!(
            got.0 == *want,
            "tcpdump {tag}: {got:?}, expected {want} packets"
        );
    }
    let mut failures = Vec::new();
    for (hook, _) in hooks {
        for (tag, want) in &oracle {
            let name = format!("{hook}-{tag}");
            let session = setup.client.settle(&name, want.0, ARRIVAL, QUIET);
            let got = session.as_ref().map(counts).unwrap_or_default();
            println!("{name:>10}: {got:?}, tcpdump {want:?}");
            if got != *want {
                failures.push(format!("{name}: {got:?}, tcpdump {want:?}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "counts differ from tcpdump: {failures:?}"
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<capstats_tests::scratch::ScratchDir> {
    capstats_tests::scratch::ScratchDir::new("links-dumps")
}

/// `interface any` counts as `tcpdump -i any` does: every interface of the namespace,
/// one made after the session too, both directions, loopback's packets once, bytes
/// with tcpdump's cooked header (`LINUX_SLL2`, 20 bytes) in place of the link's.
#[test]
fn interface_any_counts_what_tcpdump_any_records() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-any")?;
    let ns = &setup.rig.ns_b;
    ns.ip(&["link", "set", "lo", "up"])?;
    let expressions = [
        ("all", ""),
        ("udp", "udp"),
        ("in", "inbound"),
        ("out", "outbound"),
        ("host", "ip host 10.9.0.1"),
        ("dns", "udp port 53"),
        ("lo", "ifindex 1"),
    ];
    let dir = tempfile_dir()?;
    let mut dumps = Vec::new();
    for (tag, expression) in expressions {
        dumps.push(Tcpdump::start(
            ns,
            "any",
            expression,
            &dir.join(&format!("any-{tag}.pcap")),
        )?);
    }
    for (tag, expression) in expressions {
        setup
            .client
            .ok(&["new", tag, "interface", "any", "filter", expression])?;
    }
    let shown = setup.client.show("all")?;
    ensure!(
        shown.up && shown.interface == "any",
        "a session on any: {shown:?}"
    );
    // Into veth-b and out of it.
    setup.rig.sender_a()?.send_n(&rig::udp_a_to_b(53, 60), 10)?;
    setup
        .rig
        .sender_b()?
        .send_n(&rig::udp_b_to_a(9999, 100), 7)?;
    // 802.1Q-tagged: the kernel takes the tag out; tcpdump -i any does not put it back.
    let tagged = Ethernet::new(rig::MAC_B, rig::MAC_A)
        .tagged(VlanTag::dot1q(7))
        .frame(
            ethertype::IPV4,
            &Ipv4::new(rig::IP_A, rig::IP_B).udp(40000, 53, &[4; 50]),
        );
    setup.rig.sender_a()?.send_n(&tagged, 4)?;
    // An interface made after the sessions: counted there too.
    let tun = Tun::create(ns, "tun1")?;
    for seq in 0..5u16 {
        tun.send(
            &Ipv4::new(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2))
                .icmp_echo(false, 1, seq, &[3; 40]),
        )?;
    }
    // Loopback: each datagram passes twice there (leaving, arriving), shown once.
    ns.run(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let listener = std::net::UdpSocket::bind("127.0.0.1:5300")?;
        for _ in 0..3 {
            socket.send_to(&[9; 33], "127.0.0.1:5300")?;
        }
        drop(listener);
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    for ((tag, _), dump) in expressions.iter().zip(dumps) {
        let want = recorded(&dump.stop()?);
        let got = counts(&setup.client.settle(tag, want.0, ARRIVAL, QUIET)?);
        println!("{tag:>5}: {got:?}, tcpdump -i any {want:?}");
        if got != want {
            failures.push(format!("{tag}: {got:?}, tcpdump {want:?}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "counts differ from tcpdump -i any: {failures:?}"
    );
    let all = counts(&setup.client.show("all")?);
    ensure!(
        all.0 >= 10 + 7 + 4 + 5 + 3,
        "every interface and both directions: only {all:?}"
    );

    // tc and xdp attach to one interface: refused, naming the socket hook.
    for hook in ["tc", "xdp"] {
        let refused = setup
            .client
            .fails(&["new", "x", "interface", "any", "hook", hook, "udp"])?;
        ensure!(
            refused.stderr.contains("socket hook") || refused.stderr.contains("hook socket"),
            "hook {hook} on any: {refused:?}"
        );
    }
    // A link-layer address in the cooked header: libpcap filters that in user space.
    let refused = setup
        .client
        .fails(&["new", "x", "interface", "any", "ether[6:2] = 1"])?;
    ensure!(
        refused.stderr.contains("user space"),
        "a load of the cooked header's address: {refused:?}"
    );
    ensure!(
        setup.client.poll()?.len() == expressions.len(),
        "a refused session was made"
    );
    // Changed, and restored by another daemon: still every interface.
    setup.client.ok(&["modify", "dns", "udp port 9999"])?;
    let setup = setup.restart("daemon2.log", |_| Ok(()))?;
    wait_all(&setup, "up after a restart", |s| s.up)?;
    let dns = counts(&setup.client.show("dns")?);
    setup
        .rig
        .sender_b()?
        .send_n(&rig::udp_b_to_a(9999, 100), 3)?;
    let after = counts(&setup.client.settle("dns", dns.0 + 3, ARRIVAL, QUIET)?);
    ensure!(
        after == (dns.0 + 3, dns.1 + 3 * (20 + 20 + 8 + 100)),
        "after modify and restart: {dns:?} then {after:?}"
    );
    Ok(())
}

/// One session per hook, each counting the test's frames.
const HOOKS: [(&str, &[&str]); 3] = [
    ("sock", &["hook", "socket"]),
    ("tc-in", &["hook", "tc", "direction", "in"]),
    ("xdp", &["hook", "xdp"]),
];

fn start_hook_sessions(setup: &Setup) -> anyhow::Result<()> {
    let interface = setup.rig.interface().to_owned();
    for (name, hook) in HOOKS {
        let mut args = vec!["new", name, "interface", &interface];
        args.extend_from_slice(hook);
        args.extend(["filter", "udp port 53"]);
        setup.client.ok(&args)?;
    }
    Ok(())
}

/// Sends `n` frames A to B and waits until every session has counted `total`.
fn send_and_settle(setup: &Setup, n: u64, total: u64) -> anyhow::Result<()> {
    let frame = rig::udp_a_to_b(53, 60);
    setup.rig.sender_a()?.send_n(&frame, n)?;
    for (name, _) in HOOKS {
        let session = setup.client.settle(name, total, ARRIVAL, QUIET)?;
        ensure!(
            counts(&session) == (total, total * frame.len() as u64),
            "{name} after {total} frames: {session:?}"
        );
    }
    Ok(())
}

/// Sends `n` frames A to B and checks, after they had time to arrive, that no
/// session counted them (each still at `total`).
fn send_uncounted(setup: &Setup, n: u64, total: u64) -> anyhow::Result<()> {
    let frame = rig::udp_a_to_b(53, 60);
    setup.rig.sender_a()?.send_n(&frame, n)?;
    std::thread::sleep(Duration::from_millis(500));
    for session in setup.client.poll()? {
        ensure!(
            counts(&session) == (total, total * frame.len() as u64),
            "{} counted frames while down: {session:?}",
            session.name
        );
    }
    Ok(())
}

/// Polls until `check` holds for every session.
fn wait_all(
    setup: &Setup,
    what: &str,
    check: impl Fn(&Session) -> bool,
) -> anyhow::Result<Vec<Session>> {
    let deadline = std::time::Instant::now() + ARRIVAL;
    loop {
        let sessions = setup.client.poll()?;
        if sessions.iter().all(&check) {
            return Ok(sessions);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "sessions not all {what} within {ARRIVAL:?}: {sessions:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A renamed interface: its sessions follow it (by index), show the new name, stay
/// up and count on; the interface's own state is reported (down, then up again).
#[test]
fn sessions_follow_a_renamed_interface() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-rename")?;
    start_hook_sessions(&setup)?;
    send_and_settle(&setup, 10, 10)?;
    let ns = &setup.rig.ns_b;
    ns.rename_link("veth-b", "lan0")?;
    let sessions = wait_all(&setup, "on lan0, up", |s| s.interface == "lan0" && s.up)?;
    ensure!(
        sessions.iter().all(|s| counts(s).0 == 10),
        "counters after the rename: {sessions:?}"
    );
    send_and_settle(&setup, 15, 25)?;
    let log = setup.daemon.log();
    ensure!(
        log.contains("veth-b was renamed lan0"),
        "the log does not say the sessions followed the rename:\n{log}"
    );
    // The interface's own state: down, then up again, under counting sessions.
    ns.ip(&["link", "set", "lan0", "down"])?;
    wait_all(&setup, "shown with their link down", |s| {
        s.up && s.link.as_deref() == Some("down")
    })?;
    let list = setup.client.ok(&["list"])?;
    ensure!(
        list.contains("up (link down)"),
        "`list` does not show the link down:\n{list}"
    );
    ns.ip(&["link", "set", "lan0", "up"])?;
    wait_all(&setup, "shown with their link up", |s| {
        s.up && s.link.as_deref() == Some("up")
    })?;
    Ok(())
}

/// Renamed while no daemon ran: the next daemon shows the sessions down, and down
/// means not counting (the tc and XDP links it finds pinned are removed); when an
/// interface of their name returns they count again.
#[test]
fn a_rename_while_no_daemon_runs_leaves_nothing_counting_down() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-rename-restart")?;
    start_hook_sessions(&setup)?;
    send_and_settle(&setup, 10, 10)?;
    let setup = setup.restart("daemon2.log", |rig| rig.ns_b.rename_link("veth-b", "lan0"))?;
    wait_all(&setup, "down", |s| !s.up && s.link.is_none())?;
    send_uncounted(&setup, 5, 10)?;
    let ns = &setup.rig.ns_b;
    ns.rename_link("lan0", "veth-b")?;
    wait_all(&setup, "up again", |s| s.up)?;
    send_and_settle(&setup, 15, 25)?;
    Ok(())
}

/// Moved to another namespace: the sessions stop counting (tc and XDP included, whose
/// programs would follow the interface there), show down, keep their counters, and
/// count again when it comes back.
#[test]
fn an_interface_moved_away_stops_its_sessions_until_it_returns() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-move")?;
    let elsewhere = capstats_tests::netns::NetNs::create("links-move-c")?;
    start_hook_sessions(&setup)?;
    send_and_settle(&setup, 10, 10)?;
    let ns = &setup.rig.ns_b;
    ns.move_link("veth-b", &elsewhere)?;
    wait_all(&setup, "down", |s| !s.up)?;
    // Frames still reach veth-b, in the other namespace: nobody here counts them.
    send_uncounted(&setup, 10, 10)?;
    let log = setup.daemon.log();
    ensure!(
        log.contains(
            "was deleted or moved to another namespace: \"sock\", \"tc-in\", \"xdp\" stopped"
        ),
        "the log does not say the interface left:\n{log}"
    );
    elsewhere.move_link("veth-b", ns)?;
    wait_all(&setup, "up again", |s| s.up)?;
    send_and_settle(&setup, 5, 15)?;
    Ok(())
}

/// Generic XDP copies packets that lack headroom, and the copy loses its link-layer
/// header length: tc ingress then sees packets without their Ethernet header (on a
/// bridge, beside a generic XDP session, tc ingress counted 0 of 10 with a filter and
/// every packet 14 bytes short without). The combination is refused, either way
/// round, saying why; tc egress is unaffected and allowed.
#[test]
fn generic_xdp_and_tc_ingress_are_not_combined() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-generic")?;
    let ns = &setup.rig.ns_b;
    ns.ip(&["link", "add", "br0", "type", "bridge"])?;
    ns.ip(&["link", "set", "veth-b", "master", "br0"])?;
    ns.ip(&["link", "set", "br0", "address", &rig::MAC_B.to_string()])?;
    ns.ip(&["link", "set", "br0", "up"])?;
    let client = &setup.client;
    client.ok(&["new", "sock", "interface", "br0", "udp port 9999"])?;
    for (name, expression) in [("tc", "udp port 9999"), ("tc-all", "")] {
        client.ok(&[
            "new",
            name,
            "interface",
            "br0",
            "hook",
            "tc",
            "direction",
            "in",
            expression,
        ])?;
    }
    let refused = client.fails(&["new", "xdp", "interface", "br0", "hook", "xdp", "udp"])?;
    ensure!(
        refused.stderr.contains("generic mode") && refused.stderr.contains("tc ingress"),
        "an XDP session in generic mode beside tc ingress: {refused:?}"
    );
    ensure!(
        client.poll()?.len() == 3,
        "the refused session stayed: {:?}",
        client.poll()?
    );
    let frame = rig::udp_a_to_b(9999, 60);
    let len = frame.len() as u64;
    setup.rig.sender_a()?.send_n(&frame, 10)?;
    for name in ["sock", "tc", "tc-all"] {
        let got = counts(&client.settle(name, 10, ARRIVAL, QUIET)?);
        ensure!(got == (10, 10 * len), "{name}: {got:?}");
    }

    // The other way round: generic XDP first, then tc ingress refused, egress not.
    client.ok(&["stop", "tc"])?;
    client.ok(&["stop", "tc-all"])?;
    client.ok(&[
        "new",
        "xdp",
        "interface",
        "br0",
        "hook",
        "xdp",
        "udp port 9999",
    ])?;
    let mode = client.show("xdp")?.mode;
    ensure!(
        mode.map(|m| m.as_str()) == Some("generic"),
        "XDP on a bridge: {mode:?}"
    );
    let refused = client.fails(&[
        "new",
        "tc",
        "interface",
        "br0",
        "hook",
        "tc",
        "direction",
        "both",
        "udp",
    ])?;
    ensure!(
        refused.stderr.contains("generic mode") && refused.stderr.contains("\"xdp\""),
        "tc ingress beside a generic XDP session: {refused:?}"
    );
    client.ok(&[
        "new",
        "tc-out",
        "interface",
        "br0",
        "hook",
        "tc",
        "direction",
        "out",
        "udp",
    ])?;
    setup.rig.sender_a()?.send_n(&frame, 10)?;
    ensure!(counts(&client.settle("xdp", 10, ARRIVAL, QUIET)?) == (10, 10 * len));
    ensure!(counts(&client.settle("sock", 20, ARRIVAL, QUIET)?) == (20, 20 * len));

    // A generic XDP program capstats did not attach breaks tc ingress the same way.
    client.ok(&["stop", "xdp"])?;
    let br0 = capstats_tests::link::Link::find(ns, "br0", rig::MAC_B)?;
    let foreign_pins = capstats_tests::daemon::DaemonSpec::new(
        setup.scratch.join("none"),
        setup.scratch.join("foreign"),
    )
    .pin_guard();
    let foreign = ForeignXdp::attach(
        ns,
        &br0,
        Attachment::Link(XdpMode::Generic),
        foreign_pins.path(),
    )?;
    let refused = client.fails(&[
        "new",
        "tc",
        "interface",
        "br0",
        "hook",
        "tc",
        "direction",
        "in",
        "udp",
    ])?;
    ensure!(
        refused.stderr.contains("capstats did not attach"),
        "tc ingress beside a foreign generic XDP program: {refused:?}"
    );
    drop(foreign);
    client.ok(&[
        "new",
        "tc",
        "interface",
        "br0",
        "hook",
        "tc",
        "direction",
        "in",
        "udp",
    ])?;
    Ok(())
}

/// Loopback: an Ethernet link (a zeroed header) where XDP runs generically; every hook
/// counts each datagram once, as `tcpdump -i lo` records it. tc ingress and generic
/// XDP do not go together there (loopback has a link-layer header): tc first, then
/// XDP in its place.
#[test]
fn every_hook_counts_what_tcpdump_sees_on_loopback() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-lo")?;
    let ns = &setup.rig.ns_b;
    ns.ip(&["link", "set", "lo", "up"])?;
    let dir = tempfile_dir()?;
    let expression = "udp port 5301";
    let new = |name: &str, words: &[&str]| {
        let mut args = vec!["new", name, "interface", "lo"];
        args.extend_from_slice(words);
        args.extend(["filter", expression]);
        setup.client.ok(&args).map(drop)
    };
    new("sock", &["hook", "socket"])?;
    new("tc", &["hook", "tc", "direction", "in"])?;
    let mut failures = Vec::new();
    let mut before = (0, 0);
    for (round, hook) in [(1, "tc"), (2, "xdp")] {
        if hook == "xdp" {
            setup.client.ok(&["stop", "tc"])?;
            new("xdp", &["hook", "xdp"])?;
            ensure!(
                setup.client.show("xdp")?.mode.map(|m| m.as_str()) == Some("generic"),
                "XDP on loopback runs generically"
            );
        }
        let dump = Tcpdump::start(ns, "lo", expression, &dir.join(&format!("lo{round}.pcap")))?;
        ns.run(|| {
            let listener = std::net::UdpSocket::bind("127.0.0.1:5301")?;
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            for size in [10, 200, 1000, 3000] {
                socket.send_to(&vec![1; size], "127.0.0.1:5301")?;
            }
            drop(listener);
            Ok(())
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let want = recorded(&dump.stop()?);
        ensure!(want.0 == 4, "tcpdump -i lo: {want:?}");
        let got = counts(&setup.client.settle(hook, 4, ARRIVAL, QUIET)?);
        let sock = counts(&setup.client.settle("sock", before.0 + 4, ARRIVAL, QUIET)?);
        let sock_round = (sock.0 - before.0, sock.1 - before.1);
        before = sock;
        println!("{hook:>4}: {got:?}, socket {sock_round:?}, tcpdump -i lo {want:?}");
        if got != want || sock_round != want {
            failures.push(format!(
                "{hook}: {got:?}, socket {sock_round:?}, tcpdump {want:?}"
            ));
        }
    }
    ensure!(failures.is_empty(), "on loopback: {failures:?}");
    Ok(())
}
