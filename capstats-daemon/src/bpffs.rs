//! The daemon's objects on bpffs, and every path of them. Under the pin directory
//! (default `/sys/fs/bpf/capstats`):
//!
//! - `<session>/counters`: one directory per session (its name encoded, see
//!   [`Pins::session_dir`]), holding its counter map (and, from an older capstats,
//!   per-session tc links `tc-in` and `tc-out`, removed at start);
//! - `%tc/<interface>/in-link`, `out-link`, `in-chain`, `out-chain`: an interface's
//!   tc links and their chains' prog arrays ([`HookPins`]);
//! - `%xdp/<interface>/native-link` or `generic-link`, and `chain`: its XDP link and
//!   chain.
//!
//! No session name encodes to `%tc` or `%xdp`: there `%` is always followed by two hex
//! digits. A pinned object outlives the daemon, so a restarted daemon (after a crash,
//! an upgrade, `kill -9`) continues from the kernel's counts instead of going back to
//! what it last saved, and tc and XDP programs count while no daemon runs: only if
//! the bpffs outlives the daemon, which [`Pins::prepare`] sees to (or says it cannot).
//! The directory is locked (`flock`) for one daemon: another would take its pins for
//! unclaimed ones and remove them.

use std::collections::HashSet;
use std::fs;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capstats_common::hook::{Hook, XdpMode};
use capstats_ebpf::counters::{CounterError, CounterMap};

use crate::log::event;
use crate::sys;

const BPFFS: &str = "/sys/fs/bpf";
const COUNTERS: &str = "counters";

/// The directories of the interfaces' XDP and tc links in the pin directory.
const XDP_DIR: &str = "%xdp";
const TC_DIR: &str = "%tc";

/// Where the links and the chain of one interface's tc or XDP hook are pinned.
#[derive(Debug, Clone)]
pub struct HookPins {
    hook: Hook,
    /// `<pin-dir>/%tc/<interface>` or `<pin-dir>/%xdp/<interface>`.
    dir: PathBuf,
}

impl HookPins {
    /// `hook`'s pins on `interface` under the pin directory `pin_dir`; none for the
    /// socket hook, whose sockets live in the daemon.
    pub fn of(pin_dir: &Path, interface: &str, hook: Hook) -> Option<Self> {
        let top = match hook {
            Hook::Socket => return None,
            Hook::TcIngress | Hook::TcEgress => TC_DIR,
            Hook::Xdp => XDP_DIR,
        };
        Some(Self {
            hook,
            dir: pin_dir.join(top).join(interface),
        })
    }

    /// The interface's directory (shared by its two tc hooks).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a link of the hook is pinned, and the XDP mode each path stands for
    /// (XDP: one of two, by mode).
    pub fn links(&self) -> Vec<(PathBuf, Option<XdpMode>)> {
        let modes: &[Option<XdpMode>] = match self.hook {
            Hook::Socket => &[],
            Hook::TcIngress | Hook::TcEgress => &[None],
            Hook::Xdp => &[Some(XdpMode::Native), Some(XdpMode::Generic)],
        };
        modes.iter().map(|&mode| (self.link(mode), mode)).collect()
    }

    /// Where a link attached in `mode` (XDP's; none at tc) is pinned.
    pub fn link(&self, mode: Option<XdpMode>) -> PathBuf {
        self.dir.join(match (self.hook, mode) {
            (Hook::TcIngress, _) => "in-link",
            (Hook::TcEgress, _) => "out-link",
            (Hook::Socket | Hook::Xdp, Some(XdpMode::Generic)) => "generic-link",
            (Hook::Socket | Hook::Xdp, _) => "native-link",
        })
    }

    /// Where the chain's prog array is pinned.
    pub fn chain(&self) -> PathBuf {
        self.dir.join(match self.hook {
            Hook::TcIngress => "in-chain",
            Hook::TcEgress => "out-chain",
            Hook::Socket | Hook::Xdp => "chain",
        })
    }

    /// Where a new prog array is pinned while the chain's first program is swapped in
    /// to refer to it, before it is renamed over [`HookPins::chain`].
    pub fn chain_pending(&self) -> PathBuf {
        let mut name = self.chain().into_os_string();
        name.push("-new");
        PathBuf::from(name)
    }

    /// Whether any link or chain of the hook is pinned.
    pub fn exist(&self) -> bool {
        self.links().iter().any(|(path, _)| path.exists())
            || self.chain().exists()
            || self.chain_pending().exists()
    }

    /// Makes the interface's directory.
    pub fn create_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)
    }

    /// Removes the interface's directory and `%tc` or `%xdp` if they are empty (one
    /// still holding the other tc direction's pins stays).
    pub fn remove_empty_dirs(&self) {
        let _ = fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// The interfaces with tc or XDP pins under `pin_dir`, and their hooks: every hook of
/// an interface's directory, whatever is pinned in it.
pub fn pinned_hooks(pin_dir: &Path) -> Vec<(String, Hook)> {
    let mut found = Vec::new();
    for (top, hooks) in [
        (XDP_DIR, &[Hook::Xdp][..]),
        (TC_DIR, &[Hook::TcIngress, Hook::TcEgress][..]),
    ] {
        let Ok(entries) = fs::read_dir(pin_dir.join(top)) else {
            continue;
        };
        for entry in entries.flatten() {
            let interface = entry.file_name().to_string_lossy().into_owned();
            found.extend(hooks.iter().map(|&hook| (interface.clone(), hook)));
        }
    }
    found
}

/// Files the tc and XDP pins of interface `old` under `new` (same interface,
/// renamed).
pub fn rename_interface(pin_dir: &Path, old: &str, new: &str) -> Vec<(PathBuf, io::Error)> {
    let mut failed = Vec::new();
    for top in [TC_DIR, XDP_DIR] {
        let (from, to) = (pin_dir.join(top).join(old), pin_dir.join(top).join(new));
        if from.exists()
            && let Err(e) = fs::rename(&from, &to)
        {
            failed.push((to, e));
        }
    }
    failed
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "cannot mount bpffs at {BPFFS} (needed for {dir}): {cause}; mount it \
         (`mount -t bpf bpf {BPFFS}`) or choose a --pin-dir on a mounted bpffs"
    )]
    Mount { dir: String, cause: nix::Error },
    #[error(
        "pin directory {dir} is not on a bpffs; mount one there or choose another with --pin-dir"
    )]
    NotBpffs { dir: String },
    #[error("refusing to use pin directory {dir}: it is a symbolic link")]
    Symlink { dir: String },
    #[error(
        "another capstats daemon{holder} uses the pin directory {dir}: it would take that \
         daemon's pins for unclaimed ones; two daemons need two pin directories (--pin-dir)"
    )]
    InUse { dir: String, holder: String },
    #[error(
        "session {name:?}: cannot reopen its pinned counters ({cause}); they are left in \
         place, untouched (the next start that can open them continues from the kernel's \
         counts)"
    )]
    Reopen {
        name: String,
        cause: Box<CounterError>,
    },
    #[error("cannot {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: String,
        cause: io::Error,
    },
    #[error(transparent)]
    Counters(#[from] CounterError),
}

/// Where the daemon pins its objects, locked for this daemon.
#[derive(Debug)]
pub struct Pins {
    /// The directory as the daemon reaches it: the path given, or, for a bpffs of
    /// another mount namespace, `/proc/self/fd/N` of the directory held open.
    dir: PathBuf,
    /// The directory for messages.
    shown: String,
    /// Whether the pins outlive the daemon (see [`Pins::prepare`]).
    durable: bool,
    /// The directory, open and `flock`ed: a second daemon on it is refused.
    _lock: sys::lock::Locked,
    /// For a directory reached through a descriptor: its parent, held open, and its
    /// name there, so that `--detach-on-exit` can remove it (`rmdir` of
    /// `/proc/self/fd/N` would not).
    parent: Option<(File, std::ffi::OsString)>,
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// The mount namespace of a process (`self` or a pid), by its nsfs inode.
fn mount_ns(pid: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// The parent of process `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold anything but ends with ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse::<u32>().ok()
}

/// This process and its ancestors (up to pid 1, or as far as /proc shows them).
fn self_and_ancestors() -> Vec<u32> {
    let mut chain = vec![std::process::id()];
    while chain.len() < 256 {
        match chain.last().copied().and_then(parent_of) {
            Some(parent) if parent > 0 && !chain.contains(&parent) => chain.push(parent),
            _ => break,
        }
    }
    chain
}

/// Whether a process other than this one and its ancestors is in mount namespace
/// `ns`: then the namespace, and what is mounted in it, outlives this process. (An
/// ancestor there is most often a shell waiting for the daemon, `sh -c` under `ip
/// netns exec`: it goes when the daemon does.)
fn ns_has_others(ns: u64) -> bool {
    let own: Vec<String> = self_and_ancestors().iter().map(u32::to_string).collect();
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let pid = entry.file_name().to_string_lossy().into_owned();
        pid.bytes().all(|b| b.is_ascii_digit()) && !own.contains(&pid) && mount_ns(&pid) == Some(ns)
    })
}

/// Whether the mount holding `path` propagates to or from other mount namespaces
/// (`shared:` or `master:` in mountinfo): then its file system is mounted elsewhere
/// too, and outlives this process's namespace (the host's bpffs, seen from a
/// namespace made from the host's mounts, as systemd makes for a service).
fn propagated(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mut best: Option<(usize, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| unescape_mount_point(p)) else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        let tagged = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
        // The last of equal mount points is the one on top.
        if best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), tagged));
        }
    }
    best.is_some_and(|(_, tagged)| tagged)
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash as `\ooo`.
fn unescape_mount_point(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The processes whose mount namespaces may hold a bpffs that outlives this daemon's
/// own: pid 1, and the nearest ancestor in another mount namespace than the daemon's
/// (where it was started from: the shell that ran `ip netns exec`, say).
fn other_namespaces(own: u64) -> Vec<u32> {
    let mut pids = vec![1];
    if let Some(&nearest) = self_and_ancestors()
        .iter()
        .skip(1)
        .find(|pid| mount_ns(&pid.to_string()).is_some_and(|ns| ns != own))
    {
        pids.push(nearest);
    }
    pids.retain(|pid| mount_ns(&pid.to_string()).is_some_and(|ns| ns != own));
    pids.dedup();
    pids
}

/// `/proc/PID/root` followed by `dir` (absolute).
fn under_root(pid: u32, dir: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(dir.strip_prefix("/").unwrap_or(dir))
}

/// Whether `dir`, or the directory it would be made in, is on a bpffs.
fn bpffs_for(dir: &Path) -> bool {
    is_bpffs(dir) || dir.parent().is_some_and(is_bpffs)
}

/// The device of the file system `dir` (or the directory it would be made in) is on.
fn device_of(dir: &Path) -> Option<u64> {
    fs::metadata(dir)
        .or_else(|_| fs::metadata(dir.parent().unwrap_or(dir)))
        .ok()
        .map(|m| m.dev())
}

/// The pid of the process holding a `flock` on the file `meta` describes, with its
/// command line, from /proc/locks.
fn lock_holder(meta: &fs::Metadata) -> String {
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let Ok(locks) = fs::read_to_string("/proc/locks") else {
        return String::new();
    };
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        if fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()) {
            let pid = fields[4];
            let command = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            return if command.is_empty() {
                format!(" (pid {pid})")
            } else {
                format!(" (pid {pid}: {command:?})")
            };
        }
    }
    String::new()
}

/// Removes `tc-in` and `tc-out` from the session directory `dir`: see
/// [`Pins::remove_old_tc_links`].
fn remove_old_tc_links(dir: &Path) -> Vec<PathBuf> {
    ["tc-in", "tc-out"]
        .into_iter()
        .map(|old| dir.join(old))
        .filter(|path| fs::remove_file(path).is_ok())
        .collect()
}

/// A session name as a file name: bytes other than letters, digits, `-` and `_` as
/// `%XX`, so that `/`, `.` or `..` in a name never reach the path.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode(file: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(file.len());
    let mut rest = file.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

impl Pins {
    /// Makes `dir` ready and takes it for this daemon: on a bpffs that outlives the
    /// daemon where one can be reached, the directory made, and locked.
    ///
    /// A bpffs outlives the daemon when it is mounted in a mount namespace that does:
    /// the daemon's own, if another process shares it or the mount propagates from
    /// elsewhere. `ip netns exec` gives the daemon a namespace of its own with a fresh
    /// `/sys`: a bpffs mounted there would die with the daemon, pins, links, counts and
    /// all. Then `dir` is used in the bpffs of pid 1's mount namespace, or else of the
    /// nearest ancestor's in another namespace (through `/proc/PID/root`, held open),
    /// when it is mounted there. Where no such bpffs is mounted, bpffs is mounted at
    /// /sys/fs/bpf here (if `dir` is under it and it is not mounted yet) and the pins
    /// are marked not durable ([`Pins::durable`]): the daemon says so.
    pub fn prepare(dir: &Path) -> Result<Self, PinError> {
        let shown = dir.display().to_string();
        if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(PinError::Symlink { dir: shown });
        }
        let own = mount_ns("self");
        let shared = own.is_some_and(ns_has_others);
        let mounted_here = bpffs_for(dir) || (dir.starts_with(BPFFS) && is_bpffs(Path::new(BPFFS)));
        let durable_here = |dir: &Path| shared || propagated(dir);
        if mounted_here && durable_here(dir) {
            return Self::open(dir.to_owned(), shown, true);
        }
        // This namespace's bpffs would die with the daemon: another namespace's?
        if let Some(own) = own {
            for pid in other_namespaces(own) {
                let there = under_root(pid, dir);
                if fs::symlink_metadata(&there).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(PinError::Symlink {
                        dir: there.display().to_string(),
                    });
                }
                if !bpffs_for(&there) {
                    continue;
                }
                if mounted_here && device_of(dir).is_some() && device_of(dir) == device_of(&there) {
                    // The same bpffs, mounted there too (this namespace was made from
                    // that one's mounts): it outlives the daemon as it is.
                    return Self::open(dir.to_owned(), shown, true);
                }
                event!(
                    "this daemon has a mount namespace of its own (as under `ip netns exec`), \
                     whose bpffs would die with it: pinning in {shown} of the mount namespace \
                     of pid {pid}, which outlives it"
                );
                return Self::open(
                    there,
                    format!("{shown} (pid {pid}'s mount namespace)"),
                    true,
                );
            }
        }
        if !mounted_here && dir.starts_with(BPFFS) {
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                Some("mode=0700"),
            )
            .map_err(|cause| PinError::Mount {
                dir: shown.clone(),
                cause,
            })?;
            event!("mounted bpffs at {BPFFS}");
        }
        let durable = durable_here(dir);
        if !durable {
            event!(
                "WARNING: {shown} is on a bpffs of this daemon's own mount namespace (as \
                 `ip netns exec` makes), which dies with it, and no bpffs of a namespace that \
                 outlives it is mounted: when this daemon exits, its pinned counters, tc and \
                 xdp links go, tc and xdp sessions stop counting, and the next daemon starts \
                 from the table as last saved. Mount bpffs at {BPFFS} in the initial mount \
                 namespace, or start the daemon without a mount namespace of its own \
                 (`nsenter --net=/run/netns/NS`)"
            );
        }
        Self::open(dir.to_owned(), shown, durable)
    }

    /// Makes `path` (mode 0700), checks it is on bpffs, and holds it open and locked.
    fn open(path: PathBuf, shown: String, durable: bool) -> Result<Self, PinError> {
        // Root's alone: the pins hold every session's counters and links.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|cause| PinError::Io {
                what: "create the pin directory",
                path: shown.clone(),
                cause,
            })?;
        if !is_bpffs(&path) {
            return Err(PinError::NotBpffs { dir: shown });
        }
        let lock = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|cause| PinError::Io {
                what: "open the pin directory",
                path: shown.clone(),
                cause,
            })?;
        let lock = match sys::lock::exclusive(lock) {
            Ok(locked) => locked,
            Err(sys::lock::LockError::Held(file)) => {
                return Err(PinError::InUse {
                    holder: file.metadata().map(|m| lock_holder(&m)).unwrap_or_default(),
                    dir: shown,
                });
            }
            Err(sys::lock::LockError::Failed(cause)) => {
                return Err(PinError::Io {
                    what: "lock the pin directory",
                    path: shown,
                    cause,
                });
            }
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(|cause| {
            PinError::Io {
                what: "set the mode of the pin directory",
                path: shown.clone(),
                cause,
            }
        })?;
        // A directory of another mount namespace is reached through the descriptor held
        // open: its /proc/PID/root may go with that process.
        let (dir, parent) = if path.starts_with("/proc") {
            let parent = path
                .parent()
                .zip(path.file_name())
                .and_then(|(parent, name)| {
                    fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                        .open(parent)
                        .ok()
                        .map(|file| (file, name.to_owned()))
                });
            (
                PathBuf::from(format!("/proc/self/fd/{}", lock.as_raw_fd())),
                parent,
            )
        } else {
            (path, None)
        };
        Ok(Self {
            dir,
            shown,
            durable,
            _lock: lock,
            parent,
        })
    }

    /// The pin directory, as the daemon reaches it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pin directory, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the pins outlive the daemon (its bpffs is mounted in a mount namespace
    /// that does): then tc and xdp sessions count through a restart and every
    /// session's counts continue from the kernel's.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Where a session's objects are pinned.
    fn session_dir(&self, name: &str) -> PathBuf {
        self.dir.join(encode(name))
    }

    /// Removes the tc links an older capstats pinned per session (`tc-in`, `tc-out` in
    /// its directory, before one program per interface counted its sessions): they
    /// would count the session twice. Returns the paths removed.
    pub fn remove_old_tc_links(&self, name: &str) -> Vec<PathBuf> {
        remove_old_tc_links(&self.session_dir(name))
    }

    /// A fresh counter map for a new session, pinned (replacing anything left under
    /// that name).
    pub fn create(&self, name: &str) -> Result<CounterMap, PinError> {
        self.remove(name);
        let dir = self.session_dir(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|cause| PinError::Io {
                what: "create",
                path: dir.display().to_string(),
                cause,
            })?;
        let map = CounterMap::create("capstats", 1)?;
        map.pin(&dir.join(COUNTERS))?;
        Ok(map)
    }

    /// The pinned counter map of a session, with the counts the kernel has, if there is
    /// one. Anything at its path that cannot be opened as one (too few descriptors, not
    /// a counter map) is an error, and is left as it is: it may hold the only copy of
    /// the session's counts.
    pub fn reopen(&self, name: &str) -> Result<Option<CounterMap>, PinError> {
        let path = self.session_dir(name).join(COUNTERS);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => {
                return Err(PinError::Io {
                    what: "inspect",
                    path: path.display().to_string(),
                    cause,
                });
            }
            Ok(_) => {}
        }
        CounterMap::open_pinned(&path)
            .map(Some)
            .map_err(|cause| PinError::Reopen {
                name: name.to_owned(),
                cause: Box::new(cause),
            })
    }

    /// Removes a session's pinned objects; the kernel frees them once nothing else
    /// holds them.
    pub fn remove(&self, name: &str) {
        let dir = self.session_dir(name);
        if !dir.exists() {
            return;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Err(e) = fs::remove_dir(&dir) {
            event!("cannot remove {}: {e}", dir.display());
        }
    }

    /// Removes every session directory `keep` does not name, and says so.
    pub fn remove_unclaimed(&self, keep: &HashSet<&str>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == XDP_DIR || file == TC_DIR {
                // Not a session: the interfaces' XDP and tc links.
                continue;
            }
            match decode(&file) {
                Some(name) if keep.contains(name.as_str()) => {}
                Some(name) => {
                    event!(
                        "removing pinned objects of session {name:?}, which the state file does not have"
                    );
                    self.remove(&name);
                }
                None => event!(
                    "leaving {}: not a capstats session directory",
                    entry.path().display()
                ),
            }
        }
    }

    /// Removes every session's objects and the directory (`--detach-on-exit`).
    pub fn remove_all(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if let Some(name) = decode(&entry.file_name().to_string_lossy()) {
                    self.remove(&name);
                }
            }
        }
        match &self.parent {
            Some((parent, name)) => {
                let _ = nix::unistd::unlinkat(
                    Some(parent.as_raw_fd()),
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::RemoveDir,
                );
            }
            None => {
                let _ = fs::remove_dir(&self.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_file_names_and_back() {
        for name in ["web", "a/b", "..", ".", "Ünï", "x%y", "dns-53_v2"] {
            let file = encode(name);
            assert!(
                !file.contains('/') && file != "." && file != "..",
                "{name} -> {file}"
            );
            assert_eq!(decode(&file).as_deref(), Some(name));
        }
        assert_eq!(encode("a/b"), "a%2Fb");
        assert_eq!(decode("%zz"), None);
        assert!(encode(&"é".repeat(32)).len() < 255);
    }

    /// The daemon sends an error as its text (`to_string`); a chain printer
    /// (`with_causes`, as anyhow's `{:#}` in the CLI that prints the daemon's start-up
    /// errors) also walks `source()`: either way each cause appears once.
    #[test]
    fn pin_errors_say_their_cause_once_however_printed() {
        use capstats_ebpf::errors::with_causes;
        let errno = || io::Error::from_raw_os_error(libc::EACCES);
        let cases = [
            PinError::Io {
                what: "open the pin directory",
                path: "/sys/fs/bpf/capstats".into(),
                cause: errno(),
            },
            PinError::Mount {
                dir: "/sys/fs/bpf/capstats".into(),
                cause: nix::errno::Errno::EACCES,
            },
            PinError::Reopen {
                name: "web".into(),
                cause: Box::new(CounterError::Dup {
                    name: "web".into(),
                    cause: errno(),
                }),
            },
        ];
        for error in cases {
            let sent = error.to_string();
            let chained = with_causes(&error);
            for shown in [&sent, &chained] {
                // nix says EACCES as "EACCES: Permission denied", io as
                // "Permission denied (os error 13)": the words are in both.
                assert_eq!(shown.matches("Permission denied").count(), 1, "{shown}");
            }
        }
    }

    /// Every pin path of a hook is under its interface's directory, distinct from the
    /// other hooks', and never a session's directory.
    #[test]
    fn hook_pins_have_their_own_paths() {
        let dir = Path::new("/sys/fs/bpf/capstats");
        assert!(HookPins::of(dir, "eth0", Hook::Socket).is_none());
        let pins = |hook| HookPins::of(dir, "eth0", hook).unwrap();
        let tc_in = pins(Hook::TcIngress);
        assert_eq!(tc_in.dir(), Path::new("/sys/fs/bpf/capstats/%tc/eth0"));
        assert_eq!(tc_in.link(None), tc_in.dir().join("in-link"));
        assert_eq!(tc_in.chain(), tc_in.dir().join("in-chain"));
        assert_eq!(tc_in.chain_pending(), tc_in.dir().join("in-chain-new"));
        let xdp = pins(Hook::Xdp);
        assert_eq!(
            xdp.link(Some(XdpMode::Generic)),
            Path::new("/sys/fs/bpf/capstats/%xdp/eth0/generic-link")
        );
        let mut paths: Vec<PathBuf> = [Hook::TcIngress, Hook::TcEgress, Hook::Xdp]
            .into_iter()
            .flat_map(|hook| {
                let p = pins(hook);
                let mut all: Vec<PathBuf> = p.links().into_iter().map(|(l, _)| l).collect();
                all.extend([p.chain(), p.chain_pending()]);
                all
            })
            .collect();
        let n = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), n, "{paths:?}");
        for top in [TC_DIR, XDP_DIR] {
            assert_eq!(decode(top), None, "{top} decodes as a session's directory");
        }
    }

    /// The tc links an older capstats pinned in a session's directory go, and
    /// nothing else there does.
    #[test]
    fn old_tc_links_are_removed_and_the_counters_kept() {
        let dir = std::env::temp_dir().join(format!("capstats-bpffs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for file in ["tc-in", "tc-out", COUNTERS] {
            fs::write(dir.join(file), b"").unwrap();
        }
        let removed = remove_old_tc_links(&dir);
        let kept = dir.join(COUNTERS).exists();
        let gone = !dir.join("tc-in").exists() && !dir.join("tc-out").exists();
        let again = remove_old_tc_links(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(removed, [dir.join("tc-in"), dir.join("tc-out")]);
        assert!(kept && gone);
        assert!(again.is_empty());
    }
}
