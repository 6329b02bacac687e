//! The capstats protocol between client and daemon: one JSON request and one JSON
//! response per line over the unix socket, and the constants both sides share.
//!
//! A request is `{"version":1,"command":"show","name":"web"}`; a response is either
//! `{"ok":{...}}` or `{"error":{"kind":"unknown_session","message":"..."}}`. Field
//! names are stable: scripts and monitoring agents parse them.

pub mod hook;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod text;

pub use hook::Hook;

/// The version of the line protocol; a daemon refuses requests of another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the daemon listens unless `-s`/`--socket` or `CAPSTATS_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/capstats";

/// Where the daemon keeps its session table unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/capstats";

/// Where the daemon pins its counter maps on bpffs unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/capstats";

/// The longest request line the daemon reads; longer ones get an error.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
