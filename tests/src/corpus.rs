//! The capture corpus (`../shared/corpus` beside the workspace, or `$CAPSTATS_CORPUS`)
//! and replaying its captures into a test's veth pair with tcpreplay.
//!
//! Read what the files hold with libpcap, replay them at a fixed rate with `tcpreplay`
//! inside a namespace, and parse what tcpreplay says it sent (the replay tests of every
//! hook use it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::daemon::output_within;
use crate::netns::NetNs;

/// The capture corpus: `$CAPSTATS_CORPUS`, or `shared/corpus` beside the workspace.
///
/// # Errors
/// When it is not there.
pub fn dir() -> anyhow::Result<PathBuf> {
    capstats_testkit::corpus::dir()
}

/// The captures the replay tests (`daemon_replay`, `daemon_tc`, `daemon_xdp`) replay on
/// A's end, so that B receives them: IPv4 and IPv6, TCP, UDP, ICMP, ARP, IP fragments,
/// jumbo frames up to 64 KiB, 802.1Q and 802.1ad tags (the kernel moves an outer one
/// into metadata), and link layers that are neither IP nor ARP.
pub const REPLAY_IN: &[&str] = &[
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
];

/// More captures `daemon_tc` replays on A's end after [`REPLAY_IN`].
pub const REPLAY_IN_MORE: &[&str] = &[
    "pcap/tcpdump/erspan-type-ii-3.pcap",        // GRE/ERSPAN
    "pcap/tcpdump/erspan-type-i-4.pcap",         // GRE/ERSPAN
    "pcap/tcpdump/geonet_v0_and_calm_fast.pcap", // GeoNetworking (0x0707)
    "pcap/tcpdump/bcm-li.pcap",                  // UDP (Broadcom LI)
    "pcap/tcpdump/ipx.pcap",                     // IPX (802.3 frames)
];

/// The captures the replay tests replay on B's own end, so that B sends them (tags
/// stay in the frame); `daemon_xdp` replays them on A's end after [`REPLAY_IN`].
pub const REPLAY_OUT: &[&str] = &[
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

/// The files of `lists` (paths in the corpus), one after another, in the corpus.
///
/// # Errors
/// When the corpus is not there.
pub fn files(lists: &[&[&str]]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = dir()?;
    Ok(lists.concat().iter().map(|f| dir.join(f)).collect())
}

/// Records and their total captured length, as libpcap reads a file.
///
/// # Errors
/// When the file cannot be read.
pub fn records(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut capture = pcap::Capture::from_file(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (mut packets, mut bytes) = (0, 0);
    loop {
        match capture.next_packet() {
            Ok(packet) => {
                packets += 1;
                bytes += u64::from(packet.header.caplen);
            }
            Err(pcap::Error::NoMorePackets) => return Ok((packets, bytes)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// What tcpreplay said it did.
#[derive(Debug)]
pub struct Replayed {
    pub sent: u64,
    pub failed: u64,
    /// Its warnings and errors, to show.
    pub complaints: Vec<String>,
    pub took: Duration,
}

/// Replays `files` on `interface` in `ns` at `pps` frames a second.
///
/// # Errors
/// When tcpreplay cannot run, fails without saying how many frames failed, or does not
/// say what it sent.
pub fn replay(
    ns: &NetNs,
    interface: &str,
    files: &[PathBuf],
    pps: u32,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let mut command = ns.command("tcpreplay");
    command
        .args([
            "-i",
            interface,
            "--pps",
            &pps.to_string(),
            "--no-flow-stats",
        ])
        .args(files);
    let outcome = output_within(&mut command, Duration::from_secs(60))?;
    let number = |label: &str| -> anyhow::Result<u64> {
        outcome
            .stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label)?.trim().parse().ok())
            .with_context(|| format!("tcpreplay did not say {label:?}: {outcome}"))
    };
    let replayed = Replayed {
        sent: number("Successful packets:")?,
        failed: number("Failed packets:")?,
        complaints: outcome
            .stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
        took: started.elapsed(),
    };
    if outcome.code != Some(0) && replayed.failed == 0 {
        bail!("tcpreplay failed: {outcome}");
    }
    Ok(replayed)
}
