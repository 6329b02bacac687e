//! The TC hook end to end: `capstats new NAME interface IF hook tc direction
//! in|out|both [filter] EXPR` counts exactly what the socket hook (tcpdump's view)
//! counts, in each direction, on known frames and on the corpus; and bad hooks and
//! directions are refused without a trace. Counting through a dead daemon is in
//! `daemon_tc_outage.rs`; many sessions and `modify` under traffic in
//! `daemon_tc_sessions.rs`; what they share, and the rig they count on, in
//! `tc/mod.rs`.

mod tc;

use tc::*;

const TEST: &str = "daemon_tc";

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
        new_sessions_at(client, short, interface, &At::ALL, expression)?;
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
        let got = |at: At| count_of(&after_in, &at.name(short));
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
        let got = |at: At| count_of(&after_out, &at.name(short));
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
        new_sessions_at(client, expression, interface, &At::ALL, expression)?;
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
        let got = count_of(&polled, &at.name(expression))?;
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
    // Received by B: replayed on A's end; sent by B: replayed on B's end.
    let inbound = corpus::files(&[corpus::REPLAY_IN, corpus::REPLAY_IN_MORE])?;
    let outbound = corpus::files(&[corpus::REPLAY_OUT])?;
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
        new_sessions_at(client, name, interface, &HOOKS, expression)?;
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
    for (name, expression, received) in CORPUS_CASES {
        let at = |polled: &BTreeMap<String, Session>, at: At| count_of(polled, &at.name(name));
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
// 6. Errors.

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
    let before = client.listed()?;
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
            client.listed()? == before,
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
