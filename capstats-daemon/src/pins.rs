//! The daemon's objects on bpffs: one directory per session under the pin directory
//! (default `/sys/fs/bpf/capstats`), holding its counter map. A pinned map outlives the
//! daemon, so a restarted daemon (after a crash, an upgrade, `kill -9`) continues from
//! the kernel's counts instead of going back to what it last saved.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capstats_ebpf::counters::{CounterError, CounterMap};

use crate::log::event;

const BPFFS: &str = "/sys/fs/bpf";
const COUNTERS: &str = "counters";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "cannot mount bpffs at {BPFFS} (needed for {dir}): {source}; mount it \
         (`mount -t bpf bpf {BPFFS}`) or choose a --pin-dir on a mounted bpffs"
    )]
    Mount { dir: String, source: nix::Error },
    #[error(
        "pin directory {dir} is not on a bpffs; mount one there or choose another with --pin-dir"
    )]
    NotBpffs { dir: String },
    #[error("refusing to use pin directory {dir}: it is a symbolic link")]
    Symlink { dir: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(transparent)]
    Counters(#[from] CounterError),
}

/// Where the daemon pins its objects.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
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
    /// Makes `dir` ready: bpffs mounted at /sys/fs/bpf if `dir` is under it and it is
    /// not mounted yet (it is not at boot on some systems), and the directory made.
    pub fn prepare(dir: &Path) -> Result<Self, PinError> {
        let shown = dir.display().to_string();
        if dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                Some("mode=0700"),
            )
            .map_err(|source| PinError::Mount {
                dir: shown.clone(),
                source,
            })?;
            event!("mounted bpffs at {BPFFS}");
        }
        if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(PinError::Symlink { dir: shown });
        }
        // Root's alone: the pins hold every session's counters and links.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PinError::Io {
                what: "create the pin directory",
                path: shown.clone(),
                source,
            })?;
        if !is_bpffs(dir) {
            return Err(PinError::NotBpffs { dir: shown });
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            PinError::Io {
                what: "set the mode of the pin directory",
                path: shown.clone(),
                source,
            }
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a session's objects are pinned.
    pub fn session_dir(&self, name: &str) -> PathBuf {
        self.dir.join(encode(name))
    }

    /// A fresh counter map for a new session, pinned (replacing anything left under
    /// that name).
    pub fn create(&self, name: &str) -> Result<CounterMap, PinError> {
        self.remove(name);
        let dir = self.session_dir(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PinError::Io {
                what: "create",
                path: dir.display().to_string(),
                source,
            })?;
        let map = CounterMap::create("capstats", 1)?;
        map.pin(&dir.join(COUNTERS))?;
        Ok(map)
    }

    /// The pinned counter map of a session, with the counts the kernel has, if it is
    /// there and is one.
    pub fn reopen(&self, name: &str) -> Option<CounterMap> {
        let path = self.session_dir(name).join(COUNTERS);
        if !path.exists() {
            return None;
        }
        match CounterMap::open_pinned(&path) {
            Ok(map) => Some(map),
            Err(e) => {
                event!("session {name:?}: not using {}: {e}", path.display());
                None
            }
        }
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
            if file == crate::programs::XDP_DIR || file == crate::programs::TC_DIR {
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
        let _ = fs::remove_dir(&self.dir);
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
}
