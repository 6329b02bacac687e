//! The `bpf(2)` commands the daemon needs and aya does not offer publicly: opening
//! whatever object is pinned at a path (`BPF_OBJ_GET`) and detaching a link at once
//! (`BPF_LINK_DETACH`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr`, zeroed past the fields each command reads: 128 bytes covers
/// every command's fields here (the kernel requires the unused tail to be zero).
type Attr = [u64; 16];

/// `bpf(cmd, attr, sizeof attr)`.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, 8-byte-aligned buffer of the size passed,
    // alive across the call; the kernel reads (and for some commands writes) within
    // that size only. Pointers the caller stored in it (a path) outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<Attr>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens the object pinned at `path` (a program, map or link), closed on exec.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr: Attr = [0; 16];
    attr[0] = name.as_ptr() as u64; // obj_get.pathname, read during the call
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    drop(name);
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link `link` at once, whoever else holds it: its program stops running
/// now, not when the last reference goes.
pub fn link_detach(link: impl AsFd) -> io::Result<()> {
    let mut attr: Attr = [0; 16];
    attr[0] = link.as_fd().as_raw_fd() as u64; // link_detach.link_fd
    bpf(BPF_LINK_DETACH, &mut attr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obj_get_names_a_missing_pin_as_missing() {
        let missing = Path::new("/sys/fs/bpf/capstats-no-such-pin-for-a-test");
        let error = obj_get(missing).unwrap_err();
        // ENOENT where bpffs is mounted and we may look; EPERM without privileges.
        assert!(
            matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EPERM)),
            "{error}"
        );
        let error = obj_get(Path::new("a\0b")).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
    }

    #[test]
    fn link_detach_refuses_what_is_not_a_link() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let error = link_detach(&file).unwrap_err();
        // EBADF/EINVAL for a non-BPF fd; EPERM without privileges.
        assert!(
            matches!(
                error.raw_os_error(),
                Some(libc::EBADF | libc::EINVAL | libc::EPERM)
            ),
            "{error}"
        );
    }
}
