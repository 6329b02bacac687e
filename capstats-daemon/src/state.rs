//! The session table on disk: `sessions.json` in the state directory, replaced
//! atomically (a temporary file, fsync, rename), read and checked at start.
//!
//! It records each session's name, interface, filter and times, and the counters as
//! last read, so that a restarted daemon continues from them instead of from zero.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capstats_common::names::check_name;
use capstats_common::protocol::{Direction, HookName, Packets, check_interface_name};
use capstats_ebpf::counters::MAX_COUNT;
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
    /// `packets wire|stack`. Absent where it is the hook's default
    /// ([`crate::session::default_packets`]), as in tables written before the option
    /// existed, which older daemons (refusing unknown fields) then still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_counted: Option<Packets>,
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
    #[error("cannot {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("another capstats daemon{pid} uses the state directory {dir}", pid = pid_of(*.pid))]
    InUse { dir: String, pid: Option<u32> },
    #[error("refusing to use {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error(
        "state file {path} is not a capstats session table ({reason}); it was left as it is: move it away to start afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// " (pid N)" when the other daemon's pid is known.
pub(crate) fn pid_of(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
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
        move |cause| StateError::Io { what, path, cause }
    }

    /// Takes the directory for this daemon: a second daemon on another socket must not
    /// write the same table. Held until the returned file is dropped; it holds the
    /// daemon's pid, so that a second daemon can say which one runs.
    pub fn lock(&self) -> Result<crate::sys::lock::Locked, StateError> {
        let path = self.dir.join(".lock");
        // Held open read-only: a file held open for writing would keep the state
        // directory's file system from being remounted read-only (flock works on any
        // open file).
        let file = open_no_follow(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            &path,
        )
        .and_then(|created| {
            drop(created);
            open_no_follow(OpenOptions::new().read(true), &path)
        })
        .map_err(|e| self.refusal("open", &path, e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(StateError::Untrusted {
                path,
                reason: "it is not a regular file".into(),
            });
        }
        let locked = match crate::sys::lock::exclusive(file) {
            Ok(locked) => locked,
            Err(crate::sys::lock::LockError::Held(file)) => {
                let mut text = String::new();
                let _ = file.take(32).read_to_string(&mut text);
                return Err(StateError::InUse {
                    dir: self.dir.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(crate::sys::lock::LockError::Failed(cause)) => {
                return Err(self.io("lock", &path)(cause));
            }
        };
        // Ours now: record who holds it (a failure only costs the pid in a message).
        if let Ok(mut pid) = open_no_follow(OpenOptions::new().write(true).truncate(true), &path) {
            let _ = writeln!(pid, "{}", std::process::id());
        }
        Ok(locked)
    }

    /// An open error, with a symbolic link named as such: `O_NOFOLLOW` says only ELOOP.
    fn refusal(&self, what: &'static str, path: &Path, error: io::Error) -> StateError {
        if error.raw_os_error() == Some(libc::ELOOP) {
            StateError::Untrusted {
                path: path.to_owned(),
                reason: "it is a symbolic link, which capstats never follows there; \
                         remove it"
                    .into(),
            }
        } else {
            self.io(what, path)(error)
        }
    }

    /// The saved sessions; none if there is no file yet. A file that cannot be trusted
    /// (not JSON, wrong version, bad names or times, duplicates) is an error.
    pub fn load(&self) -> Result<Vec<SavedSession>, StateError> {
        let path = self.path();
        // Never through a link, and never blocking on a FIFO planted there.
        let mut file = match open_no_follow(OpenOptions::new().read(true), &path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.refusal("open", &path, e)),
        };
        let meta = file.metadata().map_err(self.io("inspect", &path))?;
        let untrusted = |reason: String| StateError::Untrusted {
            path: path.clone(),
            reason,
        };
        if !meta.is_file() {
            return Err(untrusted(
                "it is not a regular file; move it away to start afresh".into(),
            ));
        }
        // Only the daemon's own account may have written the table it trusts.
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(untrusted(format!(
                "it belongs to uid {}, not to the daemon's uid {euid}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(untrusted(format!(
                "others may write it (mode {:04o}); chmod 600 it if its content is right",
                meta.mode() & 0o7777
            )));
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(self.io("read", &path))?;
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
            // What a request could not ask for, a table cannot restore: the request's
            // checks (an interface the kernel would read as another, `eth0:junk` as
            // `eth0`; a direction the hook cannot count).
            check_interface_name(&s.interface).map_err(|e| {
                let prefix = format!("no interface named {:?}: ", s.interface);
                corrupt(format!(
                    "session {:?}: interface name {:?}: {}",
                    s.name,
                    s.interface,
                    e.strip_prefix(&prefix).unwrap_or(&e)
                ))
            })?;
            let spec = crate::session::Spec {
                name: &s.name,
                interface: &s.interface,
                filter: &s.filter,
                hook: s.hook,
                direction: s.direction,
                packets: s
                    .packets_counted
                    .unwrap_or(crate::session::default_packets(s.hook)),
            };
            spec.check()
                .map_err(|e| corrupt(format!("session {:?}: {e}", s.name)))?;
            if s.filter.contains('\0') {
                return Err(corrupt(format!(
                    "session {:?}: the filter contains a NUL byte",
                    s.name
                )));
            }
            for (what, total, base) in [
                ("packets", s.packets, s.base_packets),
                ("bytes", s.bytes, s.base_bytes),
            ] {
                // The daemon's counts stop at MAX_COUNT: it reads whatever it wrote.
                if total > MAX_COUNT {
                    return Err(corrupt(format!(
                        "session {:?}: {what} {total} is more than could have been counted \
                         (at most {MAX_COUNT})",
                        s.name
                    )));
                }
                if base.is_some_and(|base| base > total) {
                    return Err(corrupt(format!(
                        "session {:?}: base_{what} {} exceeds {what} {total}, of which it is a part",
                        s.name,
                        base.unwrap_or(0)
                    )));
                }
            }
        }
        Ok(state.sessions)
    }

    /// [`StateFile::save_records`] of `sessions`.
    #[cfg(test)]
    pub fn save(&self, sessions: Vec<SavedSession>) -> Result<(), StateError> {
        let records: Vec<Vec<u8>> = sessions.iter().map(record).collect();
        self.save_records(records.iter().map(Vec::as_slice))
    }

    /// Replaces the file with the sessions of `records` (each one made by [`record`]),
    /// atomically and durably: readers see the old or the new table, never a mixture,
    /// even if the daemon dies halfway; once this returns `Ok` the new table survives
    /// a crash of the machine too (the caller answers the change only then). On
    /// failure the previous file stays as it was and the temporary file is removed.
    ///
    /// Why it is written this way (measured with 4,096 sessions on a loaded 2-core VM,
    /// ext4 on virtio): the records are joined into one buffer of compact JSON (about
    /// 250 bytes a session, 1 MB at 4,096; the pretty form an earlier daemon wrote was
    /// 1.6 times that) and written with one `write`; then the file is fsynced, renamed
    /// over the table, and the directory fsynced once. An fsync costs about the same
    /// here (4-8 ms, a journal commit) for 300 bytes as for 1.5 MB, so an append-only
    /// journal of changes would save little of a change's time while adding a second
    /// file to trust, replay and compact: the table stays one file, which every
    /// earlier daemon reads.
    pub fn save_records<'r>(
        &self,
        records: impl ExactSizeIterator<Item = &'r [u8]>,
    ) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(self.io("create", &self.dir))?;
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let text = encode(records);
        // Whatever is at the temporary name (a crash's leftover, a planted link) is
        // unlinked, never followed; create_new then refuses anything that reappears.
        let _ = fs::remove_file(&tmp);
        let mut file = open_no_follow(
            OpenOptions::new().write(true).create_new(true).mode(0o600),
            &tmp,
        )
        .map_err(|e| self.refusal("create", &tmp, e))?;
        let written = file
            .write_all(&text)
            .map_err(self.io("write", &tmp))
            .and_then(|()| file.sync_all().map_err(self.io("sync", &tmp)))
            .and_then(|()| {
                // rename() would put a file in place of an empty directory's name only
                // with a less clear error: say what is in the way.
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => Err(StateError::Untrusted {
                        path: path.clone(),
                        reason: "it is a directory; the session table cannot be saved there".into(),
                    }),
                    _ => fs::rename(&tmp, &path).map_err(self.io("replace", &path)),
                }
            });
        if let Err(e) = written {
            // A half-written table never replaces the old one, and is not left behind.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is durable only once the directory is: until then a crash of the
        // machine may bring back the previous table, so a failure here is the
        // caller's error (the new table is in place, and is read at the next start).
        // A file system that cannot sync a directory (EINVAL: some FUSE and network
        // ones) has no such guarantee to give: nothing more can be done there.
        match File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                Err(self.io("sync the directory of", &path)(e))
            }
            _ => Ok(()),
        }
    }
}

/// One session as saved: a JSON object.
pub fn record(session: &SavedSession) -> Vec<u8> {
    serde_json::to_vec(session).expect("plain data serializes")
}

/// The table as saved: compact JSON, in one buffer, the sessions' [`record`]s in order
/// (what `serde_json` writes for a [`SavedState`]).
fn encode<'r>(records: impl ExactSizeIterator<Item = &'r [u8]>) -> Vec<u8> {
    let head = format!("{{\"version\":{STATE_VERSION},\"sessions\":[");
    // About 250 bytes a session: one allocation for most tables.
    let mut text = Vec::with_capacity(head.len() + 2 + 320 * records.len());
    text.extend_from_slice(head.as_bytes());
    for (i, record) in records.enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(record);
    }
    text.extend_from_slice(b"]}");
    text
}

/// A time as saved: RFC 3339, UTC, whole seconds.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|_| SystemTime::now())
}

/// Opens `path` without following a symbolic link at its last component, and without
/// blocking: a FIFO planted there opens at once (and is then refused as not a regular
/// file) instead of waiting forever for a writer. `O_NONBLOCK` changes nothing for a
/// regular file. (`custom_flags` replaces flags set before: they are all set here.)
fn open_no_follow(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

/// Makes the state directory if needed: the daemon's, mode 0700. One that is a
/// symbolic link or belongs to another account is refused: whoever controls it
/// controls the table the daemon trusts.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?,
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(
            "it is a symbolic link, which capstats never follows there",
        ));
    }
    if !meta.is_dir() {
        return Err(io::Error::other("it is not a directory"));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(io::Error::other(format!(
            "it belongs to uid {}, not to the daemon's uid {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
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
            packets_counted: Some(Packets::Wire),
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
    fn a_large_table_comes_back_whole_and_an_older_daemons_pretty_one_still_loads() {
        let dir = dir();
        let state = StateFile::new(&dir);
        let many: Vec<SavedSession> = (0..4096)
            .map(|i| {
                let mut s = saved(&format!("s{i:04}"));
                s.filter = format!("udp and dst port {}", 10_000 + i);
                (s.packets, s.bytes) = (1 + i as u64, 64 * (1 + i as u64));
                s
            })
            .collect();
        state.save(many.clone()).unwrap();
        assert_eq!(state.load().unwrap(), many, "every session, every field");
        let whole = serde_json::to_vec(&SavedState {
            version: STATE_VERSION,
            sessions: many.clone(),
        })
        .unwrap();
        assert_eq!(fs::read(state.path()).unwrap(), whole, "as serde writes it");
        state.save(vec![]).unwrap();
        assert_eq!(state.load().unwrap(), vec![], "no session");
        assert!(
            !dir.join(format!(".{FILE}.tmp")).exists(),
            "the temporary file is renamed, not left"
        );
        // As the daemons before this one wrote it: indented.
        let pretty = serde_json::to_string_pretty(&SavedState {
            version: STATE_VERSION,
            sessions: many[..3].to_vec(),
        })
        .unwrap();
        fs::write(state.path(), pretty).unwrap();
        assert_eq!(state.load().unwrap(), many[..3].to_vec());
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
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"socket","direction":"both","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":18446744073709551615,"bytes":0,"base_packets":0,"base_bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"socket","direction":"both","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":5,"bytes":500,"base_packets":6,"base_bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"bogus","direction":"both","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":-1,"bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"vb:junk","filter":"","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"socket","direction":"in","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":9223372036854775808,"bytes":0}]}"#,
            // XDP sees no merged packets: `stack` is what no request could ask for.
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"xdp","direction":"in","packets_counted":"stack","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}]}"#,
            r#"{"version":1,"sessions":[{"name":"a","interface":"eth0","filter":"","hook":"tc","direction":"in","packets_counted":"frames","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}]}"#,
        ] {
            fs::write(state.path(), bad).unwrap();
            // Whatever the umask: a file others may write is refused for that alone.
            fs::set_permissions(state.path(), fs::Permissions::from_mode(0o600)).unwrap();
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
        // ... and from before `packets wire|stack`: none said, the hook's default.
        assert_eq!(loaded[0].packets_counted, None);
        // The highest count the daemon keeps is one it reads back.
        let mut top = saved("top");
        (top.packets, top.bytes) = (MAX_COUNT, MAX_COUNT);
        (top.base_packets, top.base_bytes) = (Some(MAX_COUNT), Some(0));
        state.save(vec![top.clone()]).unwrap();
        assert_eq!(state.load().unwrap(), vec![top]);
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

    #[test]
    fn never_reads_through_a_link_nor_a_file_others_may_write() {
        let dir = dir();
        fs::create_dir_all(&dir).unwrap();
        let state = StateFile::new(&dir);
        let elsewhere = dir.join("elsewhere.json");
        fs::write(&elsewhere, r#"{"version":1,"sessions":[]}"#).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.path()).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("it is a symbolic link"), "{err}");
        fs::remove_file(state.path()).unwrap();
        fs::copy(&elsewhere, state.path()).unwrap();
        fs::set_permissions(state.path(), fs::Permissions::from_mode(0o666)).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("others may write it (mode 0666)"), "{err}");
        fs::set_permissions(state.path(), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(state.load().unwrap(), vec![]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Tables written by older daemons still load: the hook and direction are the
    /// protocol's words, absent ones the socket hook's.
    #[test]
    fn older_tables_parse_into_the_hook_vocabulary() {
        let line = |extra: &str| {
            format!(
                r#"{{"name":"a","interface":"eth0","filter":""{extra},"created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":0,"bytes":0}}"#
            )
        };
        let before_hooks: SavedSession = serde_json::from_str(&line("")).unwrap();
        assert_eq!(
            (before_hooks.hook, before_hooks.direction),
            (HookName::Socket, Direction::Both)
        );
        let tc: SavedSession =
            serde_json::from_str(&line(r#","hook":"tc","direction":"out""#)).unwrap();
        assert_eq!((tc.hook, tc.direction), (HookName::Tc, Direction::Out));
        assert_eq!(
            capstats_common::Hook::of(tc.hook, tc.direction),
            [capstats_common::Hook::TcEgress]
        );
    }
}
