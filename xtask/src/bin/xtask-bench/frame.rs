//! Ethernet frames for the benchmark, built field by field.
//!
//! Each frame is one a real network carries (valid IPv4 header checksum, TCP and UDP
//! checksums over the pseudo-header, plausible payloads), not a buffer that merely
//! passes the filter: the generated program reads the same bytes it would read live.

use std::net::SocketAddrV4;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Locally administered unicast addresses, so no real vendor is named. The daemon bench
/// gives them to the two ends of its veth pair.
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

/// TCP flags of a segment carrying data on an established connection.
const TCP_PSH_ACK: u8 = 0x18;

/// An IPv4/TCP segment with `payload` (PSH|ACK, established connection).
pub fn tcp_ipv4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&0x1c2d_3e4f_u32.to_be_bytes()); // sequence number
    tcp.extend_from_slice(&0x5a6b_7c8d_u32.to_be_bytes()); // acknowledgement number
    tcp.push(5 << 4); // data offset: 5 words, no options
    tcp.push(TCP_PSH_ACK);
    tcp.extend_from_slice(&502u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum (below), urgent pointer
    tcp.extend_from_slice(payload);
    let sum = l4_checksum(src, dst, IPPROTO_TCP, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ethernet(ETH_P_IP, &ipv4(src, dst, IPPROTO_TCP, &tcp))
}

/// An IPv4/UDP datagram with `payload`.
pub fn udp_ipv4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut udp = Vec::with_capacity(len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // checksum (below)
    udp.extend_from_slice(payload);
    let sum = match l4_checksum(src, dst, IPPROTO_UDP, &udp) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ethernet(ETH_P_IP, &ipv4(src, dst, IPPROTO_UDP, &udp))
}

/// `frame` with an 802.1Q tag (priority 0, VLAN `vid`) inserted after the MAC addresses,
/// as it is on a trunk port.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let (macs, rest) = frame.split_at(12);
    let mut tagged = Vec::with_capacity(frame.len() + 4);
    tagged.extend_from_slice(macs);
    tagged.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(rest);
    tagged
}

/// A DNS query for `example.com`, type A, recursion desired.
pub fn dns_query() -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&[0x4a, 0x1f, 0x01, 0x00]); // id, flags: RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question, no other records
    for label in ["example", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // QTYPE A, QCLASS IN
    q
}

/// An NTPv4 client request (mode 3) with a transmit timestamp.
pub fn ntp_request() -> Vec<u8> {
    let mut ntp = vec![0u8; 48];
    ntp[0] = (4 << 3) | 3; // LI 0, version 4, mode 3 (client)
    ntp[40..48].copy_from_slice(&0xeb1c_6a4f_8000_0000_u64.to_be_bytes());
    ntp
}

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn ipv4(src: SocketAddrV4, dst: SocketAddrV4, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = Vec::with_capacity(20 + l4.len());
    ip.push(0x45); // version 4, 5-word header
    ip.push(0); // DSCP/ECN
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&0x3c1au16.to_be_bytes()); // identification
    ip.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment, offset 0
    ip.push(64); // TTL
    ip.push(protocol);
    ip.extend_from_slice(&[0, 0]); // header checksum (below)
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// The TCP/UDP checksum: over the IPv4 pseudo-header and the segment.
fn l4_checksum(src: SocketAddrV4, dst: SocketAddrV4, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src.ip().octets());
    data.extend_from_slice(&dst.ip().octets());
    data.extend_from_slice(&[0, protocol]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    checksum(&data)
}

/// The Internet checksum (RFC 1071): one's complement of the one's complement sum of
/// 16-bit big-endian words, an odd last byte padded with zero.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().expect("test address")
    }

    #[test]
    fn checksums_verify() {
        let frame = udp_ipv4(
            addr("192.0.2.10:53000"),
            addr("192.0.2.53:53"),
            &dns_query(),
        );
        // A header including its checksum sums to zero.
        assert_eq!(checksum(&frame[14..34]), 0);
        let src = addr("192.0.2.10:53000");
        let dst = addr("192.0.2.53:53");
        assert_eq!(l4_checksum(src, dst, IPPROTO_UDP, &frame[34..]), 0);

        let frame = tcp_ipv4(
            addr("192.0.2.10:49152"),
            addr("198.51.100.80:80"),
            b"GET / HTTP/1.1\r\n\r\n",
        );
        assert_eq!(checksum(&frame[14..34]), 0);
        let (src, dst) = (addr("192.0.2.10:49152"), addr("198.51.100.80:80"));
        assert_eq!(l4_checksum(src, dst, IPPROTO_TCP, &frame[34..]), 0);
    }

    #[test]
    fn vlan_tag_goes_after_the_macs() {
        let frame = udp_ipv4(
            addr("192.0.2.10:53000"),
            addr("192.0.2.53:53"),
            &dns_query(),
        );
        let tagged = vlan_tagged(&frame, 100);
        assert_eq!(tagged.len(), frame.len() + 4);
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        assert_eq!(&tagged[18..], &frame[14..]);
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
