//! The TC hook end to end: `capstats new NAME interface IF hook tc direction
//! in|out|both [filter] EXPR` counts exactly what the socket hook (tcpdump's view)
//! counts, in each direction; it keeps counting while no daemon runs (`kill -9`, an
//! upgrade); 32 sessions on one interface count exactly and are not disturbed when
//! others come and go; `modify` swaps under traffic lose and double nothing; and bad
//! hooks and directions are refused without a trace.
//!
//! Each test has its own rig (namespaces A and B joined by a quiet veth pair, see
//! `capstats_tests::daemon::rig`), runs `capstats -d` in B and counts on B's end.
//! Frames written on A's end ([`Rig::sender_a`], or tcpreplay in A) arrive at B
//! (received: TC ingress); frames written on B's end with an AF_PACKET socket
//! ([`Rig::sender_b`], or tcpreplay in B) leave from it (sent: TC egress). Nothing else
//! is on the link, so the oracles are exact: the frames the test wrote, the socket
//! hook's count, and sums of both.
//!
//! Every daemon has its own pin directory; the daemons that must leave their TC links
//! counting on a clean stop (the upgrade) run without `--detach-on-exit`, and a
//! [`capstats_tests::daemon::PinDir`] guard removes that directory whatever happens.
//! Which programs run on B's tcx hooks is asked of the kernel ([`tcx`]).
//!
//! All tc sessions of an interface count through one chain of programs per direction
//! (tcx runs at most 63 programs on a hook; 64 sessions in one direction all count;
//! 150 make a chain of three programs).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Session;
use capstats_ebpf::counters::CounterMap;
use capstats_tests::corpus;
use capstats_tests::daemon::rig::{self, IP_A, IP_B, MAC_A, MAC_B, Rig, Sender, Setup};
use capstats_tests::daemon::{Client, Daemon, DaemonSpec};
use capstats_tests::frame::{self, Ethernet, Ipv4, Ipv6, MacAddr, Tcp, VlanTag, ethertype};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;
use capstats_tests::tcx;

const TEST: &str = "daemon_hooks";
/// How long frames may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
const QUIET: Duration = Duration::from_millis(100);

/// Packets and bytes.
type Count = (u64, u64);

fn counts(session: &Session) -> Count {
    (session.packets.unwrap_or(0), session.bytes.unwrap_or(0))
}

fn add(a: Count, b: Count) -> Count {
    (a.0 + b.0, a.1 + b.1)
}

/// `n` copies of `frame`.
fn times(frame: &[u8], n: u64) -> Count {
    (n, n * frame.len() as u64)
}

/// Where a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    TcIn,
    TcOut,
    TcBoth,
    Socket,
}

impl At {
    const ALL: [At; 4] = [At::TcIn, At::TcOut, At::TcBoth, At::Socket];

    fn words(self) -> &'static [&'static str] {
        match self {
            At::TcIn => &["hook", "tc", "direction", "in"],
            At::TcOut => &["hook", "tc", "direction", "out"],
            At::TcBoth => &["hook", "tc", "direction", "both"],
            At::Socket => &["hook", "socket"],
        }
    }

    /// What `list --json` says: hook and direction.
    fn reported(self) -> (&'static str, &'static str) {
        match self {
            At::TcIn => ("tc", "in"),
            At::TcOut => ("tc", "out"),
            At::TcBoth => ("tc", "both"),
            At::Socket => ("socket", "both"),
        }
    }

    /// Ends a session's name.
    fn suffix(self) -> &'static str {
        match self {
            At::TcIn => "in",
            At::TcOut => "out",
            At::TcBoth => "both",
            At::Socket => "sock",
        }
    }
}

/// `new NAME interface IF hook ... filter EXPR`, checking what the daemon answers.
fn new_session(
    client: &Client,
    name: &str,
    interface: &str,
    at: At,
    filter: &str,
) -> anyhow::Result<Session> {
    let mut args = vec!["new", name, "interface", interface];
    args.extend(at.words());
    args.extend(["filter", filter]);
    let session = match client.sessions(&args)?.as_slice() {
        [session] => session.clone(),
        other => bail!("new {name} printed {} sessions", other.len()),
    };
    let (hook, direction) = at.reported();
    ensure!(
        session.hook == hook
            && session.direction == direction
            && session.filter == filter
            && session.up,
        "`{}` answered {session:?}",
        args.join(" ")
    );
    Ok(session)
}

/// `poll --json`, by name.
fn poll(client: &Client) -> anyhow::Result<BTreeMap<String, Session>> {
    Ok(client
        .poll()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect())
}

fn count_of(polled: &BTreeMap<String, Session>, name: &str) -> anyhow::Result<Count> {
    polled
        .get(name)
        .map(counts)
        .with_context(|| format!("session {name} is missing from poll"))
}

/// Waits until `sent` reaches `at_least` (the stream's progress), or fails after
/// `timeout` or when the stream has ended short of it.
fn wait_for(sent: &AtomicU64, at_least: u64, timeout: Duration) -> anyhow::Result<u64> {
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
fn pinned_count(pin_dir: &Path, session: &str) -> anyhow::Result<Count> {
    let path = pin_dir.join(session).join("counters");
    let map = CounterMap::open_pinned(&path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
    let counter = map.read(0)?;
    Ok((counter.packets, counter.bytes))
}

/// The entries of a directory, sorted (empty when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// The programs on B's end's tcx ingress and egress, asked of the kernel.
fn tcx_on_b(rig: &Rig) -> anyhow::Result<(tcx::Attached, tcx::Attached)> {
    let ifindex = rig.veth.b.ifindex;
    rig.ns_b.run(|| {
        Ok((
            tcx::attached(ifindex, true)?,
            tcx::attached(ifindex, false)?,
        ))
    })
}

/// How many programs run on B's end's tcx ingress and egress.
fn tcx_counts(rig: &Rig) -> anyhow::Result<(usize, usize)> {
    let (ingress, egress) = tcx_on_b(rig)?;
    Ok((ingress.programs.len(), egress.programs.len()))
}

fn setup(tag: &str) -> anyhow::Result<Setup> {
    Setup::start(tag)
}

// ---------------------------------------------------------------------------------
// 1. Each direction on known frames, tagged ones included.

/// What a frame carries above its tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Udp4 {
        dport: u16,
        payload: usize,
    },
    Syn4 {
        dport: u16,
    },
    Icmp4 {
        payload: usize,
    },
    Arp,
    Udp6 {
        payload: usize,
    },
    /// An EtherType that is neither IP nor ARP, with a payload.
    Other {
        ethertype: u16,
        payload: usize,
    },
}

/// One kind of frame of test 1, written `n_in` times on A's end and `n_out` times on
/// B's end.
#[derive(Debug, Clone)]
struct Kind {
    name: &'static str,
    tags: Vec<VlanTag>,
    inner: Inner,
    broadcast: bool,
    n_in: u64,
    n_out: u64,
}

const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);
const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);

impl Kind {
    /// The frame from `src` (MAC, IPv4, IPv6) to `dst`.
    fn frame(
        &self,
        (src_mac, src_ip, src_ip6): (MacAddr, Ipv4Addr, Ipv6Addr),
        (dst_mac, dst_ip, dst_ip6): (MacAddr, Ipv4Addr, Ipv6Addr),
    ) -> Vec<u8> {
        let dst_mac = if self.broadcast {
            MacAddr::BROADCAST
        } else {
            dst_mac
        };
        let ethernet = self
            .tags
            .iter()
            .fold(Ethernet::new(dst_mac, src_mac), |e, tag| e.tagged(*tag));
        let ip = Ipv4::new(src_ip, dst_ip);
        match self.inner {
            Inner::Udp4 { dport, payload } => {
                ethernet.frame(ethertype::IPV4, &ip.udp(40000, dport, &vec![7; payload]))
            }
            Inner::Syn4 { dport } => {
                ethernet.frame(ethertype::IPV4, &ip.tcp(&Tcp::syn(40000, dport)))
            }
            Inner::Icmp4 { payload } => ethernet.frame(
                ethertype::IPV4,
                &ip.icmp_echo(false, 1, 1, &vec![8; payload]),
            ),
            Inner::Arp => ethernet.frame(
                ethertype::ARP,
                &frame::arp(false, (src_mac, src_ip), (MacAddr::ZERO, dst_ip)),
            ),
            Inner::Udp6 { payload } => ethernet.frame(
                ethertype::IPV6,
                &Ipv6::new(src_ip6, dst_ip6).udp(40000, 53, &vec![6; payload]),
            ),
            Inner::Other { ethertype, payload } => ethernet.frame(ethertype, &vec![9; payload]),
        }
    }

    fn a_to_b(&self) -> Vec<u8> {
        self.frame((MAC_A, IP_A, IP6_A), (MAC_B, IP_B, IP6_B))
    }

    fn b_to_a(&self) -> Vec<u8> {
        self.frame((MAC_B, IP_B, IP6_B), (MAC_A, IP_A, IP6_A))
    }

    /// The frame as a live filter on B's end sees it. Received (`inbound`): the kernel
    /// has moved an outer 802.1Q or 802.1ad tag into the socket buffer's metadata, and
    /// `len` (skb->len) is 4 bytes short of the wire. Sent: every tag is in the frame.
    fn view(&self, inbound: bool, wire_len: u64) -> View {
        let untagged_on_arrival = inbound
            && self
                .tags
                .first()
                .is_some_and(|t| t.tpid == ethertype::DOT1Q || t.tpid == ethertype::DOT1AD);
        if untagged_on_arrival {
            View {
                meta: self.tags.first().copied(),
                in_frame: self.tags[1..].to_vec(),
                inner: self.inner,
                broadcast: self.broadcast,
                len: wire_len - 4,
            }
        } else {
            View {
                meta: None,
                in_frame: self.tags.clone(),
                inner: self.inner,
                broadcast: self.broadcast,
                len: wire_len,
            }
        }
    }
}

/// A frame as a live-handle filter sees it.
#[derive(Debug, Clone)]
struct View {
    /// The tag the kernel holds in metadata (`vlanp`, `vlan_tci`).
    meta: Option<VlanTag>,
    /// Tags still in the frame, outermost first.
    in_frame: Vec<VlanTag>,
    inner: Inner,
    broadcast: bool,
    /// `len`: skb->len.
    len: u64,
}

impl View {
    /// EtherType at offset 12 is the inner protocol's.
    fn untagged(&self) -> bool {
        self.in_frame.is_empty()
    }

    fn vlan(&self) -> bool {
        self.meta.is_some() || !self.in_frame.is_empty()
    }

    fn outer_vid(&self) -> Option<u16> {
        self.meta
            .or(self.in_frame.first().copied())
            .map(VlanTag::vid)
    }

    fn udp(&self) -> bool {
        matches!(self.inner, Inner::Udp4 { .. } | Inner::Udp6 { .. })
    }

    /// `vlan and udp`: one tag off (from metadata, or else from the frame), then UDP.
    fn vlan_and_udp(&self) -> bool {
        let left_in_frame = if self.meta.is_some() {
            self.in_frame.len()
        } else {
            self.in_frame.len().saturating_sub(1)
        };
        self.vlan() && left_in_frame == 0 && self.udp()
    }
}

/// Test 1's expressions: (short name, expression, what it matches on a live handle).
type Oracle = fn(&View) -> bool;
const EXPRESSIONS: &[(&str, &str, Oracle)] = &[
    ("all", "", |_| true),
    ("udp", "udp", |v| v.untagged() && v.udp()),
    ("tcp80", "tcp port 80", |v| {
        v.untagged() && matches!(v.inner, Inner::Syn4 { dport: 80 })
    }),
    ("icmp", "icmp", |v| {
        v.untagged() && matches!(v.inner, Inner::Icmp4 { .. })
    }),
    ("arp", "arp", |v| v.untagged() && v.inner == Inner::Arp),
    ("vlan", "vlan", View::vlan),
    ("vlan10", "vlan 10", |v| v.outer_vid() == Some(10)),
    ("ip6", "ip6", |v| {
        v.untagged() && matches!(v.inner, Inner::Udp6 { .. })
    }),
    ("len100", "len > 100", |v| v.len > 100),
    ("ip", "ip", |v| {
        v.untagged()
            && matches!(
                v.inner,
                Inner::Udp4 { .. } | Inner::Syn4 { .. } | Inner::Icmp4 { .. }
            )
    }),
    ("notvlan", "not vlan", |v| !v.vlan()),
    ("bcast", "ether broadcast", |v| v.broadcast),
    ("syn", "tcp[tcpflags] & tcp-syn != 0", |v| {
        v.untagged() && matches!(v.inner, Inner::Syn4 { .. })
    }),
    ("vlanudp", "vlan and udp", View::vlan_and_udp),
    ("exp", "ether proto 0x88b5", |v| {
        v.untagged()
            && matches!(
                v.inner,
                Inner::Other {
                    ethertype: 0x88b5,
                    ..
                }
            )
    }),
];

fn kinds() -> Vec<Kind> {
    let kind = |name, tags: &[VlanTag], inner, broadcast, n_in, n_out| Kind {
        name,
        tags: tags.to_vec(),
        inner,
        broadcast,
        n_in,
        n_out,
    };
    let q10 = VlanTag::dot1q(10);
    vec![
        kind(
            "udp :53",
            &[],
            Inner::Udp4 {
                dport: 53,
                payload: 40,
            },
            false,
            11,
            7,
        ),
        kind(
            "udp :5001, 342 bytes",
            &[],
            Inner::Udp4 {
                dport: 5001,
                payload: 300,
            },
            false,
            5,
            3,
        ),
        kind("syn :80", &[], Inner::Syn4 { dport: 80 }, false, 9, 4),
        kind("syn :443", &[], Inner::Syn4 { dport: 443 }, false, 6, 2),
        kind("icmp echo", &[], Inner::Icmp4 { payload: 56 }, false, 4, 8),
        kind("arp who-has (broadcast)", &[], Inner::Arp, true, 3, 5),
        kind("ip6 udp", &[], Inner::Udp6 { payload: 20 }, false, 7, 6),
        // 102 bytes on the wire, 98 in the socket buffer once the tag is in metadata:
        // `len > 100` matches it sent, not received.
        kind(
            "vlan 10 udp :53, 102 bytes",
            &[q10],
            Inner::Udp4 {
                dport: 53,
                payload: 56,
            },
            false,
            8,
            5,
        ),
        kind(
            "vlan 20 syn :80",
            &[VlanTag::dot1q(20)],
            Inner::Syn4 { dport: 80 },
            false,
            5,
            9,
        ),
        kind(
            "802.1ad 100 / vlan 10 udp",
            &[VlanTag::dot1ad(100), q10],
            Inner::Udp4 {
                dport: 53,
                payload: 10,
            },
            false,
            2,
            3,
        ),
        kind(
            "ethertype 0x88b5",
            &[],
            Inner::Other {
                ethertype: 0x88b5,
                payload: 50,
            },
            false,
            3,
            4,
        ),
        kind(
            "vlan 10 prio 3 arp (broadcast)",
            &[q10.priority(3)],
            Inner::Arp,
            true,
            2,
            2,
        ),
    ]
}

/// Writes `n` copies of each frame, interleaved: round r writes every frame that has
/// more than r copies to write.
fn send_interleaved(sender: &Sender, frames: &[(Vec<u8>, u64)]) -> anyhow::Result<u64> {
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

/// On B's end, for each expression, a `tc in`, a `tc out`, a `tc both` and a `socket`
/// session; known frames are written from A (received by B), then from B (sent by B),
/// tagged ones among them. After the received frames: tc in = socket = what the frames
/// should match, tc out = 0, tc both = tc in. After the sent frames: tc in unchanged,
/// tc out = what they should match, tc both = tc in + tc out = socket. Packets and
/// bytes, bytes being wire lengths (a tag the kernel took into metadata counts).
#[test]
fn each_tc_direction_counts_what_the_socket_hook_counts() -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let setup = setup("hooks-dirs")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    let kinds = kinds();
    for (short, expression, _) in EXPRESSIONS {
        for at in At::ALL {
            new_session(
                client,
                &format!("{short}-{}", at.suffix()),
                interface,
                at,
                expression,
            )?;
        }
    }
    let created = started.elapsed();
    let programs = tcx_counts(rig)?;
    // One program per direction counts every session there.
    ensure!(
        programs == (1, 1),
        "tcx programs on {interface} (ingress, egress): {programs:?}"
    );

    // What each expression should count, received and sent.
    let expected = |inbound: bool, oracle: Oracle| -> Count {
        kinds.iter().fold((0, 0), |total, kind| {
            let (frame, n) = if inbound {
                (kind.a_to_b(), kind.n_in)
            } else {
                (kind.b_to_a(), kind.n_out)
            };
            if oracle(&kind.view(inbound, frame.len() as u64)) {
                add(total, times(&frame, n))
            } else {
                total
            }
        })
    };
    let mut failures = Vec::new();
    let mut check = |what: String, got: Count, want: Count| {
        if got != want {
            failures.push(format!("{what}: counted {got:?}, expected {want:?}"));
        }
    };

    // Received by B.
    let to_b: Vec<(Vec<u8>, u64)> = kinds.iter().map(|k| (k.a_to_b(), k.n_in)).collect();
    let received = send_interleaved(&rig.sender_a()?, &to_b)?;
    client.settle("all-in", received, ARRIVAL, QUIET)?;
    client.settle("all-sock", received, ARRIVAL, QUIET)?;
    let after_in = poll(client)?;
    for (short, expression, oracle) in EXPRESSIONS {
        let want = expected(true, *oracle);
        let got = |at: At| count_of(&after_in, &format!("{short}-{}", at.suffix()));
        check(
            format!("{expression:?} tc in, received"),
            got(At::TcIn)?,
            want,
        );
        check(
            format!("{expression:?} socket, received"),
            got(At::Socket)?,
            want,
        );
        check(
            format!("{expression:?} tc out, received"),
            got(At::TcOut)?,
            (0, 0),
        );
        check(
            format!("{expression:?} tc both, received"),
            got(At::TcBoth)?,
            want,
        );
    }

    // Sent by B.
    let to_a: Vec<(Vec<u8>, u64)> = kinds.iter().map(|k| (k.b_to_a(), k.n_out)).collect();
    let sent = send_interleaved(&rig.sender_b()?, &to_a)?;
    client.settle("all-out", sent, ARRIVAL, QUIET)?;
    client.settle("all-sock", received + sent, ARRIVAL, QUIET)?;
    let after_out = poll(client)?;
    let mut rows = Vec::new();
    for (short, expression, oracle) in EXPRESSIONS {
        let (want_in, want_out) = (expected(true, *oracle), expected(false, *oracle));
        let got = |at: At| count_of(&after_out, &format!("{short}-{}", at.suffix()));
        let (tc_in, tc_out, tc_both, socket) = (
            got(At::TcIn)?,
            got(At::TcOut)?,
            got(At::TcBoth)?,
            got(At::Socket)?,
        );
        check(format!("{expression:?} tc in, in all"), tc_in, want_in);
        check(format!("{expression:?} tc out, in all"), tc_out, want_out);
        check(
            format!("{expression:?} tc both = tc in + tc out"),
            tc_both,
            add(tc_in, tc_out),
        );
        check(
            format!("{expression:?} socket = tc in + tc out"),
            socket,
            add(tc_in, tc_out),
        );
        check(
            format!("{expression:?} socket, in all"),
            socket,
            add(want_in, want_out),
        );
        rows.push((*expression, tc_in, tc_out, tc_both, socket));
    }

    println!(
        "{:<30} {:>11} {:>11} {:>11} {:>11}",
        "expression", "tc in", "tc out", "tc both", "socket"
    );
    let shown = |c: Count| format!("{}/{}", c.0, c.1);
    for (expression, tc_in, tc_out, tc_both, socket) in &rows {
        println!(
            "{:<30} {:>11} {:>11} {:>11} {:>11}",
            format!("{expression:?}"),
            shown(*tc_in),
            shown(*tc_out),
            shown(*tc_both),
            shown(*socket)
        );
    }
    println!("(packets/bytes; frames of each kind, received + sent, with their wire length:)");
    for kind in &kinds {
        println!(
            "  {:<32} {:>2} x {:>3} B in, {:>2} x {:>3} B out",
            kind.name,
            kind.n_in,
            kind.a_to_b().len(),
            kind.n_out,
            kind.b_to_a().len()
        );
    }
    println!(
        "{} sessions created in {created:.1?}; {received} frames received, {sent} sent; \
         {} mismatches; {:.1?} in all",
        EXPRESSIONS.len() * At::ALL.len(),
        failures.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        bail!("{} mismatch(es):\n{}", failures.len(), failures.join("\n"));
    }
    // The test tested something: every expression matched frames in each direction.
    for (expression, tc_in, tc_out, ..) in &rows {
        ensure!(
            tc_in.0 > 0 && tc_out.0 > 0,
            "{expression:?} matched {tc_in:?} received and {tc_out:?} sent: the traffic does \
             not test it both ways"
        );
    }
    Ok(())
}

/// Direction expressions on the TC hook: `inbound` and `outbound` read the packet type,
/// which tcpdump's socket sees as `PACKET_OUTGOING` for sent frames. The README says TC
/// sessions have the socket hook's semantics, so a `tc out` session with `outbound`
/// counts every sent frame, and `inbound` none of them; `tc in` the other way round.
/// (At TC egress `skb->pkt_type` is still `PACKET_HOST`: the kernel sets
/// `PACKET_OUTGOING` only on the copy it hands to packet taps, `dev_queue_xmit_nit`.
/// The program on an egress link has to supply it.)
#[test]
fn inbound_and_outbound_on_tc_mean_what_they_mean_for_tcpdump() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = setup("hooks-inout")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    for expression in ["inbound", "outbound"] {
        for at in At::ALL {
            new_session(
                client,
                &format!("{expression}-{}", at.suffix()),
                interface,
                at,
                expression,
            )?;
        }
    }
    new_session(client, "all-both", interface, At::TcBoth, "")?;
    let (to_b, to_a) = (rig::udp_a_to_b(53, 40), rig::udp_b_to_a(53, 60));
    rig.sender_a()?.send_n(&to_b, 3)?;
    rig.sender_b()?.send_n(&to_a, 5)?;
    client.settle("all-both", 8, ARRIVAL, QUIET)?;
    let polled = poll(client)?;
    let (received, sent) = (times(&to_b, 3), times(&to_a, 5));
    let want = [
        ("inbound", At::TcIn, received),
        ("inbound", At::TcOut, (0, 0)),
        ("inbound", At::TcBoth, received),
        ("inbound", At::Socket, received),
        ("outbound", At::TcIn, (0, 0)),
        ("outbound", At::TcOut, sent),
        ("outbound", At::TcBoth, sent),
        ("outbound", At::Socket, sent),
    ];
    let mut failures = Vec::new();
    for (expression, at, want) in want {
        let got = count_of(&polled, &format!("{expression}-{}", at.suffix()))?;
        println!("{expression:<8} {:?}: {got:?} (expected {want:?})", at);
        if got != want {
            failures.push(format!(
                "{expression:?} on {at:?} counted {got:?}, expected {want:?}"
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "3 frames received and 5 sent on {interface}; {} mismatch(es) with tcpdump's \
         semantics:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. The corpus.

/// Replayed on A's end: received by B.
const INBOUND: &[&str] = &[
    "pcap/tcpdump/afs.pcap",                // UDP (AFS/Rx), IP fragments, ICMP
    "pcap/tcpdump/mptcp-v0.pcap",           // TCP with options
    "pcap/tcpdump/of10_s4810.pcap",         // TCP, frames up to 4,170 bytes
    "pcap/tcpdump/of10_pf5240.pcap",        // TCP
    "pcap/tcpdump/vrrp.pcap",               // VRRP over IPv4 and IPv6
    "pcap/tcpdump/various_gre.pcap",        // GRE, 802.1Q vlan 1213
    "pcap/tcpdump/babel_rfc6126bis.pcap",   // IPv6 UDP multicast
    "pcap/tcpdump/NHRP_registration.pcap",  // 802.1Q vlan 100
    "pcap/tcpdump/ldp-common-session.pcap", // 802.1Q vlan 202, TCP and UDP
    "pcap/tcpdump/rpvstp-trunk-native-vid5.pcap", // STP, 802.1Q vlan 1
    "pcap/tcpdump/802.1ad_QinQ.pcap",       // 802.1ad 200 / 802.1Q 2001, ARP
    "pcap/tcpdump/MSTP_Intra-Region_BPDUs.pcap", // 802.1Q vlan 0 (priority tags)
    "pcap/tcpdump/dhcp-rfc4388.pcap",       // DHCP, ARP, ICMP
    "pcap/tcpdump/icmp6-rfc8335.pcap",      // ICMPv6
    "pcap/tcpdump/icmp-rfc8335.pcap",       // ICMP
    "pcap/tcpdump/ssh.pcap",                // TCP port 22
    "pcap/tcpdump/pim-packet-assortment.pcap", // PIM; jumbo frames up to 64 KiB
    "pcap/tcpdump/ptp_ethernet.pcap",       // PTP over Ethernet (0x88f7)
    "pcap/tcpdump/erspan-type-ii-3.pcap",   // GRE/ERSPAN
    "pcap/tcpdump/erspan-type-i-4.pcap",    // GRE/ERSPAN
    "pcap/tcpdump/geonet_v0_and_calm_fast.pcap", // GeoNetworking (0x0707)
    "pcap/tcpdump/bcm-li.pcap",             // UDP (Broadcom LI)
    "pcap/tcpdump/ipx.pcap",                // IPX (802.3 frames)
];

/// Replayed on B's end: sent by B.
const OUTBOUND: &[&str] = &[
    "pcap/tcpdump/bgp-4byte-asn.pcap",          // BGP (TCP 179), ARP
    "pcap/tcpdump/bgp-bgpsec.pcap",             // BGP, frames up to 2,596 bytes
    "pcap/tcpdump/tfo-5c1fa7f9ae91.pcap",       // TCP fast open (SYNs with data)
    "pcap/tcpdump/eapon1.pcap",                 // EAPOL, DHCP, ARP; a 19-byte frame
    "pcap/tcpdump/AoE_Linux.pcap",              // ATA over Ethernet (0x88a2)
    "pcap/tcpdump/DECnet_Phone.pcap",           // DECnet
    "pcap/tcpdump/OSPFv3_with_AH.pcap",         // IPv6 with AH
    "pcap/tcpdump/ipv4_tcp_http_xml.pcap",      // 802.1Q vlan 165, TCP
    "pcap/tcpdump/NHRP-responder-address.pcap", // 802.1Q vlan 79
    "pcap/tcpdump/bgp-evpn.pcap",               // 802.1Q vlan 23
    "pcap/tcpdump/isakmp4500.pcap",             // IKE over UDP 4500, ARP
    "pcap/tcpdump/edns-opts.pcap",              // DNS
    "pcap/tcpdump/LLDP_and_CDP.pcap",           // LLDP, CDP
];

/// (session name, expression, matches some received frame). `all` must stay.
const CORPUS_CASES: &[(&str, &str, bool)] = &[
    ("all", "", true),
    ("ip", "ip", true),
    ("ip6", "ip6", true),
    ("arp", "arp", true),
    ("tcp", "tcp", true),
    ("udp", "udp", true),
    ("icmp", "icmp", true),
    ("icmp6", "icmp6", true),
    ("vlan", "vlan", true),
    ("vlan-100", "vlan 100", true),
    ("vlan-1213", "vlan 1213", true),
    ("vlan-202", "vlan 202", true),
    ("vlan-165", "vlan 165", false),
    ("qinq", "vlan 200 and vlan 2001", true),
    ("vlan-ip", "vlan and ip", true),
    ("vlan-udp", "vlan and udp", true),
    ("not-vlan", "not vlan", true),
    ("fragments", "ip[6:2] & 0x3fff != 0", true),
    ("low-ports", "portrange 1-1024", true),
    ("ssh", "tcp port 22", true),
    ("bgp", "tcp port 179", false),
    ("dns", "udp port 53", false),
    ("syn", "tcp[tcpflags] & tcp-syn != 0", true),
    ("len-1000", "len > 1000", true),
    ("less", "less 100", true),
    ("broadcast", "ether broadcast", true),
    ("ip-mcast", "ip multicast", true),
    ("ptp", "ether proto 0x88f7", true),
    ("aoe", "ether proto 0x88a2", false),
    ("neither", "not ip and not ip6 and not arp", true),
];

/// Frames per second tcpreplay sends at.
const REPLAY_PPS: u32 = 5000;

/// The corpus replayed through the pair: for each expression a `tc in`, a `tc both`
/// and a `socket` session on B. After the received part (replayed into A): tc in =
/// socket = tc both, and `all` = every frame tcpreplay sent with its bytes. After the
/// sent part (replayed on B): tc in unchanged, tc both = socket.
#[test]
fn corpus_replay_counts_the_same_on_tc_as_on_the_socket() -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let dir = corpus::dir()?;
    let files = |list: &[&str]| -> Vec<PathBuf> { list.iter().map(|f| dir.join(f)).collect() };
    let (inbound, outbound) = (files(INBOUND), files(OUTBOUND));
    let mut in_files = (0, 0);
    for file in &inbound {
        in_files = add(in_files, corpus::records(file)?);
    }
    let mut out_files = (0, 0);
    for file in &outbound {
        out_files = add(out_files, corpus::records(file)?);
    }
    let setup = setup("hooks-corpus")?;
    let (client, rig) = (&setup.client, &setup.rig);
    let interface = rig.interface();
    const HOOKS: [At; 3] = [At::TcIn, At::TcBoth, At::Socket];
    for (name, expression, _) in CORPUS_CASES {
        for at in HOOKS {
            new_session(
                client,
                &format!("{name}-{}", at.suffix()),
                interface,
                at,
                expression,
            )?;
        }
    }
    let created = started.elapsed();
    // One program per direction counts every session there.
    let programs = tcx_counts(rig)?;
    ensure!(
        programs == (1, 1),
        "tcx programs on {interface} (ingress, egress): {programs:?}"
    );

    let replayed_in = corpus::replay(&rig.ns_a, &rig.veth.a.name, &inbound, REPLAY_PPS)?;
    client.settle("all-in", replayed_in.sent, ARRIVAL, QUIET)?;
    client.settle("all-sock", replayed_in.sent, ARRIVAL, QUIET)?;
    let after_in = poll(client)?;
    let replayed_out = corpus::replay(&rig.ns_b, &rig.veth.b.name, &outbound, REPLAY_PPS)?;
    let sent = replayed_in.sent + replayed_out.sent;
    client.settle("all-both", sent, ARRIVAL, QUIET)?;
    client.settle("all-sock", sent, ARRIVAL, QUIET)?;
    let after_out = poll(client)?;

    let mut failures = Vec::new();
    println!(
        "{:<10} {:<42} {:>14} {:>14} {:>16} {:>16}",
        "session", "expression", "tc in", "socket (in)", "tc both", "socket (all)"
    );
    let shown = |c: Count| format!("{}/{}", c.0, c.1);
    for (name, expression, received) in CORPUS_CASES {
        let at = |polled: &BTreeMap<String, Session>, at: At| {
            count_of(polled, &format!("{name}-{}", at.suffix()))
        };
        let (tc_in, socket_in, both_in) = (
            at(&after_in, At::TcIn)?,
            at(&after_in, At::Socket)?,
            at(&after_in, At::TcBoth)?,
        );
        let (tc_in_end, socket, both) = (
            at(&after_out, At::TcIn)?,
            at(&after_out, At::Socket)?,
            at(&after_out, At::TcBoth)?,
        );
        println!(
            "{name:<10} {:<42} {:>14} {:>14} {:>16} {:>16}",
            format!("{expression:?}"),
            shown(tc_in),
            shown(socket_in),
            shown(both),
            shown(socket)
        );
        if tc_in != socket_in || both_in != socket_in {
            failures.push(format!(
                "{name} ({expression:?}) on received frames: tc in {tc_in:?}, tc both \
                 {both_in:?}, socket {socket_in:?}"
            ));
        }
        if tc_in_end != tc_in {
            failures.push(format!(
                "{name} ({expression:?}): tc in went from {tc_in:?} to {tc_in_end:?} while B \
                 only sent"
            ));
        }
        if both != socket {
            failures.push(format!(
                "{name} ({expression:?}) on all frames: tc both {both:?}, socket {socket:?}"
            ));
        }
        if *received && tc_in.0 == 0 {
            failures.push(format!(
                "{name} ({expression:?}) matched no received frame: the traffic does not \
                 test it"
            ));
        }
        if both.0 == 0 || both == count_of(&after_out, "all-both")? && *name != "all" {
            failures.push(format!(
                "{name} ({expression:?}) matched {both:?}: a trivial count"
            ));
        }
    }
    for (direction, replayed, files) in [
        ("received", &replayed_in, in_files),
        ("sent", &replayed_out, out_files),
    ] {
        println!(
            "tcpreplay, {direction}: {} frames sent, {} failed, in {:.1?} ({} records, {} \
             bytes in the files)",
            replayed.sent, replayed.failed, replayed.took, files.0, files.1
        );
        for complaint in &replayed.complaints {
            println!("  tcpreplay: {complaint}");
        }
    }
    println!(
        "{} sessions created in {created:.1?}; {:.1?} in all",
        CORPUS_CASES.len() * HOOKS.len(),
        started.elapsed()
    );
    // Whatever tcpreplay sent arrived: every frame of the files, with its bytes.
    ensure!(
        replayed_in.sent + replayed_in.failed == in_files.0
            && replayed_out.sent + replayed_out.failed == out_files.0,
        "tcpreplay accounted for {} + {} frames of the {} + {} in the files",
        replayed_in.sent + replayed_in.failed,
        replayed_out.sent + replayed_out.failed,
        in_files.0,
        out_files.0
    );
    if replayed_in.failed == 0 && count_of(&after_in, "all-in")? != in_files {
        failures.push(format!(
            "all, tc in: {:?}, while the received files hold {in_files:?}",
            count_of(&after_in, "all-in")?
        ));
    }
    if replayed_in.failed + replayed_out.failed == 0
        && count_of(&after_out, "all-both")? != add(in_files, out_files)
    {
        failures.push(format!(
            "all, tc both: {:?}, while the files hold {:?}",
            count_of(&after_out, "all-both")?,
            add(in_files, out_files)
        ));
    }
    if !failures.is_empty() {
        bail!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

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

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writes `frame(k)` for k = 0, 1, ... at `per_second` until at least `min` frames are
/// written and `done` is set; `progress` counts them.
fn stream_until<'f>(
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
    let rig = Rig::new(tag)?;
    let scratch = ScratchDir::new(tag)?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    // Whatever happens, nothing stays pinned (declared before the daemons: dropped
    // after them).
    let _pins = spec.pin_guard();
    let first_spec = spec.clone().keeping_pins(outage == Outage::Upgrade);
    let first = Daemon::start(&rig.ns_b, &first_spec, &scratch.join("first.log"))?;
    let client = spec.client()?;
    let interface = rig.interface();
    new_session(&client, "tc-in", interface, At::TcIn, "udp")?;
    new_session(
        &client,
        "tc-both",
        interface,
        At::TcBoth,
        "udp dst port 7000",
    )?;
    new_session(&client, "sock", interface, At::Socket, "udp")?;
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
        let links = spec.pin_dir.join("%tc").join(rig.interface());
        let links_kept = links.join("in-link").exists()
            && links.join("out-link").exists()
            && tcx_counts(&rig)? == (1, 1);
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
        let took = stream
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
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
    let polled = poll(&client)?;
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
    let programs = tcx_counts(&rig)?;
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
            let last = match client.sessions(&["stop", &name(i)])?.as_slice() {
                [s] => counts(s),
                other => bail!("stop printed {} sessions", other.len()),
            };
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
            stream
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
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
    let per_port = |i: u16, total: u64| {
        (total / u64::from(MANY)) + u64::from(u64::from(i) < total % u64::from(MANY))
    };
    let stream_share = |i: u16, at: At| {
        let k = usize::from(i);
        seen(
            at,
            times(&to_b[k], per_port(i, stream_in)),
            times(&to_a[k], per_port(i, stream_out)),
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
/// `daemon_counting`): tcx runs at most 63 programs on a hook, and the daemon attaches
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
    let links = spec.pin_dir.join("%tc").join(interface);
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
        stream
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok(())
    })?;
    let streamed = progress.load(Ordering::SeqCst);
    written += streamed;
    let share = |i: u16| {
        streamed / u64::from(SESSIONS) + u64::from(u64::from(i) < streamed % u64::from(SESSIONS))
    };
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
                let session = match client.sessions(&["modify", name, filter])?.as_slice() {
                    [session] => session.clone(),
                    other => bail!("modify printed {} sessions", other.len()),
                };
                ensure!(
                    session.filter == filter && session.hook == "tc",
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
            stream
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
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

// ---------------------------------------------------------------------------------
// 6. Errors.

/// `list --json` without the times of the readings.
fn listed(client: &Client) -> anyhow::Result<Vec<Session>> {
    let mut sessions = client.sessions(&["list"])?;
    for session in &mut sessions {
        session.read_at = None;
    }
    Ok(sessions)
}

/// Hooks and directions the daemon cannot do, or that do not exist, and other bad `new
/// ... hook tc` requests: each exits 1 with its message on stderr, and nothing is
/// created: `list` as before, no pin, no program on the interface.
#[test]
fn bad_hooks_and_directions_are_refused_and_change_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    let mut setup = setup("hooks-errors")?;
    let interface = setup.rig.interface().to_owned();
    let client = setup.client.clone();
    new_session(&client, "web", &interface, At::TcBoth, "tcp port 80")?;
    new_session(&client, "dns", &interface, At::Socket, "udp port 53")?;
    let before = listed(&client)?;
    let pins_before = entries(&setup.spec.pin_dir);
    let programs_before = tcx_on_b(&setup.rig)?;
    ensure!(
        (
            programs_before.0.programs.len(),
            programs_before.1.programs.len()
        ) == (1, 1),
        "web's tcx programs, in and out, on {interface}: {programs_before:?}"
    );

    let new = |words: &[&str]| -> Vec<String> {
        ["new", "x", "interface", &interface]
            .iter()
            .chain(words)
            .map(|w| (*w).to_owned())
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            new(&["hook", "socket", "direction", "in", "udp"]),
            "the socket hook counts both directions, as tcpdump does; for `direction in` use \
             `hook tc`",
        ),
        (
            new(&["hook", "socket", "direction", "out", "udp"]),
            "for `direction out` use `hook tc`",
        ),
        (
            new(&["direction", "in", "udp"]),
            "the socket hook counts both directions",
        ),
        (
            new(&["hook", "bogus", "udp"]),
            "unknown hook \"bogus\": socket, tc or xdp",
        ),
        (
            new(&["hook", "tc", "direction", "sideways", "udp"]),
            "unknown direction \"sideways\": in, out or both",
        ),
        (
            new(&["hook", "xdp", "direction", "out", "udp"]),
            "XDP sees received frames only: `direction out` needs `hook tc`",
        ),
        (
            new(&["hook", "xdp", "direction", "both", "udp"]),
            "XDP sees received frames only: `direction both` needs `hook tc`",
        ),
        (
            new(&["hook", "tc", "hook", "tc", "udp"]),
            "`hook` is given twice",
        ),
        (
            new(&["hook", "tc", "direction", "in", "direction", "out"]),
            "`direction` is given twice",
        ),
        (new(&["hook"]), "`hook` needs a value"),
        (
            new(&["hook", "tc", "direction", "in", "filter", "udp port"]),
            "syntax error",
        ),
        (
            ["new", "x", "interface", "nosuch0", "hook", "tc", "udp"]
                .map(str::to_owned)
                .to_vec(),
            "nosuch0",
        ),
        (
            [
                "new",
                "web",
                "interface",
                &interface,
                "hook",
                "tc",
                "direction",
                "in",
                "udp",
            ]
            .map(str::to_owned)
            .to_vec(),
            "a session named \"web\" exists already",
        ),
    ];
    for (args, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = client.fails(&args)?;
        println!("{:<70} -> {}", args.join(" "), outcome.stderr.trim());
        ensure!(
            outcome.stderr.contains(says),
            "`{}` should say {says:?}: {outcome}",
            args.join(" ")
        );
        ensure!(
            listed(&client)? == before,
            "`{}` changed the session table",
            args.join(" ")
        );
        ensure!(
            entries(&setup.spec.pin_dir) == pins_before,
            "`{}` left pins: {:?}",
            args.join(" "),
            entries(&setup.spec.pin_dir)
        );
        let programs = tcx_on_b(&setup.rig)?;
        ensure!(
            programs == programs_before,
            "`{}` changed what is attached to {interface}'s tcx hooks: {programs_before:?} \
             before, {programs:?} after",
            args.join(" ")
        );
    }
    ensure!(
        setup.daemon.is_running(),
        "the daemon died:\n{}",
        setup.daemon.log()
    );
    // The sessions that were there still count.
    let syn = rig::tcp_syn_a_to_b(80);
    setup.rig.sender_a()?.send_n(&syn, 3)?;
    let web = client.settle("web", 3, ARRIVAL, QUIET)?;
    ensure!(
        counts(&web) == times(&syn, 3),
        "web after the errors: {web:?}"
    );
    let log = setup.daemon.log();
    ensure!(
        !log.contains("new session \"x\""),
        "the daemon logged a session x:\n{log}"
    );
    Ok(())
}
