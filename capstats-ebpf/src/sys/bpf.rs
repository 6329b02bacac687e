//! The `bpf(2)` commands this crate makes itself, aya 0.14 offering them only for
//! objects loaded from object files: creating maps ([`Map::create`]), their element
//! and batch updates, loading programs ([`prog_load`]), reading a program's info
//! ([`prog_info`]), pinning ([`obj_pin`]) and opening a pin ([`obj_get`]), and
//! detaching a link at once ([`link_detach`]). The daemon makes its `bpf(2)` calls
//! through these too: this is the workspace's one `bpf()` system call.
//!
//! A [`Map`] carries its key and value types, with which it was created: the kernel
//! reads (and for some commands writes) exactly the sizes it was created with through
//! the pointers passed, so a typed map makes every element command sound by
//! construction.

use std::ffi::{CStr, CString, c_char};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_map_info, bpf_map_type, bpf_prog_info, bpf_prog_type,
};

/// The kernel's longest object name (`BPF_OBJ_NAME_LEN` less its NUL).
pub const NAME_LEN: usize = 15;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
    impl<const N: usize> Sealed for [u8; N] {}
}

/// A map key or value the kernel may read and write as bytes: an integer or an array
/// of bytes (no padding, every bit pattern valid). Sealed: only the types listed here.
pub trait Plain: Copy + sealed::Sealed {}
impl Plain for u32 {}
impl Plain for u64 {}
impl<const N: usize> Plain for [u8; N] {}

/// A `union bpf_attr` of zeroes, as every command wants its unused bytes.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integer fields, structs of integers and arrays
    // of them; all-zero bytes are a valid value of each.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, sizeof attr)`: the call's return value, or errno as an error.
///
/// # Safety
/// Every pointer stored in `attr` for `cmd` must be valid for the kernel to read (and,
/// where `cmd` writes back, to write) as many bytes as the other fields of `attr` say,
/// for the duration of the call.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed, alive across
    // the call; the pointers inside it are the caller's to vouch for (see above).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The new descriptor a successful `BPF_MAP_CREATE` or `BPF_PROG_LOAD` returned.
fn new_fd(rc: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just made `fd` for this call, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `name`, truncated to [`NAME_LEN`] bytes, as the kernel's NUL-padded name field.
fn object_name(name: &str) -> [c_char; NAME_LEN + 1] {
    let mut field = [0 as c_char; NAME_LEN + 1];
    for (dst, src) in field.iter_mut().zip(name.bytes().take(NAME_LEN)) {
        *dst = src as c_char;
    }
    field
}

/// A length the kernel takes as a u32; `EINVAL` when it does not fit.
fn count(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A map of `K` → `V`, owned through its descriptor.
#[derive(Debug)]
pub struct Map<K: Plain, V: Plain> {
    fd: OwnedFd,
    types: PhantomData<fn(K) -> V>,
}

impl<K: Plain, V: Plain> Map<K, V> {
    /// `BPF_MAP_CREATE` of a `map_type` map with `max_entries` entries of `K` → `V`,
    /// `flags` (`map_flags`), named `name` (truncated to [`NAME_LEN`]), and for a map
    /// of maps the map `inner` its entries are shaped like.
    pub fn create(
        map_type: bpf_map_type,
        name: &str,
        max_entries: u32,
        flags: u32,
        inner: Option<BorrowedFd<'_>>,
    ) -> io::Result<Self> {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_1.map_type = map_type as u32;
        attr.__bindgen_anon_1.map_flags = flags;
        attr.__bindgen_anon_1.key_size = size_of::<K>() as u32;
        attr.__bindgen_anon_1.value_size = size_of::<V>() as u32;
        attr.__bindgen_anon_1.max_entries = max_entries;
        if let Some(inner) = inner {
            attr.__bindgen_anon_1.inner_map_fd = inner.as_raw_fd() as u32;
        }
        attr.__bindgen_anon_1.map_name = object_name(name);
        // SAFETY: map creation reads no pointer: every field is a value.
        let rc = unsafe { bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)? };
        Ok(Self {
            fd: new_fd(rc)?,
            types: PhantomData,
        })
    }

    /// `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`): entry `key` holds `value`, atomically.
    pub fn update(&self, key: &K, value: &V) -> io::Result<()> {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = self.fd.as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = key as *const K as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = value as *const V as u64;
        // SAFETY: the kernel reads key_size (size_of K) bytes at `key` and value_size
        // (size_of V) bytes at `value`, the sizes this map was created with; both are
        // borrowed for the call.
        unsafe { bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)? };
        Ok(())
    }

    /// `BPF_MAP_DELETE_ELEM` of `key`; `ENOENT` when the entry is not there (or, in
    /// an array, is empty already).
    pub fn delete(&self, key: &K) -> io::Result<()> {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = self.fd.as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = key as *const K as u64;
        // SAFETY: the kernel reads key_size (size_of K) bytes at `key`, borrowed for
        // the call.
        unsafe { bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr)? };
        Ok(())
    }

    /// `BPF_MAP_LOOKUP_ELEM` of `key`: its value, or `None` when the entry is not there
    /// (`ENOENT`; an empty entry of a map of maps). From user space a map of maps
    /// answers the inner map's id, not a descriptor.
    pub fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = std::mem::MaybeUninit::<V>::zeroed();
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = self.fd.as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = key as *const K as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
        // SAFETY: the kernel reads key_size (size_of K) bytes at `key` and writes
        // value_size (size_of V) bytes at `value`, the sizes this map was created with;
        // both are borrowed for the call.
        match unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            // SAFETY: zeroed at first, and every `Plain` type is valid for any bytes.
            Ok(_) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a change to this map with `write` (given a descriptor of its own) on a
    /// thread of its own, and returns as soon as `written` says programs see it, or
    /// when `write` returns, whichever comes first: for the kernel's waits after the
    /// change is made (an RCU grace period after an update of a map of maps, or after
    /// a prog array's entry is taken out of its callers' code) that the caller does not
    /// need. `written` must only hold once `write` has read everything it was given
    /// (the kernel writes first and waits after); where it holds before, or with no
    /// thread to spare, `write` runs here. The thread ends when the kernel's wait does.
    pub fn write_unwaited(
        &self,
        write: impl Fn(&Self) -> io::Result<()> + Send + Sync + 'static,
        written: impl Fn(&Self) -> io::Result<bool>,
    ) -> io::Result<()>
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        // A change that reads back as made already would not tell when it is made (and
        // a later change could overtake it): made here, waiting.
        if written(self).unwrap_or(true) {
            return write(self);
        }
        let write = std::sync::Arc::new(write);
        let (map, on_thread) = (self.try_clone()?, std::sync::Arc::clone(&write));
        let (done, result) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("capstats-write".into())
            .spawn(move || drop(done.send(on_thread(&map))));
        if spawned.is_err() {
            return write(self);
        }
        let ended = || io::Error::other("the thread writing it ended");
        loop {
            match result.try_recv() {
                Ok(result) => return result,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(ended()),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            match written(self) {
                Ok(true) => return Ok(()),
                Ok(false) => std::thread::yield_now(),
                // Cannot tell: wait for the write itself.
                Err(_) => return result.recv().map_err(|_| ended())?,
            }
        }
    }

    /// Another descriptor of the same map, for a thread of its own.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            types: PhantomData,
        })
    }

    /// `BPF_MAP_UPDATE_BATCH`: entry `keys[i]` holds `values[i]`, in one call. Nothing
    /// to write returns at once; `EINVAL`, before any call, when the two lengths
    /// differ.
    pub fn update_batch(&self, keys: &[K], values: &[V]) -> io::Result<()> {
        if keys.len() != values.len() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut attr = zeroed_attr();
        attr.batch.map_fd = self.fd.as_raw_fd() as u32;
        attr.batch.keys = keys.as_ptr() as u64;
        attr.batch.values = values.as_ptr() as u64;
        attr.batch.count = count(keys.len())?;
        // SAFETY: the kernel reads `count` keys of key_size (size_of K) bytes and as
        // many values of value_size (size_of V) bytes: the two slices, of that length
        // each, borrowed for the call. It writes back only into `attr` (the count
        // done).
        unsafe { bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)? };
        Ok(())
    }
}

impl<K: Plain, V: Plain> AsFd for Map<K, V> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`prog_load`] loads.
#[derive(Debug, Clone, Copy)]
pub struct ProgLoad<'a> {
    pub prog_type: bpf_prog_type,
    /// `expected_attach_type`, for the program types that want one (XDP).
    pub attach_type: Option<bpf_attach_type>,
    /// `prog_flags` (`BPF_F_XDP_HAS_FRAGS`, ...).
    pub flags: u32,
    /// Truncated to [`NAME_LEN`].
    pub name: &'a str,
    /// The instructions in the kernel's encoding, map references as fds.
    pub insns: &'a [[u8; 8]],
    pub license: &'a CStr,
}

/// `BPF_PROG_LOAD` of `load`, once; with `log`, the verifier writes its log there
/// (level 1), and says `ENOSPC` when it does not fit.
pub fn prog_load(load: &ProgLoad<'_>, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_3.prog_type = load.prog_type as u32;
    if let Some(attach_type) = load.attach_type {
        attr.__bindgen_anon_3.expected_attach_type = attach_type as u32;
    }
    attr.__bindgen_anon_3.prog_flags = load.flags;
    attr.__bindgen_anon_3.insn_cnt = count(load.insns.len())?;
    attr.__bindgen_anon_3.insns = load.insns.as_ptr() as u64;
    attr.__bindgen_anon_3.license = load.license.as_ptr() as u64;
    attr.__bindgen_anon_3.prog_name = object_name(load.name);
    if let Some(log) = log {
        attr.__bindgen_anon_3.log_level = 1;
        attr.__bindgen_anon_3.log_size = count(log.len())?;
        attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: the kernel reads insn_cnt 8-byte instructions at `insns` (the slice, of
    // that length), the NUL-terminated license, and writes at most log_size bytes at
    // `log_buf` (the mutable slice, of that length); all are borrowed for the call.
    let rc = unsafe { bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)? };
    new_fd(rc)
}

/// What [`prog_info`] reads of a loaded program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgInfo {
    /// The kernel's id (`bpftool prog show id N`).
    pub id: u32,
    /// Instructions its verifier processed to accept it.
    pub verified_insns: u32,
}

/// The kernel's info structs [`obj_info`] fills.
///
/// # Safety
/// Only for C structs of integers (pointers as u64s), for which all-zero bytes are a
/// valid value and zero pointers ask the kernel for no arrays.
unsafe trait ObjInfo: Sized {}
// SAFETY: both are bindgen's C structs of integers and u64 pointers.
unsafe impl ObjInfo for bpf_prog_info {}
// SAFETY: as above.
unsafe impl ObjInfo for bpf_map_info {}

/// `BPF_OBJ_GET_INFO_BY_FD` of the object behind `fd`, as `T` says (a program's, a
/// map's).
fn obj_info<T: ObjInfo>(fd: BorrowedFd<'_>) -> io::Result<T> {
    // SAFETY: an `ObjInfo` is a C struct of integers; all-zero bytes are a valid value,
    // and its zero pointers ask the kernel for no arrays.
    let mut info: T = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<T>() as u32;
    attr.info.info = &mut info as *mut T as u64;
    // SAFETY: the kernel writes at most info_len bytes at `info`: the struct, of that
    // size, borrowed mutably for the call; its array pointers are zero, so it writes
    // nowhere else.
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    Ok(info)
}

/// `BPF_OBJ_GET_INFO_BY_FD` of the program behind `fd`.
pub fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    let info: bpf_prog_info = obj_info(fd)?;
    Ok(ProgInfo {
        id: info.id,
        verified_insns: info.verified_insns,
    })
}

/// `BPF_OBJ_GET_INFO_BY_FD` of the map behind `fd`: its id (`bpftool map show id N`).
pub fn map_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let info: bpf_map_info = obj_info(fd)?;
    Ok(info.id)
}

/// `path` as the NUL-terminated string the kernel reads; a path with a NUL byte is
/// `InvalidInput`.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `BPF_OBJ_PIN`: pins the object behind `fd` (a map, a program, a link) at `path` on
/// a bpffs, so that it outlives every process holding it. A path with a NUL byte is
/// `InvalidInput`, before any call.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let text = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = text.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    // SAFETY: the kernel reads the NUL-terminated path at `pathname`, which `text`
    // keeps alive across the call.
    unsafe { bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr)? };
    Ok(())
}

/// `BPF_OBJ_GET`: opens the object pinned at `path` (a map, a program, a link), closed
/// on exec. A path with a NUL byte is `InvalidInput`, before any call.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let text = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = text.as_ptr() as u64;
    // SAFETY: the kernel reads the NUL-terminated path at `pathname`, which `text`
    // keeps alive across the call; file_flags 0 asks for read and write.
    let rc = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)? };
    new_fd(rc)
}

/// `BPF_LINK_DETACH`: detaches the link behind `link` at once, whoever else holds it:
/// its program stops running now, not when the last reference goes.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    // SAFETY: link detach reads no pointer: its one field is a value.
    unsafe { bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr)? };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map wrapper around a descriptor that is no map at all.
    fn not_a_map<K: Plain, V: Plain>() -> Map<K, V> {
        Map {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            types: PhantomData,
        }
    }

    /// What the kernel says to a map or program command on a file that is neither:
    /// EBADF or EINVAL, or EPERM without the privileges to ask.
    fn refused(error: &io::Error) -> bool {
        matches!(
            error.raw_os_error(),
            Some(libc::EBADF | libc::EINVAL | libc::EPERM)
        )
    }

    #[test]
    fn element_commands_on_a_file_that_is_no_map_return_the_errno() {
        let map = not_a_map::<u64, u32>();
        let error = map.update(&1, &2).unwrap_err();
        assert!(refused(&error), "{error}");
        let error = map.delete(&1).unwrap_err();
        assert!(refused(&error), "{error}");
        let error = map.update_batch(&[1, 2], &[3, 4]).unwrap_err();
        assert!(refused(&error), "{error}");
    }

    /// A batch whose keys and values differ in number is refused before the kernel
    /// could read past the shorter slice (that nothing is written is checked on a real
    /// map below); an empty one makes no call at all (a call on this fd would fail).
    #[test]
    fn a_batch_is_checked_before_the_call() {
        let map = not_a_map::<u32, u32>();
        let error = map.update_batch(&[1, 2], &[3]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
        map.update_batch(&[], &[]).unwrap();
    }

    #[test]
    fn prog_info_and_pin_on_a_file_that_is_no_program_return_the_errno() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let error = prog_info(file.as_fd()).unwrap_err();
        assert!(refused(&error), "{error}");
        let error = obj_pin(file.as_fd(), Path::new("a\0b")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    }

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
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    }

    #[test]
    fn link_detach_refuses_what_is_not_a_link() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let error = link_detach(file.as_fd()).unwrap_err();
        assert!(refused(&error), "{error}");
    }

    #[test]
    fn names_are_cut_to_the_kernels_length_and_nul_padded() {
        let field = object_name("a-name-longer-than-fifteen");
        let bytes: Vec<u8> = field.iter().map(|&c| c as u8).collect();
        assert_eq!(&bytes[..NAME_LEN], b"a-name-longer-t");
        assert_eq!(bytes[NAME_LEN], 0);
        assert!(object_name("ab")[2..].iter().all(|&c| c == 0));
    }

    /// The wrappers against the kernel: needs root (`--features kernel-tests`, run by
    /// `cargo xtask test`), and fails without it.
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn maps_and_programs_round_trip_through_the_kernel() {
        use std::path::PathBuf;

        let hash = Map::<u64, u32>::create(
            bpf_map_type::BPF_MAP_TYPE_HASH,
            "sys_test_hash",
            4,
            1, // BPF_F_NO_PREALLOC
            None,
        )
        .expect("creating a map (needs root)");
        hash.update(&7, &70).unwrap();
        hash.delete(&7).unwrap();
        let error = hash.delete(&7).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
        // The batch wrote each of its entries: each can be deleted once.
        hash.update_batch(&[1, 2, 3], &[10, 20, 30]).unwrap();
        for key in [1, 2, 3] {
            hash.delete(&key).unwrap();
        }
        // Keys and values of different numbers: refused, nothing written (the kernel
        // would have read a value past the slice's end for key 2).
        let error = hash.update_batch(&[1, 2], &[10]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
        let error = hash.delete(&1).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
        // Five entries do not fit in four.
        let error = hash.update_batch(&[1, 2, 3, 4, 5], &[0; 5]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::E2BIG), "{error}");

        // r0 = 0; exit
        let insns = [[0xb7, 0, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
        let load = ProgLoad {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
            attach_type: None,
            flags: 0,
            name: "sys_test_prog",
            insns: &insns,
            license: c"GPL",
        };
        let mut log = vec![0u8; 4096];
        let program = prog_load(&load, Some(&mut log)).unwrap();
        let info = prog_info(program.as_fd()).unwrap();
        assert_ne!(info.id, 0);
        assert_eq!(info.verified_insns, 2);

        // Pinned, opened again through its pin: the same program. A program is no
        // link: detaching it is refused.
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/capstats-sys-test-{}",
            std::process::id()
        ));
        obj_pin(program.as_fd(), &pin).expect("pinning (needs a bpffs at /sys/fs/bpf)");
        let opened = obj_get(&pin);
        std::fs::remove_file(&pin).unwrap();
        let opened = opened.unwrap();
        assert_eq!(prog_info(opened.as_fd()).unwrap().id, info.id);
        let error = link_detach(opened.as_fd()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");

        let chain = Map::<u32, u32>::create(
            bpf_map_type::BPF_MAP_TYPE_PROG_ARRAY,
            "sys_test_chain",
            2,
            0,
            None,
        )
        .unwrap();
        chain.update(&0, &(program.as_raw_fd() as u32)).unwrap();
        chain.delete(&0).unwrap();
        let error = chain.update(&2, &(program.as_raw_fd() as u32)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::E2BIG), "{error}");

        // A verifier's refusal: the log says why, once it fits.
        let bad = [[0x95, 0, 0, 0, 0, 0, 0, 0]]; // exit with r0 unset
        let load = ProgLoad {
            insns: &bad,
            ..load
        };
        let error = prog_load(&load, Some(&mut log)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EACCES), "{error}");
        let text = String::from_utf8_lossy(&log);
        assert!(text.contains("R0 !read_ok"), "{text}");
    }
}
