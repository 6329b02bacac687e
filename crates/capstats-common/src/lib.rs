//! The capstats protocol between client and daemon: one JSON request and one JSON
//! response per line over the unix socket. Shared constants live here too.

/// The version of the line protocol; a daemon refuses requests of another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the daemon listens unless `-s`/`--socket` or `CAPSTATS_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/capstats";
