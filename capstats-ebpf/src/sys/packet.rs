//! Sending a frame out of an interface through an AF_PACKET socket (`sendto` with a
//! `sockaddr_ll`: nix builds that address only from raw memory).

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
    }
}
