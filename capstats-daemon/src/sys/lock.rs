//! An exclusive advisory lock (`flock(2)`), taken without waiting and held as long as
//! its file is.

use std::fs::File;
use std::io;

use nix::fcntl::{Flock, FlockArg};

/// A file held locked (`LOCK_EX`); the lock goes with it.
pub type Locked = Flock<File>;

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another open file description holds it (`EWOULDBLOCK`); the file is given back
    /// so that the caller can find out whose it is.
    Held(File),
    /// Any other failure.
    Failed(io::Error),
}

/// Locks `file` exclusively if nobody else holds a lock on it.
pub fn exclusive(file: File) -> Result<Locked, LockError> {
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(file, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            LockError::Held(file)
        } else {
            LockError::Failed(super::io(errno))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_held() {
        let dir = std::env::temp_dir().join(format!("capstats-lock-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let first = exclusive(File::open(&dir).unwrap()).unwrap();
        let second = exclusive(File::open(&dir).unwrap());
        assert!(matches!(second, Err(LockError::Held(_))), "{second:?}");
        drop(first);
        let third = exclusive(File::open(&dir).unwrap());
        std::fs::remove_file(&dir).unwrap();
        assert!(third.is_ok(), "{third:?}");
    }
}
