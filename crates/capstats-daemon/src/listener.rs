//! The daemon's unix socket: created safely, with the right owner and mode, and never
//! taken from another daemon that still answers on it.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another capstats daemon already answers on {0}")]
    AlreadyRunning(String),
    #[error("refusing to use {0}: it is a symbolic link")]
    Symlink(String),
    #[error("refusing to replace {0}: it exists and is not a socket")]
    NotASocket(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

/// Binds the socket at `path`: mode 0600, or 0660 with group `group`.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ListenError> {
    let shown = path.display().to_string();
    let io = |what| {
        let path = shown.clone();
        move |source| ListenError::Io { what, path, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io("create the directory of"))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(ListenError::Symlink(shown)),
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::AlreadyRunning(shown)),
            // Nobody answers: a stale socket of a daemon that is gone.
            Err(_) => fs::remove_file(path).map_err(io("remove the stale socket"))?,
        },
        Ok(_) => return Err(ListenError::NotASocket(shown)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect")(e)),
    }
    // Born with mode 0600: no moment when others could connect.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener.map_err(io("listen on"))?;
    if let Some(gid) = group {
        std::os::unix::fs::lchown(path, Some(0), Some(gid)).map_err(io("set the group of"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660))
            .map_err(io("set the mode of"))?;
    }
    Ok(listener)
}
