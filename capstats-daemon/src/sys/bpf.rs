//! The `bpf(2)` commands the daemon needs and aya does not offer publicly: opening
//! whatever object is pinned at a path (`BPF_OBJ_GET`) and detaching a link at once
//! (`BPF_LINK_DETACH`). Both are made by `capstats_ebpf::sys::bpf`, the workspace's
//! one `bpf()` system call; this module only names them for the daemon.

use std::io;
use std::os::fd::AsFd;

pub use capstats_ebpf::sys::bpf::obj_get;

/// Detaches the link `link` at once, whoever else holds it: its program stops running
/// now, not when the last reference goes.
pub fn link_detach(link: impl AsFd) -> io::Result<()> {
    capstats_ebpf::sys::bpf::link_detach(link.as_fd())
}
