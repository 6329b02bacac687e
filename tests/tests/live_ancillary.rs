//! Live-handle programs on real traffic: the eBPF translation of what libpcap compiles for
//! `tcpdump -i IF EXPR` (with the Linux ancillary loads for the VLAN tag, the packet type
//! and the interface index) counts exactly what the kernel's own classic path counts with
//! the same libpcap program, what libpcap's interpreter says it should, and (for two
//! expressions) what tcpdump records.
//!
//! Setup: namespaces A and B joined by a veth pair, and by a second "injector" pair whose
//! A end redirects everything it receives out of A's veth end (`tc` mirred; this kernel
//! has no `8021q` for VLAN devices). No addresses, IPv6 off, GRO off: the kernels add no
//! frame of their own and merge none, so A's taps see exactly the frames the test writes.
//!
//! Traffic: [`plan`], a few rounds, written with AF_PACKET sockets: from B (inbound at A;
//! the receiving kernel moves an outer 802.1Q/802.1ad tag into the socket buffer's
//! metadata, a 0x9100 one stays in the frame), from A with tags in the frame (outbound:
//! the sending side leaves them there), and through the injector (outbound with the tag
//! in metadata, as a VLAN device sends).
//!
//! Per expression, on A's veth end: an AF_PACKET socket with the eBPF program
//! (`SO_ATTACH_BPF`, counting into its slot of a per-CPU map), and one with libpcap's
//! classic program (`SO_ATTACH_FILTER`), whose matches are read from `PACKET_STATISTICS`
//! and received (`MSG_TRUNC` lengths, `PACKET_AUXDATA` for tags held in metadata). Bytes
//! are wire bytes, as tcpdump records them: the tap's length plus 4 for such a tag.
//!
//! The model: libpcap's own interpreter (`pcap_offline_filter`, capture-file code) on
//! the frames as the tap sees them (tag removed where the kernel took it out) for plain
//! expressions (so live `ip` matches IPv4 whose tag is in metadata, as tcpdump does), on
//! the frames as tcpdump records them (tag put back) for `vlan` expressions, and the
//! direction for `inbound`, `outbound` and `ifindex`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_ebpf::counters::{Counter, CounterMap};
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{CounterSlot, Hook, translate};
use capstats_tests::frame::{
    self, Ethernet, Ipv4, Ipv6, MacAddr, Tcp, VlanTag, ethertype, tcpflags, without_outer_tag,
};
use capstats_tests::link::{self, VethPair};
use capstats_tests::netns::NetNs;
use capstats_tests::packet::{ETH_P_ALL, PacketSocket, PacketStats, Received};
use capstats_tests::scratch::ScratchDir;
use capstats_tests::tcpdump::Tcpdump;

const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
const MAC_INJ_A: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 0x0a]);
const MAC_INJ_B: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 0x0b]);
const MAC_ELSEWHERE: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const IP_FAR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const IP_FAR2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 6);
const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xa);
const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xb);
const IP6_ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// How many times the plan is written.
const ROUNDS: u64 = 3;
/// TPIDs the receiving kernel moves into metadata (`eth_type_vlan()`).
const UNTAGGED_ON_RECEIVE: [u16; 2] = [ethertype::DOT1Q, ethertype::DOT1AD];
/// Room for every frame a classic socket accepts, so none is dropped before it is read.
const CLASSIC_RECEIVE_BUFFER: usize = 8 << 20;
/// Expressions tcpdump also captures, beside the probes.
const TCPDUMP_EXPRESSIONS: [&str; 2] = ["vlan", "ip"];

/// Who writes a frame, and so how A's taps see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// B's end: received by A, an outer 802.1Q/802.1ad tag moved into metadata.
    B,
    /// A's end: sent by A as written.
    A,
    /// B's end of the injector pair: received by A on its injector end (an outer
    /// 802.1Q/802.1ad tag moved into metadata), redirected out of A's veth end: sent by A
    /// with the tag in metadata, as a VLAN device would send it.
    Injector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    In,
    Out,
}

/// One kind of frame of the plan.
struct Item {
    what: &'static str,
    via: Via,
    count: u64,
    frame: Vec<u8>,
}

/// A frame as A's taps see it.
struct Seen {
    direction: Direction,
    /// The bytes the filter runs on (`skb->data` from the Ethernet header on).
    tap: Vec<u8>,
    /// The bytes tcpdump records: `tap` with a metadata tag put back.
    wire: Vec<u8>,
}

impl Item {
    fn seen(&self) -> Seen {
        let direction = match self.via {
            Via::B => Direction::In,
            Via::A | Via::Injector => Direction::Out,
        };
        // What B wrote, A's kernel received (on either pair) and took the outer tag out.
        let received = matches!(self.via, Via::B | Via::Injector);
        let tap = match frame::outer_tag(&self.frame, &UNTAGGED_ON_RECEIVE) {
            Some(_) if received => without_outer_tag(&self.frame),
            _ => self.frame.clone(),
        };
        Seen {
            direction,
            tap,
            wire: self.frame.clone(),
        }
    }
}

/// The traffic of one round: every kind of frame the expressions tell apart, both ways.
fn plan() -> Vec<Item> {
    let item = |what, via, count, frame| Item {
        what,
        via,
        count,
        frame,
    };
    let to_a = Ethernet::new(MAC_A, MAC_B);
    let to_b = Ethernet::new(MAC_B, MAC_A);
    let b_to_a = Ipv4::new(IP_B, IP_A);
    let a_to_b = Ipv4::new(IP_A, IP_B);
    let far = Ipv4::new(IP_FAR, IP_FAR2);
    let b6_to_a6 = Ipv6::new(IP6_B, IP6_A);
    let a6_to_b6 = Ipv6::new(IP6_A, IP6_B);
    let q = |vid| to_a.clone().tagged(VlanTag::dot1q(vid));
    let v4 = ethertype::IPV4;
    let v6 = ethertype::IPV6;
    vec![
        // Inbound, untagged.
        item(
            "tcp syn :80",
            Via::B,
            3,
            to_a.frame(v4, &b_to_a.tcp(&Tcp::syn(40000, 80))),
        ),
        item(
            "tcp data :80",
            Via::B,
            2,
            to_a.frame(v4, &b_to_a.tcp(&Tcp::data(40000, 80, vec![b'x'; 120]))),
        ),
        item(
            "udp :53",
            Via::B,
            2,
            to_a.frame(v4, &b_to_a.udp(5353, 53, &[7; 30])),
        ),
        item(
            "icmp echo",
            Via::B,
            2,
            to_a.frame(v4, &b_to_a.icmp_echo(false, 1, 1, &[0; 56])),
        ),
        item(
            "arp who-has (broadcast)",
            Via::B,
            1,
            Ethernet::new(MacAddr::BROADCAST, MAC_B).frame(
                ethertype::ARP,
                &frame::arp(false, (MAC_B, IP_B), (MacAddr::ZERO, IP_A)),
            ),
        ),
        item(
            "ipv6 udp :53",
            Via::B,
            2,
            to_a.frame(v6, &b6_to_a6.udp(5353, 53, &[1; 20])),
        ),
        item(
            "ipv6 tcp syn :80",
            Via::B,
            1,
            to_a.frame(v6, &b6_to_a6.tcp(&Tcp::syn(40000, 80))),
        ),
        item(
            "udp broadcast :67",
            Via::B,
            1,
            Ethernet::new(MacAddr::BROADCAST, MAC_B).frame(
                v4,
                &Ipv4::new(IP_B, Ipv4Addr::new(10, 0, 0, 255)).udp(68, 67, &[0; 40]),
            ),
        ),
        item(
            "ipv6 multicast udp",
            Via::B,
            1,
            Ethernet::new(MacAddr::ipv6_multicast(IP6_ALL_NODES), MAC_B).frame(
                v6,
                &Ipv6::new(IP6_B, IP6_ALL_NODES).udp(5000, 5000, &[2; 10]),
            ),
        ),
        item(
            "udp to another host",
            Via::B,
            1,
            Ethernet::new(MAC_ELSEWHERE, MAC_B).frame(
                v4,
                &Ipv4::new(Ipv4Addr::new(192, 168, 7, 7), Ipv4Addr::new(192, 168, 7, 8))
                    .udp(9, 9, &[3; 10]),
            ),
        ),
        // Inbound, tagged: the kernel moves 802.1Q and 802.1ad outer tags into metadata.
        item(
            "vlan 10 udp :53",
            Via::B,
            3,
            q(10).frame(v4, &b_to_a.udp(5353, 53, &[7; 30])),
        ),
        item(
            "vlan 10 prio 5 tcp syn :80",
            Via::B,
            2,
            to_a.clone()
                .tagged(VlanTag::dot1q(10).priority(5))
                .frame(v4, &b_to_a.tcp(&Tcp::syn(40001, 80))),
        ),
        item(
            "vlan 20 tcp data :443",
            Via::B,
            2,
            q(20).frame(v4, &far.tcp(&Tcp::data(40002, 443, vec![b'y'; 60]))),
        ),
        // 102 bytes on the wire, 98 at the tap: `len > 100` tells them apart.
        item(
            "vlan 20 udp, 102 bytes",
            Via::B,
            1,
            q(20).frame(v4, &Ipv4::new(IP_FAR, IP_A).udp(5353, 53, &[5; 56])),
        ),
        item(
            "vlan 20 DEI ipv6 udp",
            Via::B,
            1,
            to_a.clone()
                .tagged(VlanTag::dot1q(20).drop_eligible())
                .frame(v6, &b6_to_a6.udp(5353, 53, &[4; 16])),
        ),
        item(
            "qinq 802.1ad 20 / 802.1Q 10 udp :53",
            Via::B,
            1,
            to_a.clone()
                .tagged(VlanTag::dot1ad(20))
                .tagged(VlanTag::dot1q(10))
                .frame(v4, &b_to_a.udp(5353, 53, &[6; 24])),
        ),
        item(
            "tpid 0x9100 vlan 10 udp :53 (stays in the frame)",
            Via::B,
            1,
            to_a.clone()
                .tagged(VlanTag {
                    tpid: ethertype::QINQ_9100,
                    tci: 10,
                })
                .frame(v4, &b_to_a.udp(5353, 53, &[6; 24])),
        ),
        item(
            "vlan 10 arp who-has",
            Via::B,
            1,
            Ethernet::new(MacAddr::BROADCAST, MAC_B)
                .tagged(VlanTag::dot1q(10))
                .frame(
                    ethertype::ARP,
                    &frame::arp(false, (MAC_B, IP_B), (MacAddr::ZERO, IP_A)),
                ),
        ),
        // Outbound, written by A: tags stay in the frame.
        item(
            "tcp syn-ack :80",
            Via::A,
            2,
            to_b.frame(
                v4,
                &a_to_b.tcp(&Tcp::syn(80, 40000).with_flags(tcpflags::SYN | tcpflags::ACK)),
            ),
        ),
        item(
            "udp :53 reply",
            Via::A,
            2,
            to_b.frame(v4, &a_to_b.udp(53, 5353, &[8; 48])),
        ),
        item(
            "icmp echo reply",
            Via::A,
            1,
            to_b.frame(v4, &a_to_b.icmp_echo(true, 1, 1, &[0; 56])),
        ),
        item(
            "arp reply",
            Via::A,
            1,
            to_b.frame(
                ethertype::ARP,
                &frame::arp(true, (MAC_A, IP_A), (MAC_B, IP_B)),
            ),
        ),
        item(
            "ipv6 udp",
            Via::A,
            1,
            to_b.frame(v6, &a6_to_b6.udp(53, 5353, &[9; 20])),
        ),
        item(
            "vlan 20 tcp syn :80 (tag in frame)",
            Via::A,
            2,
            to_b.clone()
                .tagged(VlanTag::dot1q(20))
                .frame(v4, &a_to_b.tcp(&Tcp::syn(40003, 80))),
        ),
        item(
            "vlan 10 udp :53 (tag in frame)",
            Via::A,
            1,
            to_b.clone()
                .tagged(VlanTag::dot1q(10))
                .frame(v4, &a_to_b.udp(53, 5353, &[8; 30])),
        ),
        item(
            "udp 1000 bytes",
            Via::A,
            1,
            to_b.frame(v4, &a_to_b.udp(4000, 4001, &[0xaa; 1000])),
        ),
        // Outbound with the tag in metadata (through the injector).
        item(
            "vlan 10 udp :53 (tag in metadata)",
            Via::Injector,
            2,
            to_b.clone()
                .tagged(VlanTag::dot1q(10))
                .frame(v4, &a_to_b.udp(53, 5353, &[8; 30])),
        ),
        item(
            "vlan 10 prio 3 tcp syn :80 (tag in metadata)",
            Via::Injector,
            1,
            to_b.clone()
                .tagged(VlanTag::dot1q(10).priority(3))
                .frame(v4, &a_to_b.tcp(&Tcp::syn(40004, 80))),
        ),
        item(
            "vlan 20 icmp echo (tag in metadata)",
            Via::Injector,
            1,
            to_b.clone()
                .tagged(VlanTag::dot1q(20))
                .frame(v4, &a_to_b.icmp_echo(false, 2, 1, &[0; 32])),
        ),
        item(
            "vlan 20 ipv6 udp (tag in metadata)",
            Via::Injector,
            1,
            to_b.clone()
                .tagged(VlanTag::dot1q(20))
                .frame(v6, &a6_to_b6.udp(53, 5353, &[9; 20])),
        ),
        item(
            "qinq 802.1ad 10 / 802.1Q 20 tcp :80 (outer tag in metadata)",
            Via::Injector,
            1,
            to_b.clone()
                .tagged(VlanTag::dot1ad(10))
                .tagged(VlanTag::dot1q(20))
                .frame(v4, &a_to_b.tcp(&Tcp::syn(40005, 80))),
        ),
        item(
            "udp, no tag (through the injector)",
            Via::Injector,
            1,
            to_b.frame(v4, &a_to_b.udp(53, 5353, &[8; 30])),
        ),
    ]
}

/// How the model decides whether a seen frame matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oracle {
    /// libpcap's interpreter on the tap's bytes.
    Tap,
    /// libpcap's interpreter on tcpdump's bytes (tag re-inserted).
    Wire,
    /// Frames going this way, or every frame.
    Direction(Option<Direction>),
}

struct Case {
    expression: String,
    oracle: Oracle,
    /// Whether the traffic holds matches (otherwise the case is a negative control).
    matches: bool,
}

fn cases(ifindex_a: u32) -> Vec<Case> {
    let case = |expression: &str, oracle, matches| Case {
        expression: expression.to_owned(),
        oracle,
        matches,
    };
    let mut cases = vec![
        case("vlan", Oracle::Wire, true),
        case("vlan 10", Oracle::Wire, true),
        case("vlan 20", Oracle::Wire, true),
        case("vlan 30", Oracle::Wire, false),
        case("vlan and tcp", Oracle::Wire, true),
        case("vlan and udp", Oracle::Wire, true),
        case("vlan 10 and udp port 53", Oracle::Wire, true),
        case("vlan and ip6", Oracle::Wire, true),
        case("not vlan", Oracle::Wire, true),
        case("inbound", Oracle::Direction(Some(Direction::In)), true),
        case("outbound", Oracle::Direction(Some(Direction::Out)), true),
        case(
            &format!("ifindex {ifindex_a}"),
            Oracle::Direction(None),
            true,
        ),
    ];
    for plain in [
        "ip",
        "ip6",
        "arp",
        "tcp",
        "udp",
        "icmp",
        "tcp port 80",
        "udp port 53",
        "host 10.0.0.1",
        "net 10.0.0.0/24",
        "len > 100",
        "ether broadcast",
        "ether multicast",
        "tcp[tcpflags] & tcp-syn != 0",
        "icmp[icmptype] == icmp-echo",
        "ip6 and udp",
        "portrange 50-90",
    ] {
        cases.push(case(plain, Oracle::Tap, true));
    }
    cases.push(case(&format!("ether dst {MAC_B}"), Oracle::Tap, true));
    cases
}

/// The namespaces and the two veth pairs between them; all gone when the namespaces are
/// dropped.
struct Rig {
    veth: VethPair,
    /// In A and B: frames B writes on `injector.b` leave A's end of `veth`.
    injector: VethPair,
    // Dropped last, after everything that refers to their interfaces.
    ns_a: NetNs,
    ns_b: NetNs,
}

impl Rig {
    fn new() -> anyhow::Result<Self> {
        let ns_a = NetNs::create("anc-a")?;
        let ns_b = NetNs::create("anc-b")?;
        for ns in [&ns_a, &ns_b] {
            // No IPv6 on any interface (no router solicitations, DAD, MLD): set before
            // the interfaces exist so that they are born without it.
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let veth = VethPair::create(&ns_a, ("veth-a", MAC_A), &ns_b, ("veth-b", MAC_B))?;
        let injector = VethPair::create(&ns_a, ("inj-a", MAC_INJ_A), &ns_b, ("inj-b", MAC_INJ_B))?;
        link::redirect_to_egress(&ns_a, &injector.a, &veth.a)?;
        for (ns, end) in [
            (&ns_a, &veth.a),
            (&ns_b, &veth.b),
            (&ns_a, &injector.a),
            (&ns_b, &injector.b),
        ] {
            capstats_tests::cmd::run(ns.command("ethtool").args(["-K", &end.name, "gro", "off"]))?;
        }
        Ok(Self {
            veth,
            injector,
            ns_a,
            ns_b,
        })
    }
}

/// One expression's two taps on A.
struct Probe {
    expression: String,
    filter: Filter,
    ebpf_listing: Vec<String>,
    _program: LoadedProgram,
    ebpf: PacketSocket,
    classic: PacketSocket,
    slot: u32,
}

/// Compiles, translates, loads and attaches everything on A's end (inside A's namespace:
/// libpcap opens a live handle there). The sockets are not bound yet.
fn probes(rig: &Rig, cases: &[Case], counters: &CounterMap) -> anyhow::Result<Vec<Probe>> {
    let interface = rig.veth.a.name.as_str();
    rig.ns_a.run(|| {
        let mut probes = Vec::new();
        for (slot, case) in (0u32..).zip(cases) {
            let expression = &case.expression;
            let filter = Filter::for_interface(interface, expression)?;
            let insns = translate(filter.program(), Hook::Socket, CounterSlot { map: 0, slot })?;
            let maps = MapBinding::counters([counters]);
            let program = LoadedProgram::load_with(Hook::Socket, "live_ancillary", &insns, &maps)?;
            let ebpf = PacketSocket::new()?;
            program
                .socket_filter()?
                .attach(&ebpf)
                .with_context(|| format!("SO_ATTACH_BPF of {expression:?}"))?;
            let classic = PacketSocket::new()?;
            classic.force_receive_buffer(CLASSIC_RECEIVE_BUFFER)?;
            classic.enable_auxdata()?;
            classic
                .attach_classic(filter.raw())
                .with_context(|| format!("SO_ATTACH_FILTER of {expression:?}"))?;
            probes.push(Probe {
                expression: expression.clone(),
                ebpf_listing: insns.iter().map(ToString::to_string).collect(),
                filter,
                _program: program,
                ebpf,
                classic,
                slot,
            });
        }
        Ok(probes)
    })
}

/// Writes the plan `ROUNDS` times, interleaving the directions.
fn send_plan(rig: &Rig, plan: &[Item]) -> anyhow::Result<()> {
    let from_a = rig.ns_a.run(|| Ok(PacketSocket::new()?))?;
    let from_b = rig.ns_b.run(|| Ok(PacketSocket::new()?))?;
    for _ in 0..ROUNDS {
        for item in plan {
            let (socket, ifindex) = match item.via {
                Via::B => (&from_b, rig.veth.b.ifindex),
                Via::A => (&from_a, rig.veth.a.ifindex),
                Via::Injector => (&from_b, rig.injector.b.ifindex),
            };
            for _ in 0..item.count {
                socket
                    .send(ifindex, &item.frame)
                    .with_context(|| format!("writing {:?}", item.what))?;
            }
        }
    }
    Ok(())
}

/// Waits until the unfiltered tap has seen `total` frames, then until nothing moves.
fn settle(all: &PacketSocket, total: u64) -> anyhow::Result<PacketStats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = PacketStats::default();
    while seen.packets < total {
        if Instant::now() > deadline {
            bail!(
                "A's tap saw {} of the {total} frames written within 10 s",
                seen.packets
            );
        }
        std::thread::sleep(Duration::from_millis(10));
        seen += all.take_stats()?;
    }
    // Other taps of the last frame may still be running: give them time, and make sure
    // nothing else arrives.
    std::thread::sleep(Duration::from_millis(100));
    seen += all.take_stats()?;
    Ok(seen)
}

/// What a tap should count: packets, and bytes both as the tap sees them and as tcpdump
/// records them (a tag held in metadata put back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Model {
    packets: u64,
    tap_bytes: u64,
    wire_bytes: u64,
}

impl Model {
    fn add(&mut self, count: u64, frame: &Seen) {
        self.packets += count;
        self.tap_bytes += count * frame.tap.len() as u64;
        self.wire_bytes += count * frame.wire.len() as u64;
    }
}

/// The model's count: libpcap's verdicts on the frames as seen at A's tap.
fn expected(case: &Case, seen: &[(u64, Seen)]) -> anyhow::Result<Model> {
    let offline = match case.oracle {
        Oracle::Tap | Oracle::Wire => Some(
            Filter::for_linktype(pcap::Linktype::ETHERNET, &case.expression, 0)
                .with_context(|| format!("offline compile of {:?}", case.expression))?,
        ),
        Oracle::Direction(_) => None,
    };
    let mut model = Model::default();
    for (count, frame) in seen {
        let matches = match (case.oracle, &offline) {
            (Oracle::Tap, Some(filter)) => filter.libpcap_matches(&frame.tap),
            (Oracle::Wire, Some(filter)) => filter.libpcap_matches(&frame.wire),
            (Oracle::Direction(direction), _) => direction.is_none_or(|d| d == frame.direction),
            _ => unreachable!("offline filters exist for Tap and Wire"),
        };
        if matches {
            model.add(*count, frame);
        }
    }
    Ok(model)
}

/// One expression's results.
struct Row {
    expression: String,
    model: Model,
    ebpf: Counter,
    classic: Received,
    classic_stats: PacketStats,
}

impl Row {
    /// Why the row is wrong, if it is.
    fn failures(&self, case: &Case, probe: &Probe) -> Vec<String> {
        let Self {
            expression,
            model,
            ebpf,
            classic,
            classic_stats,
        } = self;
        let mut failures = Vec::new();
        if ebpf.packets != classic.packets || ebpf.bytes != classic.wire_bytes() {
            failures.push(format!(
                "{expression:?}: eBPF counted {} packets, {} bytes; the kernel's classic path {} packets, \
                 {} bytes ({} as the socket saw them, {} with a tag in metadata)\n\
                 classic program (filter.program()):\n{}eBPF program:\n{}",
                ebpf.packets,
                ebpf.bytes,
                classic.packets,
                classic.wire_bytes(),
                classic.bytes,
                classic.tagged,
                probe.filter.program(),
                numbered(&probe.ebpf_listing),
            ));
        }
        if classic_stats.drops != 0 || classic_stats.packets != classic.packets {
            failures.push(format!(
                "{expression:?}: the classic socket accepted {} frames, dropped {}, received {}",
                classic_stats.packets, classic_stats.drops, classic.packets
            ));
        }
        let kernel = Model {
            packets: classic.packets,
            tap_bytes: classic.bytes,
            wire_bytes: classic.wire_bytes(),
        };
        if *model != kernel {
            failures.push(format!(
                "{expression:?}: the model says {model:?}, the kernel's classic path {kernel:?}"
            ));
        }
        if case.matches != (model.packets > 0) {
            failures.push(format!(
                "{expression:?}: the traffic should {}hold matches, the model counts {}",
                if case.matches { "" } else { "not " },
                model.packets
            ));
        }
        failures
    }
}

#[test]
fn live_ebpf_socket_filter_counts_like_the_kernels_classic_path() -> anyhow::Result<()> {
    capstats_tests::require_root("live_ancillary");
    let started = Instant::now();
    let rig = Rig::new()?;
    let cases = cases(rig.veth.a.ifindex);
    let plan = plan();
    let seen: Vec<(u64, Seen)> = plan
        .iter()
        .map(|item| (item.count * ROUNDS, item.seen()))
        .collect();
    let mut every = Model::default();
    for (count, frame) in &seen {
        every.add(*count, frame);
    }

    let counters = CounterMap::create("live_ancillary", u32::try_from(cases.len())?)?;
    let probes = probes(&rig, &cases, &counters)?;
    let all = rig.ns_a.run(|| Ok(PacketSocket::new()?))?;
    all.force_receive_buffer(CLASSIC_RECEIVE_BUFFER)?;
    all.enable_auxdata()?;

    // tcpdump beside the probes, for two expressions.
    let scratch = ScratchDir::new("live_ancillary")?;
    let tcpdumps = TCPDUMP_EXPRESSIONS
        .into_iter()
        .map(|expression| {
            let path = scratch.join(&format!("{}.pcap", expression.replace(' ', "_")));
            Ok((
                expression,
                Tcpdump::start(&rig.ns_a, &rig.veth.a.name, expression, &path)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Start counting: bind every tap, then write.
    let a = rig.veth.a.ifindex;
    for probe in &probes {
        probe.ebpf.bind(a, ETH_P_ALL)?;
        probe.classic.bind(a, ETH_P_ALL)?;
    }
    all.bind(a, ETH_P_ALL)?;
    send_plan(&rig, &plan)?;
    let all_stats = settle(&all, every.packets)?;
    let all_received = all.drain()?;

    let mut rows = Vec::new();
    for (probe, case) in probes.iter().zip(&cases) {
        rows.push(Row {
            expression: probe.expression.clone(),
            model: expected(case, &seen)?,
            ebpf: counters.read(probe.slot)?,
            classic_stats: probe.classic.take_stats()?,
            classic: probe.classic.drain()?,
        });
    }
    // Still quiet after reading: nothing arrived late.
    std::thread::sleep(Duration::from_millis(50));
    let late = all.take_stats()?;
    let recorded = tcpdumps
        .into_iter()
        .map(|(expression, tcpdump)| Ok((expression, tcpdump.stop()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    print_table(&rows, &every);
    let all_seen = Model {
        packets: all_received.packets,
        tap_bytes: all_received.bytes,
        wire_bytes: all_received.wire_bytes(),
    };
    ensure!(
        all_stats.packets == every.packets && all_seen == every && late.packets == 0,
        "A's unfiltered tap accepted {} frames and received {all_seen:?}, {} more late; the test wrote \
         {every:?}: the kernels added or lost frames",
        all_stats.packets,
        late.packets,
    );
    let mut failures: Vec<String> = rows
        .iter()
        .zip(&cases)
        .zip(&probes)
        .flat_map(|((row, case), probe)| row.failures(case, probe))
        .collect();
    let row = |expression: &str| {
        rows.iter()
            .find(|r| r.expression == expression)
            .expect("in the table")
    };
    let every_counter = Counter {
        packets: every.packets,
        bytes: every.wire_bytes,
    };
    for (one, other) in [("vlan", "not vlan"), ("inbound", "outbound")] {
        let (one, other) = (row(one), row(other));
        if one.ebpf + other.ebpf != every_counter {
            failures.push(format!(
                "{:?} {:?} + {:?} {:?} is not every frame, {every_counter:?}",
                one.expression, one.ebpf, other.expression, other.ebpf
            ));
        }
    }
    for (expression, recorded) in &recorded {
        let ebpf = row(expression).ebpf;
        let packets = recorded.lengths.len() as u64;
        let bytes = recorded.lengths.iter().map(|&l| u64::from(l)).sum::<u64>();
        println!(
            "tcpdump -i {} {expression:?}: {packets} records of {bytes} bytes, {} received by filter, \
             {} dropped by kernel",
            rig.veth.a.name, recorded.received_by_filter, recorded.dropped_by_kernel,
        );
        if recorded.dropped_by_kernel != 0
            || recorded.received_by_filter != packets
            || (Counter { packets, bytes }) != ebpf
        {
            failures.push(format!(
                "tcpdump {expression:?} recorded {packets} frames of {bytes} bytes ({} received by filter, \
                 {} dropped by kernel), eBPF counted {ebpf:?}",
                recorded.received_by_filter, recorded.dropped_by_kernel,
            ));
        }
    }
    println!(
        "{} expressions, {} frames at the tap, in {:.1?}",
        rows.len(),
        every.packets,
        started.elapsed()
    );
    if !failures.is_empty() {
        bail!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn numbered(lines: &[String]) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{i:4}: {line}\n"))
        .collect()
}

fn print_table(rows: &[Row], every: &Model) {
    println!(
        "{:<30} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>7} {:>7}",
        "expression", "model", "eBPF", "classic", "model B", "eBPF B", "classic", "tap B", "tagged"
    );
    for Row {
        expression,
        model,
        ebpf,
        classic,
        ..
    } in rows
    {
        println!(
            "{expression:<30} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>7} {:>7}",
            model.packets,
            ebpf.packets,
            classic.packets,
            model.wire_bytes,
            ebpf.bytes,
            classic.wire_bytes(),
            classic.bytes,
            classic.tagged
        );
    }
    println!(
        "{:<30} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>7}",
        "(every frame)", every.packets, "", "", every.wire_bytes, "", "", every.tap_bytes
    );
}
