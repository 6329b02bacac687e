//! The session table on disk: `sessions.json` in the state directory, replaced
//! atomically (a temporary file, fsync, rename), read and checked at start.
//!
//! It records each session's name, interface, filter and times, and the counters as
//! last read, so that a restarted daemon continues from them instead of from zero.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capstats_common::names::check_name;
use capstats_common::protocol::{Direction, HookName};
use serde::{Deserialize, Serialize};

const FILE: &str = "sessions.json";
const STATE_VERSION: u32 = 1;

/// One session as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSession {
    pub name: String,
    pub interface: String,
    pub filter: String,
    /// Absent in tables written before hooks existed: those sessions were socket ones.
    #[serde(default = "socket")]
    pub hook: HookName,
    #[serde(default = "both")]
    pub direction: Direction,
    pub created: String,
    pub modified: String,
    /// Everything counted, as last read.
    pub packets: u64,
    pub bytes: u64,
    /// The part of it from before the session's pinned counter map: what a restart
    /// adds to the map's counts when it finds the map.
    /// Absent in tables written before counters were pinned: then all of `packets`
    /// and `bytes` is base.
    #[serde(default)]
    pub base_packets: Option<u64>,
    #[serde(default)]
    pub base_bytes: Option<u64>,
}

fn socket() -> HookName {
    HookName::Socket
}

fn both() -> Direction {
    Direction::Both
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    version: u32,
    sessions: Vec<SavedSession>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("another capstats daemon uses the state directory {0}")]
    InUse(String),
    #[error(
        "state file {path} is not a capstats session table ({reason}); it was left as it is: move it away to start afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// The state directory and its session file.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn io(&self, what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
        let path = path.to_owned();
        move |source| StateError::Io { what, path, source }
    }

    /// Takes the directory for this daemon: a second daemon on another socket must not
    /// write the same table. Held until the returned file is dropped.
    pub fn lock(&self) -> Result<File, StateError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(self.io("open", &path))?;
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            let error = io::Error::last_os_error();
            return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StateError::InUse(self.dir.display().to_string())
            } else {
                self.io("lock", &path)(error)
            });
        }
        Ok(file)
    }

    /// The saved sessions; none if there is no file yet. A file that cannot be trusted
    /// (not JSON, wrong version, bad names or times, duplicates) is an error.
    pub fn load(&self) -> Result<Vec<SavedSession>, StateError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("read", &path)(e)),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        let state: SavedState = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {}, expected {STATE_VERSION}",
                state.version
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &state.sessions {
            check_name(&s.name).map_err(&corrupt)?;
            if !seen.insert(s.name.as_str()) {
                return Err(corrupt(format!("session {:?} appears twice", s.name)));
            }
            for time in [&s.created, &s.modified] {
                humantime::parse_rfc3339(time)
                    .map_err(|e| corrupt(format!("time {time:?}: {e}")))?;
            }
            if s.interface.is_empty() || s.interface.len() > 15 || s.interface.contains('/') {
                return Err(corrupt(format!("interface name {:?}", s.interface)));
            }
        }
        Ok(state.sessions)
    }

    /// Replaces the file with `sessions`, atomically: readers see the old or the new
    /// table, never a mixture, even if the daemon dies halfway.
    pub fn save(&self, sessions: Vec<SavedSession>) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(self.io("create", &self.dir))?;
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let text = serde_json::to_string_pretty(&SavedState {
            version: STATE_VERSION,
            sessions,
        })
        .expect("plain data serializes");
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            // Never through a link planted at the temporary name.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(self.io("create", &tmp))?;
        file.write_all(text.as_bytes())
            .map_err(self.io("write", &tmp))?;
        file.sync_all().map_err(self.io("sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(self.io("replace", &path))?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// A time as saved: RFC 3339, UTC, whole seconds.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|_| SystemTime::now())
}

/// Makes the state directory if needed: root's, not readable by others.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(name: &str) -> SavedSession {
        SavedSession {
            name: name.into(),
            interface: "eth0".into(),
            filter: "tcp port 80".into(),
            hook: HookName::Tc,
            direction: Direction::In,
            created: "2026-11-26T03:00:00Z".into(),
            modified: "2026-11-26T03:00:00Z".into(),
            packets: 5,
            bytes: 300,
            base_packets: Some(1),
            base_bytes: Some(60),
        }
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "capstats-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads_the_table() {
        let dir = dir();
        let state = StateFile::new(&dir);
        assert_eq!(state.load().unwrap(), vec![], "no file yet: no sessions");
        state.save(vec![saved("a"), saved("b")]).unwrap();
        assert_eq!(state.load().unwrap(), vec![saved("a"), saved("b")]);
        let mode = fs::metadata(state.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_file_it_cannot_trust_and_leaves_it() {
        let dir = dir();
        fs::create_dir_all(&dir).unwrap();
        let state = StateFile::new(&dir);
        for bad in [
            "not json",
            r#"{"version":2,"sessions":[]}"#,
            r#"{"version":1,"sessions":[{"name":"a b","interface":"eth0","filter":"","hook":"socket","direction":"both","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0,"base_packets":0,"base_bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"../x","filter":"","hook":"socket","direction":"both","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0,"base_packets":0,"base_bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"socket","direction":"both","created":"yesterday","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0,"base_packets":0,"base_bytes":0}]}"#,
        ] {
            fs::write(state.path(), bad).unwrap();
            let err = state.load().unwrap_err();
            assert!(err.to_string().contains("left as it is"), "{err}");
            assert_eq!(fs::read_to_string(state.path()).unwrap(), bad);
        }
        // A table from before hooks and pins: socket sessions, all counts base.
        let old = r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"udp","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":7,"bytes":70}]}"#;
        fs::write(state.path(), old).unwrap();
        let loaded = state.load().unwrap();
        assert_eq!(
            (loaded[0].hook, loaded[0].direction),
            (HookName::Socket, Direction::Both)
        );
        assert_eq!((loaded[0].base_packets, loaded[0].packets), (None, 7));
        let twice = serde_json::to_string(&SavedState {
            version: 1,
            sessions: vec![saved("a"), saved("a")],
        })
        .unwrap();
        fs::write(state.path(), twice).unwrap();
        assert!(
            state
                .load()
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
