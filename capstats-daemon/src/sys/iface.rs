//! Interfaces by name, in this network namespace: their index and their flags.

use std::io;
use std::os::fd::AsRawFd;

/// The index of interface `name` (`if_nametoindex(3)`); `Ok(None)` when there is no
/// such interface (or the name cannot be one: too long, a NUL inside).
pub fn index(name: &str) -> io::Result<Option<u32>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Ok(None);
    }
    match nix::net::if_::if_nametoindex(name) {
        Ok(0) => Ok(None),
        Ok(index) => Ok(Some(index)),
        Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO) => Ok(None),
        Err(errno) => Err(super::io(errno)),
    }
}

/// The flags of interface `name` (`SIOCGIFFLAGS`: `IFF_UP`, `IFF_RUNNING`,
/// `IFF_LOOPBACK`...), asked through a datagram socket made for the purpose.
pub fn flags(name: &str) -> io::Result<libc::c_int> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses),
    // for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name is shorter than IFNAMSIZ (checked above): the zero after it ends it.
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags, both inside the ifreq
    // that `request` is, which lives across the call; the fd is open (owned by
    // `socket`).
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the kernel wrote ifru_flags (a c_short); every
    // bit pattern is a valid c_short.
    Ok(libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_flagged() {
        let index = index("lo").unwrap().expect("lo exists in every namespace");
        assert!(index > 0);
        let flags = flags("lo").unwrap();
        assert_ne!(flags & libc::IFF_LOOPBACK, 0, "{flags:#x}");
    }

    #[test]
    fn names_that_cannot_be_interfaces_are_absent() {
        for name in [
            "",
            "no-such-if0",
            "a\0b",
            "sixteen-chars-xx",
            &"x".repeat(300),
        ] {
            assert_eq!(index(name).unwrap(), None, "{name:?}");
            assert!(flags(name).is_err(), "{name:?}");
        }
    }
}
