//! A unix socket peer's credentials, as the kernel recorded them when it connected
//! (or, for a listener, when it began to listen).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{getsockopt, sockopt};

/// `SO_PEERCRED`: the peer's pid, uid and gid.
pub fn peer_cred(fd: impl AsFd) -> io::Result<(i32, u32, u32)> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials).map_err(super::io)?;
    Ok((cred.pid(), cred.uid(), cred.gid()))
}

/// `SO_PEERGROUPS` (Linux 4.13; `nix` does not offer it): the peer's supplementary
/// groups.
pub fn peer_groups(fd: impl AsFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the pointer and `len` describe the writable buffer `groups` (u32s,
        // which gid_t is), alive across the call; the kernel writes at most `len`
        // bytes and sets `len` to the size it needs. The fd is borrowed, so open.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(error);
    }
}
