//! What is attached to an interface's tcx hooks, asked of the kernel directly
//! (`BPF_PROG_QUERY` with `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS`): the Debian bpftool
//! (7.1) predates tcx and does not show it.
//!
//! Interface indices belong to a network namespace: query from inside the
//! interface's (with [`crate::netns::NetNs::run`]).

use std::io;

/// `BPF_PROG_QUERY`.
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type`: `BPF_TCX_INGRESS`, `BPF_TCX_EGRESS`.
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// The most a query returns (tcx holds at most 63 programs per hook).
const MAX: usize = 128;

/// The query part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct Query {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The programs on one tcx hook of an interface, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub programs: Vec<u32>,
    /// The link of each program (0 for one attached without a link).
    pub links: Vec<u32>,
    /// Changes with every attachment and detachment.
    pub revision: u64,
}

/// What runs on interface `ifindex`'s tcx ingress (`ingress`) or egress, in the
/// calling thread's namespace. An interface with nothing attached has revision 1 or
/// more and no programs.
///
/// # Errors
/// When the kernel refuses the query (no such interface, not root).
pub fn attached(ifindex: u32, ingress: bool) -> io::Result<Attached> {
    let mut programs = [0u32; MAX];
    let mut links = [0u32; MAX];
    let mut query = Query {
        target_ifindex: ifindex,
        attach_type: if ingress {
            BPF_TCX_INGRESS
        } else {
            BPF_TCX_EGRESS
        },
        prog_ids: programs.as_mut_ptr() as u64,
        link_ids: links.as_mut_ptr() as u64,
        count: MAX as u32,
        ..Query::default()
    };
    // SAFETY: `query` is a valid BPF_PROG_QUERY attribute of the size given; the id
    // buffers hold `count` entries and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut query,
            size_of::<Query>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("BPF_PROG_QUERY (tcx) on ifindex {ifindex}: {e}"),
        ));
    }
    let n = (query.count as usize).min(MAX);
    Ok(Attached {
        programs: programs[..n].to_vec(),
        links: links[..n].to_vec(),
        revision: query.revision,
    })
}
