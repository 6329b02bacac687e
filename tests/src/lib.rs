//! Shared helpers of the end-to-end tests: network namespaces, veth pairs, raw frames
//! and AF_PACKET sockets, with libpcap and tcpdump as the oracles.
//!
//! Everything a test creates lives in network namespaces it owns ([`netns::NetNs`],
//! deleted on drop, panics included); no test sends a frame outside them.
//!
//! - [`netns`]: named namespaces, and running code or commands inside one.
//! - [`link`]: veth pairs and VLAN devices in those namespaces.
//! - [`frame`]: Ethernet frames byte by byte (802.1Q/802.1ad tags, IPv4, IPv6, ARP,
//!   TCP, UDP, ICMP), checksums included.
//! - [`packet`]: AF_PACKET sockets to write frames and to tap an interface, with a
//!   classic or an eBPF filter attached.
//! - [`tcpdump`]: tcpdump capturing inside a namespace, read back as an oracle.
//! - [`tcx`]: which programs run on an interface's tcx hooks (asked of the kernel).
//! - [`scratch`]: temporary directories removed on drop.
//! - [`corpus`]: the capture corpus, and replaying its files with tcpreplay.
//! - [`cmd`]: running `ip`, `ethtool`, `tcpdump` with errors that say what failed.
//! - [`daemon`]: the real `capstats` binary as a daemon in a namespace and as its
//!   client, and the quiet veth pair the daemon tests run on.

pub mod cmd;
pub mod corpus;
pub mod daemon;
pub mod frame;
pub mod link;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod scratch;
pub mod tcpdump;
pub mod tcx;

/// Stops the test with the reason when it does not run as root: end-to-end tests create
/// namespaces, load eBPF programs and open raw sockets, and must not pass by skipping.
///
/// # Panics
/// When the effective user is not root.
pub fn require_root(test: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{test} needs root (it creates network namespaces, loads eBPF programs and opens \
         AF_PACKET sockets); running as uid {euid}. Run it as root, e.g. \
         `sudo -E cargo test -p capstats-tests --test {test}`."
    );
}

/// What the scoped thread `handle` returned; its panic, if it panicked, goes on in the
/// test's thread (with the thread's message, not a `join` error's).
pub fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
