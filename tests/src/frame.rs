//! Ethernet frames built byte by byte, for writing with an AF_PACKET socket.
//!
//! Each layer is a plain value that wraps the bytes of the layer above it:
//!
//! ```
//! use std::net::Ipv4Addr;
//! use capstats_tests::frame::{Ethernet, Ipv4, MacAddr, Tcp, VlanTag, ethertype};
//!
//! let a = MacAddr([2, 0, 0, 0, 0, 1]);
//! let b = MacAddr([2, 0, 0, 0, 0, 2]);
//! let ip = Ipv4::new(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1));
//! let syn = Ethernet::new(a, b)
//!     .tagged(VlanTag::dot1q(10))
//!     .frame(ethertype::IPV4, &ip.tcp(&Tcp::syn(40000, 80)));
//! assert_eq!(syn.len(), 14 + 4 + 20 + 20);
//! ```
//!
//! Checksums (IPv4 header, TCP, UDP and ICMP) are filled in, so the frames also read well
//! in tcpdump. Nothing pads a frame to Ethernet's 60-byte minimum: the kernel hands taps
//! exactly the bytes written, and so can the tests.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType values used here.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer tag.
    pub const DOT1Q: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer tag).
    pub const DOT1AD: u16 = 0x88a8;
    /// The pre-standard QinQ TPID that libpcap's `vlan` also recognises.
    pub const QINQ_9100: u16 = 0x9100;
}

/// IP protocol numbers used here.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The multicast address IPv6 maps `addr` to (`33:33` and its last 32 bits).
    pub fn ipv6_multicast(addr: Ipv6Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A VLAN tag: its TPID and its tag control information (priority, DEI, VLAN id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    pub tci: u16,
}

impl VlanTag {
    /// An 802.1Q tag of VLAN `vid`, priority 0.
    pub const fn dot1q(vid: u16) -> Self {
        Self {
            tpid: ethertype::DOT1Q,
            tci: vid & 0xfff,
        }
    }

    /// An 802.1ad (service) tag of VLAN `vid`.
    pub const fn dot1ad(vid: u16) -> Self {
        Self {
            tpid: ethertype::DOT1AD,
            tci: vid & 0xfff,
        }
    }

    /// The same tag with priority code point `pcp` (0–7).
    pub const fn priority(self, pcp: u16) -> Self {
        Self {
            tci: (self.tci & 0x1fff) | ((pcp & 7) << 13),
            ..self
        }
    }

    /// The same tag with the drop-eligible indicator set.
    pub const fn drop_eligible(self) -> Self {
        Self {
            tci: self.tci | 0x1000,
            ..self
        }
    }

    /// The 12-bit VLAN id.
    pub const fn vid(self) -> u16 {
        self.tci & 0xfff
    }

    fn bytes(self) -> [u8; 4] {
        let [t0, t1] = self.tpid.to_be_bytes();
        let [c0, c1] = self.tci.to_be_bytes();
        [t0, t1, c0, c1]
    }
}

/// The Ethernet header: addresses and VLAN tags, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub tags: Vec<VlanTag>,
}

impl Ethernet {
    pub fn new(dst: MacAddr, src: MacAddr) -> Self {
        Self {
            dst,
            src,
            tags: Vec::new(),
        }
    }

    /// Adds a tag inside those already there.
    pub fn tagged(mut self, tag: VlanTag) -> Self {
        self.tags.push(tag);
        self
    }

    /// The whole frame: header, tags, `ethertype`, `payload`.
    pub fn frame(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(ETH_HLEN + VLAN_HLEN * self.tags.len() + payload.len());
        frame.extend_from_slice(&self.dst.0);
        frame.extend_from_slice(&self.src.0);
        for tag in &self.tags {
            frame.extend_from_slice(&tag.bytes());
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
}

/// The outermost VLAN tag of `frame`, if its EtherType is one of `tpids`.
pub fn outer_tag(frame: &[u8], tpids: &[u16]) -> Option<VlanTag> {
    let tpid = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let tci = u16::from_be_bytes(frame.get(14..16)?.try_into().ok()?);
    tpids.contains(&tpid).then_some(VlanTag { tpid, tci })
}

/// `frame` without its outermost tag, as the kernel leaves it after moving the tag into
/// the socket buffer's metadata.
///
/// # Panics
/// When `frame` is shorter than an Ethernet header with one tag.
pub fn without_outer_tag(frame: &[u8]) -> Vec<u8> {
    assert!(
        frame.len() >= ETH_HLEN + VLAN_HLEN,
        "a {}-byte frame has no tag",
        frame.len()
    );
    [&frame[..12], &frame[12 + VLAN_HLEN..]].concat()
}

/// `frame` with `tag` inserted after the addresses, as tcpdump records a frame whose
/// tag the kernel kept in metadata.
///
/// # Panics
/// When `frame` is shorter than an Ethernet header.
pub fn with_outer_tag(frame: &[u8], tag: VlanTag) -> Vec<u8> {
    assert!(
        frame.len() >= ETH_HLEN,
        "a {}-byte frame has no Ethernet header",
        frame.len()
    );
    [&frame[..12], &tag.bytes()[..], &frame[12..]].concat()
}

/// The Internet checksum (RFC 1071) of `chunks` taken as one byte string.
pub fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let bytes = chunks.iter().flat_map(|chunk| chunk.iter().copied());
    let mut sum = 0u32;
    let mut high = None;
    for byte in bytes {
        match high.take() {
            None => high = Some(byte),
            Some(h) => sum += u32::from(u16::from_be_bytes([h, byte])),
        }
    }
    if let Some(h) = high {
        sum += u32::from(h) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP flag bits.
pub mod tcpflags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A TCP segment without options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A connection's first segment.
    pub fn syn(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            seq: 1000,
            ack: 0,
            flags: tcpflags::SYN,
            payload: Vec::new(),
        }
    }

    /// An acknowledging segment carrying `payload`.
    pub fn data(sport: u16, dport: u16, payload: Vec<u8>) -> Self {
        Self {
            sport,
            dport,
            seq: 1001,
            ack: 5001,
            flags: tcpflags::ACK | tcpflags::PSH,
            payload,
        }
    }

    pub fn with_flags(self, flags: u8) -> Self {
        Self { flags, ..self }
    }

    /// The segment with its checksum over `pseudo_header`.
    fn bytes(&self, pseudo_header: &[u8]) -> Vec<u8> {
        let mut segment = Vec::with_capacity(20 + self.payload.len());
        segment.extend_from_slice(&self.sport.to_be_bytes());
        segment.extend_from_slice(&self.dport.to_be_bytes());
        segment.extend_from_slice(&self.seq.to_be_bytes());
        segment.extend_from_slice(&self.ack.to_be_bytes());
        segment.extend_from_slice(&[5 << 4, self.flags]); // data offset 5 words
        segment.extend_from_slice(&64240u16.to_be_bytes()); // window
        segment.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        segment.extend_from_slice(&self.payload);
        let checksum = internet_checksum(&[pseudo_header, &segment]);
        segment[16..18].copy_from_slice(&checksum.to_be_bytes());
        segment
    }
}

/// A UDP datagram, checksum over `pseudo_header`.
fn udp_bytes(sport: u16, dport: u16, payload: &[u8], pseudo_header: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("a UDP payload under 64 KiB");
    let mut datagram = Vec::with_capacity(usize::from(len));
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&dport.to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let checksum = match internet_checksum(&[pseudo_header, &datagram]) {
        0 => 0xffff, // 0 means "no checksum"
        sum => sum,
    };
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    datagram
}

/// An IPv4 header's fields; its methods build whole packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            id: 1,
        }
    }

    /// A packet of protocol `protocol` carrying `payload` (already checksummed).
    pub fn packet(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + payload.len()).expect("an IPv4 packet under 64 KiB");
        let mut packet = Vec::with_capacity(usize::from(total));
        packet.extend_from_slice(&[0x45, 0]); // version 4, 5-word header; DSCP 0
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&[0x40, 0]); // don't fragment, offset 0
        packet.extend_from_slice(&[self.ttl, protocol, 0, 0]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        let checksum = internet_checksum(&[&packet]);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    fn pseudo_header(&self, protocol: u8, len: usize) -> Vec<u8> {
        let len = u16::try_from(len).expect("a segment under 64 KiB");
        [
            &self.src.octets()[..],
            &self.dst.octets(),
            &[0, protocol],
            &len.to_be_bytes(),
        ]
        .concat()
    }

    pub fn tcp(&self, tcp: &Tcp) -> Vec<u8> {
        let segment = tcp.bytes(&self.pseudo_header(ipproto::TCP, 20 + tcp.payload.len()));
        self.packet(ipproto::TCP, &segment)
    }

    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let pseudo = self.pseudo_header(ipproto::UDP, 8 + payload.len());
        self.packet(ipproto::UDP, &udp_bytes(sport, dport, payload, &pseudo))
    }

    /// An ICMP echo request (`reply` false) or reply.
    pub fn icmp_echo(&self, reply: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut message = vec![if reply { 0 } else { 8 }, 0, 0, 0];
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(payload);
        let checksum = internet_checksum(&[&message]);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
        self.packet(ipproto::ICMP, &message)
    }
}

/// An IPv6 header's fields; its methods build whole packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
        }
    }

    /// A packet whose next header is `next_header`, carrying `payload`.
    pub fn packet(&self, next_header: u8, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(payload.len()).expect("an IPv6 payload under 64 KiB");
        let mut packet = Vec::with_capacity(40 + payload.len());
        packet.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class, no flow label
        packet.extend_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(&[next_header, self.hop_limit]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(payload);
        packet
    }

    fn pseudo_header(&self, next_header: u8, len: usize) -> Vec<u8> {
        let len = u32::try_from(len).expect("a segment under 4 GiB");
        [
            &self.src.octets()[..],
            &self.dst.octets(),
            &len.to_be_bytes(),
            &[0, 0, 0, next_header],
        ]
        .concat()
    }

    pub fn tcp(&self, tcp: &Tcp) -> Vec<u8> {
        let segment = tcp.bytes(&self.pseudo_header(ipproto::TCP, 20 + tcp.payload.len()));
        self.packet(ipproto::TCP, &segment)
    }

    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let pseudo = self.pseudo_header(ipproto::UDP, 8 + payload.len());
        self.packet(ipproto::UDP, &udp_bytes(sport, dport, payload, &pseudo))
    }
}

/// An ARP packet for IPv4 over Ethernet; `reply` false for a request.
pub fn arp(reply: bool, sender: (MacAddr, Ipv4Addr), target: (MacAddr, Ipv4Addr)) -> Vec<u8> {
    let mut packet = Vec::with_capacity(28);
    packet.extend_from_slice(&[0, 1, 8, 0, 6, 4]); // Ethernet, IPv4, address lengths
    packet.extend_from_slice(&(if reply { 2u16 } else { 1 }).to_be_bytes());
    packet.extend_from_slice(&sender.0.0);
    packet.extend_from_slice(&sender.1.octets());
    packet.extend_from_slice(&target.0.0);
    packet.extend_from_slice(&target.1.octets());
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, its complement 0x220d.
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&words]), 0x220d);
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let ip = Ipv4::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let packet = ip.udp(1, 2, b"x");
        assert_eq!(internet_checksum(&[&packet[..20]]), 0);
        let pseudo = ip.pseudo_header(ipproto::UDP, packet.len() - 20);
        assert_eq!(internet_checksum(&[&pseudo, &packet[20..]]), 0);
    }

    #[test]
    fn tags_are_inserted_and_removed_after_the_addresses() {
        let eth = Ethernet::new(MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 0, 1]));
        let plain = eth.frame(ethertype::ARP, &[1, 2]);
        let tag = VlanTag::dot1q(10).priority(5);
        let tagged = eth.clone().tagged(tag).frame(ethertype::ARP, &[1, 2]);
        assert_eq!(with_outer_tag(&plain, tag), tagged);
        assert_eq!(without_outer_tag(&tagged), plain);
        assert_eq!(outer_tag(&tagged, &[ethertype::DOT1Q]), Some(tag));
        assert_eq!(tag.tci, 0xa00a);
        assert_eq!(tag.vid(), 10);
    }
}
