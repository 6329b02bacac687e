//! rtnetlink sockets (`NETLINK_ROUTE`): interface announcements and link queries.
//! `nix` covers every call; the messages themselves are built and parsed by the
//! callers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

/// A new `NETLINK_ROUTE` socket, closed on exec.
pub fn route_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(super::io)
}

/// Subscribes `fd` to the multicast `groups` (a mask of `RTMGRP_*`).
pub fn subscribe(fd: impl AsFd, groups: u32) -> io::Result<()> {
    bind(fd.as_fd().as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(super::io)
}

/// Sends one datagram (a request) to the kernel.
pub fn send_to_kernel(fd: impl AsFd, datagram: &[u8]) -> io::Result<()> {
    send(fd.as_fd().as_raw_fd(), datagram, MsgFlags::empty()).map_err(super::io)?;
    Ok(())
}

/// Waits for the next datagram and returns its length; interrupted waits are
/// resumed. `ENOBUFS` (announcements were dropped) is returned as an error for the
/// caller to act on.
pub fn receive(fd: impl AsFd, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match recv(fd.as_fd().as_raw_fd(), buffer, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(super::io),
        }
    }
}

/// [`receive`] without waiting: `WouldBlock` when no datagram is there (for a socket
/// the runtime polls).
pub fn receive_now(fd: impl AsFd, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match recv(fd.as_fd().as_raw_fd(), buffer, MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(super::io),
        }
    }
}
