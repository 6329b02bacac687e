//! Where a session counts: an AF_PACKET socket bound to one interface, both
//! directions, with the session's program as its socket filter. The program returns 0,
//! so the socket never queues a packet: it exists only to run the filter.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys;

/// The interface index of `name` in this network namespace, if it exists; 0 for
/// `any`, every interface (an unbound packet socket), which always exists.
pub fn ifindex(name: &str) -> Option<u32> {
    if name == capstats_ebpf::filter::ANY {
        return Some(0);
    }
    // A failed lookup (not a missing interface) counts as missing, as before.
    sys::iface::index(name).ok().flatten()
}

/// Whether `name` is a loopback interface (`IFF_LOOPBACK`), asked of the kernel in
/// this network namespace.
pub fn is_loopback(name: &str) -> bool {
    match flags(name) {
        Some(flags) => flags & libc::IFF_LOOPBACK != 0,
        None => name == "lo",
    }
}

/// The state of interface `name` as `ip link` shows it: `up`, `down`
/// (administratively), `no-carrier` (up, its lower layer not: `IFF_RUNNING` clear);
/// `None` when there is no such interface, and for `any`.
pub fn state(name: &str) -> Option<&'static str> {
    if name == capstats_ebpf::filter::ANY {
        return None;
    }
    let flags = flags(name)?;
    Some(if flags & libc::IFF_UP == 0 {
        "down"
    } else if flags & libc::IFF_RUNNING == 0 {
        "no-carrier"
    } else {
        "up"
    })
}

/// The interface's flags (`SIOCGIFFLAGS`) in this network namespace.
fn flags(name: &str) -> Option<i32> {
    sys::iface::flags(name).ok()
}

/// Interface indexes looked up at most once each while one request is answered: a
/// `poll` of many sessions on one interface asks the kernel once, not once a session.
#[derive(Debug, Default)]
pub struct Interfaces {
    seen: std::cell::RefCell<std::collections::HashMap<String, Option<u32>>>,
}

impl Interfaces {
    /// [`state`], asked at each call (it changes without the index changing).
    pub fn state(&self, name: &str) -> Option<&'static str> {
        state(name)
    }

    pub fn ifindex(&self, name: &str) -> Option<u32> {
        *self
            .seen
            .borrow_mut()
            .entry(name.to_owned())
            .or_insert_with(|| ifindex(name))
    }
}

/// The interface tcpdump would pick: the first one libpcap lists that is up and is
/// not a loopback.
pub fn default_interface() -> Result<String, String> {
    let devices = pcap::Device::list().map_err(|e| format!("cannot list interfaces: {e}"))?;
    devices
        .into_iter()
        .find(|d| {
            d.flags.is_up()
                && !d.flags.is_loopback()
                && d.name != "any"
                && ifindex(&d.name).is_some()
        })
        .map(|d| d.name)
        .ok_or_else(|| {
            "no interface is up (other than loopback): name one with `interface IF`".into()
        })
}

/// An AF_PACKET socket whose filter counts.
#[derive(Debug)]
pub struct CountingSocket {
    fd: OwnedFd,
}

impl CountingSocket {
    /// A packet socket that receives nothing until [`CountingSocket::bind`]: raw (the
    /// packet from its link-layer header), or, for `any`, `SOCK_DGRAM` (from its
    /// network header, as libpcap's cooked socket there).
    pub fn new(cooked: bool) -> io::Result<Self> {
        Ok(Self {
            fd: sys::packet::socket_unbound(cooked)?,
        })
    }

    /// Starts receiving every protocol on `ifindex` (0: on every interface of the
    /// namespace, those that appear later too), both directions. Attach the filter
    /// first, so that no packet passes unfiltered.
    pub fn bind(&self, ifindex: u32) -> io::Result<()> {
        sys::packet::bind_all(&self.fd, ifindex)
    }
}

impl AsFd for CountingSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether an XDP program runs in generic mode on interface `ifindex` (whoever
/// attached it), as `ip link` reports it: `RTM_GETLINK`, `IFLA_XDP`.
pub fn xdp_generic(ifindex: u32) -> io::Result<bool> {
    const RTM_GETLINK: u16 = 18;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_ATTACHED: u16 = 2;
    const IFLA_XDP_SKB_PROG_ID: u16 = 6;
    const XDP_ATTACHED_SKB: u8 = 2;
    const XDP_ATTACHED_MULTI: u8 = 4;
    let fd = sys::netlink::route_socket()?;
    // struct nlmsghdr, then struct ifinfomsg with the index.
    let mut request = [0u8; 32];
    request[0..4].copy_from_slice(&32u32.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    sys::netlink::send_to_kernel(&fd, &request)?;
    let mut answer = vec![0u8; 64 * 1024];
    let n = sys::netlink::receive(&fd, &mut answer)?;
    let answer = &answer[..n];
    if answer.len() < 32 || u16::from_ne_bytes([answer[4], answer[5]]) == NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "no link information for interface index {ifindex}"
        )));
    }
    let len = (u32::from_ne_bytes(answer[0..4].try_into().unwrap()) as usize).min(answer.len());
    let Some(xdp) = attribute(&answer[32..len], IFLA_XDP) else {
        return Ok(false);
    };
    Ok(
        match attribute(xdp, IFLA_XDP_ATTACHED).and_then(|v| v.first()) {
            Some(&XDP_ATTACHED_SKB) => true,
            Some(&XDP_ATTACHED_MULTI) => attribute(xdp, IFLA_XDP_SKB_PROG_ID).is_some(),
            _ => false,
        },
    )
}

/// The value of the first netlink attribute of type `kind` in `attributes`.
fn attribute(mut attributes: &[u8], kind: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let len = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER are the top bits of the type.
        let this = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        if len < 4 || len > attributes.len() {
            return None;
        }
        if this == kind {
            return Some(&attributes[4..len]);
        }
        attributes = &attributes[((len + 3) & !3).min(attributes.len())..];
    }
    None
}
