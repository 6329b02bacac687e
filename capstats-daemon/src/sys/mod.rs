//! The daemon's system calls, in one place: thin typed wrappers that callers use as
//! safe functions returning `io::Result`. Where `nix` covers a call it makes it; the
//! few calls it does not cover (`SIOCGIFFLAGS`, binding a packet socket to an
//! interface) are made here, each `unsafe` block with a `// SAFETY:` comment saying why
//! it holds; the `bpf` commands aya keeps private are `capstats_ebpf::sys::bpf`'s. No
//! other module of the daemon should need `unsafe` for a system call.
//!
//! - [`rlimit`]: the limit on open files (read and raised);
//! - [`iface`]: interface index and flags by name;
//! - [`packet`]: AF_PACKET sockets (the socket filter's counting socket);
//! - [`netlink`]: rtnetlink sockets (interface announcements, link queries);
//! - [`bpf`]: the `bpf(2)` commands aya does not offer (open a pin, detach a link),
//!   made by `capstats_ebpf::sys::bpf`;
//! - [`creds`]: a unix socket peer's credentials;
//! - [`lock`]: an exclusive `flock` that says who holds it when it is taken;
//! - [`process`]: helpers that die with the daemon (`PR_SET_PDEATHSIG`), their output
//!   waited for within a time (`poll`).

pub mod bpf;
pub mod creds;
pub mod iface;
pub mod lock;
pub mod netlink;
pub mod packet;
pub mod process;
pub mod rlimit;

/// `nix`'s error as the `io::Error` callers get: the same errno.
fn io(errno: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(errno)
}
