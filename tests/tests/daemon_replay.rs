//! Corpus captures replayed through a veth pair, counted by the daemon and captured by
//! tcpdump with the same expressions on the same interface: every session's packets
//! and bytes must equal the record count and the sum of the original lengths of
//! tcpdump's file.
//!
//! Setup (`capstats_tests::daemon::rig`): namespaces A and B, a quiet veth pair with
//! the largest MTU, the daemon in B counting on B's end. Beside each session, one
//! `tcpdump -i veth-b -w FILE EXPR`, listening before anything is sent. Traffic:
//! [`corpus::REPLAY_IN`] replayed with tcpreplay on A's end (it arrives at B: inbound; the
//! kernel moves outer VLAN tags into metadata), then [`corpus::REPLAY_OUT`] replayed on B's own
//! end (outbound; tags stay in the frame). The captures hold IPv4 and IPv6, TCP, UDP,
//! ICMP and ICMPv6, ARP, IP fragments, jumbo frames, 802.1Q and 802.1ad (QinQ) tags,
//! and link-layer protocols that are neither IP nor ARP (PTP, AoE, DECnet, LLDP, STP).
//!
//! tcpdump is the oracle: what it recorded is what the session must count, whatever
//! tcpreplay managed to send. The test also checks that every frame tcpreplay sent
//! arrived (a session and a tcpdump with the empty expression), that tcpdump dropped
//! nothing, and that the counts are not trivial.
//!
//! One quirk of the oracle is worked around: libpcap (1.10) filters the first ring block
//! a capture hands to user space again in user space, after installing the kernel
//! filter, and its user-space interpreter has no packet type, so `inbound` and
//! `outbound` reject whatever that block holds (seen: the first frame of each
//! direction missing from those two files while "received by filter" counted it).
//! So before the sessions exist, one [`warm_up`] frame goes each way; they fill that
//! block, and they are left out of every file's count.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Session;
use capstats_tests::corpus;
use capstats_tests::daemon::rig::{MAC_A, MAC_B, Rig};
use capstats_tests::daemon::{Daemon, DaemonSpec};
use capstats_tests::frame::{Ethernet, Ipv4, MacAddr, ethertype};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;
use capstats_tests::tcpdump::{Recorded, Tcpdump};

const TEST: &str = "daemon_replay";

/// (session name, expression). `all` (the empty expression: every frame) must stay.
const CASES: &[(&str, &str)] = &[
    ("all", ""),
    ("ip", "ip"),
    ("ip6", "ip6"),
    ("arp", "arp"),
    ("tcp", "tcp"),
    ("udp", "udp"),
    ("icmp", "icmp"),
    ("icmp6", "icmp6"),
    ("vlan", "vlan"),
    ("vlan-100", "vlan 100"),
    ("vlan-1213", "vlan 1213"),
    ("vlan-202", "vlan 202"),
    ("vlan-165", "vlan 165"),
    ("qinq", "vlan 200 and vlan 2001"),
    ("vlan-ip", "vlan and ip"),
    ("vlan-udp", "vlan and udp"),
    ("not-vlan", "not vlan"),
    ("inbound", "inbound"),
    ("outbound", "outbound"),
    ("fragments", "ip[6:2] & 0x3fff != 0"),
    ("first-frags", "ip[6:2] & 0x1fff == 0 and ip[6] & 0x20 != 0"),
    ("ip6-udp", "ip6 and udp"),
    ("low-ports", "portrange 1-1024"),
    ("afs-ports", "udp portrange 7000-7009"),
    ("ssh", "tcp port 22"),
    ("bgp", "tcp port 179"),
    ("dns", "udp port 53"),
    ("syn", "tcp[tcpflags] & tcp-syn != 0"),
    (
        "syn-ack",
        "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)",
    ),
    ("fin-rst", "tcp[tcpflags] & (tcp-fin|tcp-rst) != 0"),
    ("push", "tcp[13] & 8 != 0"),
    ("host", "host 131.151.32.21"),
    ("src-net", "src net 131.151.0.0/16"),
    ("net-10", "net 10.0.0.0/8"),
    ("ip6-net", "ip6 net fe80::/10"),
    ("len-1000", "len > 1000"),
    ("greater", "greater 500"),
    ("less", "less 100"),
    ("small-udp", "udp and len <= 200"),
    ("broadcast", "ether broadcast"),
    ("multicast", "ether multicast"),
    ("ip-mcast", "ip multicast"),
    ("ip6-mcast", "ip6 multicast"),
    ("vrrp", "ip proto 112"),
    ("ptp", "ether proto 0x88f7"),
    ("aoe", "ether proto 0x88a2"),
    ("tag-in-frame", "ether[12:2] = 0x8100"),
    ("neither", "not ip and not ip6 and not arp"),
    ("ip-not-udp", "ip and not udp"),
];

/// Expressions allowed to match nothing in this traffic; every other one must match.
const MAY_BE_EMPTY: &[&str] = &[];

/// Frames per second tcpreplay sends at: slow enough for tcpdump to keep up with
/// every frame and nearly fifty processes on two cores.
const PPS: u32 = 2000;

/// A frame written by `from`, that none of the captures holds.
fn warm_up(from: MacAddr) -> Vec<u8> {
    let ip = Ipv4::new([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
    Ethernet::new(MacAddr([0x02, 0, 0, 0, 0xee, 0x01]), from).frame(
        ethertype::IPV4,
        &ip.udp(9, 9, b"capstats e2e warm-up frame"),
    )
}

/// What one tcpdump recorded, warm-up frames left out.
struct Captured {
    packets: u64,
    /// The sum of the records' original lengths.
    bytes: u64,
    /// Warm-up frames in the file.
    warm_ups: u64,
    recorded: Recorded,
}

impl Captured {
    /// Reads tcpdump's file at `path` again, leaving out the `warm_ups` frames.
    fn read(path: &Path, recorded: Recorded, warm_ups: &[Vec<u8>]) -> anyhow::Result<Self> {
        let mut capture = pcap::Capture::from_file(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut captured = Self {
            packets: 0,
            bytes: 0,
            warm_ups: 0,
            recorded,
        };
        loop {
            match capture.next_packet() {
                Ok(packet) if warm_ups.iter().any(|w| w.as_slice() == packet.data) => {
                    captured.warm_ups += 1;
                }
                Ok(packet) => {
                    captured.packets += 1;
                    captured.bytes += u64::from(packet.header.len);
                }
                Err(pcap::Error::NoMorePackets) => break,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        ensure!(
            captured.packets + captured.warm_ups == captured.recorded.lengths.len() as u64,
            "{} read differently twice",
            path.display()
        );
        Ok(captured)
    }
}

struct Row {
    name: &'static str,
    expression: &'static str,
    session: (u64, u64),
    tcpdump: Captured,
}

impl Row {
    fn tcpdump(&self) -> (u64, u64) {
        (self.tcpdump.packets, self.tcpdump.bytes)
    }

    /// The kernel's matches that tcpdump did not record: at most the warm-up frames
    /// of the first block, never one of the replayed frames.
    fn unrecorded(&self) -> u64 {
        let file = self.tcpdump.packets + self.tcpdump.warm_ups;
        self.tcpdump
            .recorded
            .received_by_filter
            .saturating_sub(file)
    }

    fn exact(&self, warm_ups: u64) -> bool {
        let received = self.tcpdump.recorded.received_by_filter;
        self.session == self.tcpdump()
            && self.tcpdump.recorded.dropped_by_kernel == 0
            && received >= self.tcpdump.packets + self.tcpdump.warm_ups
            && received <= self.tcpdump.packets + warm_ups
    }
}

#[test]
fn sessions_count_what_tcpdump_captures_on_replayed_corpus_traffic() -> anyhow::Result<()> {
    require_root(TEST);
    let started = Instant::now();
    let inbound = corpus::files(&[corpus::REPLAY_IN])?;
    let outbound = corpus::files(&[corpus::REPLAY_OUT])?;
    let mut in_files = (0, 0);
    for file in inbound.iter().chain(&outbound) {
        let (packets, bytes) = corpus::records(file)?;
        in_files = (in_files.0 + packets, in_files.1 + bytes);
    }

    let rig = Rig::new("replay")?;
    let scratch = ScratchDir::new("replay")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    let client = daemon.client()?;
    let interface = rig.interface();
    // One tcpdump per expression, all listening before the first frame. Started from
    // this thread: they die with the thread that started them (PR_SET_PDEATHSIG).
    let tcpdumps = CASES
        .iter()
        .map(|(name, expression)| {
            let path = scratch.join(&format!("{name}.pcap"));
            Tcpdump::start(&rig.ns_b, interface, expression, &path)
        })
        .collect::<anyhow::Result<Vec<Tcpdump>>>()?;
    // The warm-up frames fill each tcpdump's first block (1 ms block timeout in
    // immediate mode); then the sessions start counting.
    let warm_ups = [warm_up(MAC_A), warm_up(MAC_B)];
    rig.sender_a()?.send(&warm_ups[0])?;
    rig.sender_b()?.send(&warm_ups[1])?;
    std::thread::sleep(Duration::from_millis(300));
    for (name, expression) in CASES {
        client.ok(&["new", name, "interface", interface, "filter", expression])?;
    }
    let set_up = started.elapsed();

    let replayed_in = corpus::replay(&rig.ns_a, &rig.veth.a.name, &inbound, PPS)?;
    let replayed_out = corpus::replay(&rig.ns_b, &rig.veth.b.name, &outbound, PPS)?;
    let sent = replayed_in.sent + replayed_out.sent;
    // Everything sent has arrived (or the test stops here, saying how much had).
    client.settle(
        "all",
        sent,
        Duration::from_secs(20),
        Duration::from_millis(300),
    )?;
    let mut recorded = Vec::new();
    for tcpdump in tcpdumps {
        recorded.push(tcpdump.stop()?);
    }
    let polled = client.poll()?;

    let mut rows = Vec::new();
    for ((name, expression), recorded) in CASES.iter().zip(recorded) {
        let session: &Session = polled
            .iter()
            .find(|s| s.name == *name)
            .with_context(|| format!("session {name} is missing from poll"))?;
        let path = scratch.join(&format!("{name}.pcap"));
        rows.push(Row {
            name,
            expression,
            session: (session.packets.unwrap_or(0), session.bytes.unwrap_or(0)),
            tcpdump: Captured::read(&path, recorded, &warm_ups)?,
        });
    }
    let warm_ups = warm_ups.len() as u64;
    print_table(&rows, warm_ups);
    for (direction, replayed) in [("inbound", &replayed_in), ("outbound", &replayed_out)] {
        println!(
            "tcpreplay {direction}: {} frames sent, {} failed, in {:.1?}",
            replayed.sent, replayed.failed, replayed.took
        );
        for complaint in &replayed.complaints {
            println!("  tcpreplay: {complaint}");
        }
    }
    println!(
        "{} records in {} files ({} bytes captured); {} expressions; set up in {set_up:.1?}, \
         {:.1?} in all",
        in_files.0,
        inbound.len() + outbound.len(),
        in_files.1,
        CASES.len(),
        started.elapsed()
    );

    let mut failures = Vec::new();
    for row in &rows {
        if !row.exact(warm_ups) {
            failures.push(format!(
                "{} ({:?}): session {:?}, tcpdump {:?} and {} warm-up frames recorded \
                 ({} received by filter, {} dropped by kernel)",
                row.name,
                row.expression,
                row.session,
                row.tcpdump(),
                row.tcpdump.warm_ups,
                row.tcpdump.recorded.received_by_filter,
                row.tcpdump.recorded.dropped_by_kernel
            ));
        }
        if row.tcpdump.packets == 0 && !MAY_BE_EMPTY.contains(&row.name) {
            failures.push(format!(
                "{} ({:?}) matched nothing: the traffic does not test it",
                row.name, row.expression
            ));
        }
    }
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .expect("a case of the table")
    };
    let add = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
    ensure!(
        replayed_in.sent + replayed_in.failed + replayed_out.sent + replayed_out.failed
            == in_files.0,
        "tcpreplay accounted for {} + {} frames of the {} in the files",
        replayed_in.sent + replayed_in.failed,
        replayed_out.sent + replayed_out.failed,
        in_files.0
    );
    if row("all").tcpdump.packets != sent {
        failures.push(format!(
            "tcpreplay sent {sent} frames; tcpdump captured {} on B's end",
            row("all").tcpdump.packets
        ));
    }
    if row("inbound").tcpdump.packets != replayed_in.sent
        || row("outbound").tcpdump.packets != replayed_out.sent
    {
        failures.push(format!(
            "inbound {:?} and outbound {:?}, while tcpreplay sent {} in and {} out",
            row("inbound").session,
            row("outbound").session,
            replayed_in.sent,
            replayed_out.sent
        ));
    }
    for (one, other) in [("inbound", "outbound"), ("vlan", "not-vlan")] {
        if add(row(one).session, row(other).session) != row("all").session {
            failures.push(format!(
                "{one} {:?} + {other} {:?} is not all {:?}",
                row(one).session,
                row(other).session,
                row("all").session
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn print_table(rows: &[Row], warm_ups: u64) {
    println!(
        "{:<13} {:<52} {:>8} {:>8} {:>10} {:>10} {:>5} {:>5}",
        "session", "expression", "packets", "tcpdump", "bytes", "tcpdump", "drops", "exact"
    );
    for row in rows {
        let (packets, bytes) = row.tcpdump();
        println!(
            "{:<13} {:<52} {:>8} {:>8} {:>10} {:>10} {:>5} {:>5}{}",
            row.name,
            format!("{:?}", row.expression),
            row.session.0,
            packets,
            row.session.1,
            bytes,
            row.tcpdump.recorded.dropped_by_kernel,
            if row.exact(warm_ups) { "yes" } else { "NO" },
            match row.unrecorded() {
                0 => String::new(),
                n => format!("  ({n} warm-up frame(s) matched in the kernel, dropped by libpcap)"),
            }
        );
    }
}
