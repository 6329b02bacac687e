//! AF_PACKET sockets: created receiving nothing, bound to an interface afterwards, so
//! that a socket filter can be attached before the first packet arrives.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socket, sockopt};

/// `ETH_P_ALL` in network byte order: every protocol, like tcpdump.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A packet socket that receives nothing until [`bind_all`] (protocol 0), closed on
/// exec: raw (packets from their link-layer header) or, `cooked`, `SOCK_DGRAM` (from
/// their network header). Its receive buffer is asked to be minimal.
pub fn socket_unbound(cooked: bool) -> io::Result<OwnedFd> {
    let kind = if cooked {
        SockType::Datagram
    } else {
        SockType::Raw
    };
    let fd =
        socket(AddressFamily::Packet, kind, SockFlag::SOCK_CLOEXEC, None).map_err(super::io)?;
    // Best effort: the kernel raises a small value to its minimum anyway.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &0);
    Ok(fd)
}

/// Starts receiving every protocol on interface `ifindex` (0: every interface of the
/// namespace, those that appear later too), both directions.
pub fn bind_all(fd: impl AsFd, ifindex: u32) -> io::Result<()> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL_BE;
    addr.sll_ifindex = ifindex;
    // SAFETY: the pointer and length describe `addr`, a sockaddr_ll that lives across
    // the call; the kernel only reads it. The fd is borrowed, so open.
    let rc = unsafe {
        libc::bind(
            fd.as_fd().as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
