//! The daemon's unix socket: created safely, with the right owner and mode, and never
//! taken from another daemon that still answers on it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::state::pid_of;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another capstats daemon{pid} already answers on {path}", pid = pid_of(*.pid))]
    AlreadyRunning { path: String, pid: Option<u32> },
    #[error(
        "refusing to listen in {dir}: {reason}, so others could replace the socket; \
         use a directory only root may write to"
    )]
    UnsafeDirectory { dir: String, reason: String },
    #[error(
        "refusing to listen on {path}: uid {uid} (pid {pid}) listens there, not root, so it \
         is not a capstats daemon (another user may have put it there); remove it, or choose \
         a socket in a directory only root may write to"
    )]
    Impostor { path: String, uid: u32, pid: i32 },
    #[error("refusing to use {0}: it is a symbolic link")]
    Symlink(String),
    #[error("refusing to replace {0}: it exists and is not a socket")]
    NotASocket(String),
    #[error("cannot {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: String,
        cause: io::Error,
    },
}

/// The socket file, removed when dropped if it is still the one this daemon bound
/// (not one a later daemon put there).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes the directory the socket goes in, if it is missing (mode 0755: clients must
/// reach the socket; the socket's own mode decides who may connect), and refuses one
/// that anyone could write to: they could replace the socket under the clients.
fn socket_dir(dir: &Path) -> Result<(), ListenError> {
    let shown = dir.display().to_string();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|cause| ListenError::Io {
            what: "create the socket directory",
            path: shown.clone(),
            cause,
        })?;
    let meta = fs::metadata(dir).map_err(|cause| ListenError::Io {
        what: "inspect the socket directory",
        path: shown.clone(),
        cause,
    })?;
    let unsafe_dir = |reason: String| ListenError::UnsafeDirectory {
        dir: shown.clone(),
        reason,
    };
    // Another account's directory is said, not refused: a developer's checkout under
    // sudo is one, and its owner could become root anyway.
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        crate::log::event!(
            "warning: the socket's directory {shown} belongs to uid {}, who could replace the socket",
            meta.uid()
        );
    }
    // Sticky (as /tmp): others may create files there but not remove or rename ours.
    if meta.mode() & 0o002 != 0 {
        if meta.mode() & libc::S_ISVTX == 0 {
            return Err(unsafe_dir(format!(
                "anyone may write to it (mode {:04o}, not sticky)",
                meta.mode() & 0o7777
            )));
        }
        // They may still listen at the path while no daemon does: clients then refuse
        // to talk to them (they check the listener is root), but say so.
        crate::log::event!(
            "warning: anyone may create files in the socket's directory {shown} (mode {:04o}): \
             while no daemon listens, another user could, and clients would refuse it",
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Binds the socket at `path`: mode 0600, or 0660 with group `group`.
pub fn bind(path: &Path, group: Option<u32>) -> Result<(UnixListener, SocketFile), ListenError> {
    let shown = path.display().to_string();
    let io = |what| {
        let path = shown.clone();
        move |cause| ListenError::Io { what, path, cause }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        socket_dir(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(ListenError::Symlink(shown)),
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            // The kernel says who listens: a daemon runs as root; anyone else who
            // answers there is not one, and is neither believed nor replaced.
            Ok(other) => {
                let peer = crate::auth::Peer::of(&other)
                    .map_err(io("read the credentials of the listener on"))?;
                return Err(if peer.uid == 0 {
                    ListenError::AlreadyRunning {
                        path: shown,
                        pid: u32::try_from(peer.pid).ok(),
                    }
                } else {
                    ListenError::Impostor {
                        path: shown,
                        uid: peer.uid,
                        pid: peer.pid,
                    }
                });
            }
            // Nobody answers: a stale socket of a daemon that is gone.
            Err(_) => fs::remove_file(path).map_err(io("remove the stale socket"))?,
        },
        Ok(_) => return Err(ListenError::NotASocket(shown)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect")(e)),
    }
    // Born with its final mode, 0600 or 0660 (the group root's until the lchown): no
    // moment when others could connect, and no chmod, which would follow a link put
    // in the socket's place meanwhile.
    let mask = if group.is_some() { 0o117 } else { 0o177 };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io("listen on"))?;
    let meta = fs::symlink_metadata(path).map_err(io("inspect"))?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    if let Some(gid) = group {
        std::os::unix::fs::lchown(path, Some(0), Some(gid)).map_err(io("set the group of"))?;
    }
    Ok((listener, file))
}

/// The bound socket handed to the runtime (which must be entered), non-blocking.
pub fn on_runtime(
    listener: UnixListener,
    path: &Path,
) -> Result<tokio::net::UnixListener, ListenError> {
    let io = |cause| ListenError::Io {
        what: "listen on",
        path: path.display().to_string(),
        cause,
    };
    listener.set_nonblocking(true).map_err(io)?;
    tokio::net::UnixListener::from_std(listener).map_err(io)
}
