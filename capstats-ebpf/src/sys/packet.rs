//! AF_PACKET sockets: a frame sent out of an interface (`sendto` with a `sockaddr_ll`:
//! nix builds that address only from raw memory), the interface a socket is bound to,
//! and a socket made to receive nothing.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sends `frame` (an Ethernet frame, at least its 14-byte header) through the AF_PACKET
/// socket `socket` out of interface `ifindex`, `skb->protocol` set to the frame's
/// EtherType as a receiving device would set it. Returns the bytes sent; `EINVAL`,
/// before any call, for a frame shorter than its header.
pub fn send_frame(socket: impl AsFd, ifindex: i32, frame: &[u8]) -> io::Result<usize> {
    let Some(header) = frame.get(..14) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = u16::from_ne_bytes([header[12], header[13]]);
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&header[..6]);
    // SAFETY: the buffer and the address are valid for the lengths passed and alive
    // across the call, which only reads them; the fd is borrowed, so open.
    let sent = unsafe {
        libc::sendto(
            socket.as_fd().as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// The index of the interface the AF_PACKET socket `socket` is bound to
/// (`getsockname`): 0 for a socket bound to none (every interface, libpcap's `any`),
/// -1 once its interface has gone (the kernel's `packet_notifier` unbinds it then).
pub fn bound_ifindex(socket: impl AsFd) -> io::Result<i32> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the address and its length are valid for writes of the length passed
    // and alive across the call; the fd is borrowed, so open.
    let rc = unsafe {
        libc::getsockname(
            socket.as_fd().as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.sll_family) != libc::AF_PACKET {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    }
    Ok(addr.sll_ifindex)
}

/// The protocol a socket made deaf ([`stop_receiving`]) is bound to: the largest
/// 802.3 length, which no link layer in the kernel gives a frame as its protocol
/// (Ethernet's `eth_type_trans` turns lengths into `ETH_P_802_3` or `ETH_P_802_2`; no
/// `ETH_P_` value is it). Its `ptype_base` bucket (its low 4 bits, 15) is none of IPv4's,
/// IPv6's, ARP's or VLAN's.
pub const NO_FRAME_PROTOCOL: u16 = 0x05ff;

/// Makes the AF_PACKET socket `socket`, bound to interface `ifindex` (0: to every
/// interface), receive nothing from now on while it stays open, for a socket kept open
/// for something other than reading packets (a live handle kept to compile filters),
/// which would otherwise have every packet of its interface copied into it, and cost
/// every packet the interface sends a clone.
///
/// Binding with protocol 0 does not do it: `packet_bind` reads protocol 0 as the
/// socket's own (`sll_protocol ? : po->num`), and the kernel has no call that takes a
/// socket's protocol hook away for good. So the socket gets a filter that takes no
/// packet (`SO_ATTACH_FILTER`, `ret #0`), and is bound again, on the same interface,
/// to [`NO_FRAME_PROTOCOL`]: `packet_do_bind` takes its hook out of the list every
/// packet of the interface (or of every interface) goes through (`ptype_all`), which
/// sent interfaces' packets a clone each, and hooks it for that protocol only, which
/// no frame has; one given it all the same (a tun device's user can name any protocol)
/// meets the filter. Waits for an RCU grace period (`synchronize_net`) when the socket
/// was hooked.
pub fn stop_receiving(socket: impl AsFd, ifindex: i32) -> io::Result<()> {
    let fd = socket.as_fd().as_raw_fd();
    // ret #0: no packet is taken.
    let mut take_nothing = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: take_nothing.len() as u16,
        filter: take_nothing.as_mut_ptr(),
    };
    // SAFETY: the program and the instructions it points to are valid for the length
    // passed and alive across the call, which copies them; the fd is borrowed, so open.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = NO_FRAME_PROTOCOL.to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: the address is valid for the length passed and alive across the call,
    // which only reads it; the fd is borrowed, so open.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_frame_is_refused_and_a_socket_that_is_no_packet_socket_says_why() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let error = send_frame(&file, 1, &[0; 13]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
        let error = send_frame(&file, 1, &[0; 60]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK), "{error}");
        for error in [
            bound_ifindex(&file).unwrap_err(),
            stop_receiving(&file, 1).unwrap_err(),
        ] {
            assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK), "{error}");
        }
    }
}
