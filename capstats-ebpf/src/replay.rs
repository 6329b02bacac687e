//! Frames the test harness refuses, sent through a real TC egress hook instead.
//!
//! `BPF_PROG_RUN` takes frames of at most about a page, and on this kernel refuses an
//! IPv4 or IPv6 frame whose network header is cut short. Such records are real traffic
//! (GRO'd 64 KB segments, truncated captures), so [`EgressReplay`] gives them to the same
//! program through the kernel's transmit path: an `ifb` device in a network namespace of
//! its own, with the program on its TC egress hook, and an AF_PACKET socket that writes
//! each frame to it. The program sees the frame from its Ethernet header, with
//! `skb->len` its full length; `ifb` then drops it, since nothing redirected it there.
//! Nothing leaves the namespace, and the namespace lives exactly as long as the socket.

use std::io;
use std::os::fd::OwnedFd;
use std::process::Command;

use aya::programs::{SchedClassifier, tc::TcAttachType};

/// The device's name inside its private namespace.
const DEVICE: &str = "capstats0";
/// Larger than any record libpcap reads (its maximum snapshot length is 262144).
const MTU: &str = "300000";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot set up the private replay namespace: {step}: {cause}")]
    Setup {
        step: &'static str,
        cause: io::Error,
    },
    #[error(
        "cannot attach the program to TC egress of the replay device: {}",
        crate::errors::with_causes(.0)
    )]
    Attach(aya::programs::ProgramError),
    #[error("sending a {len}-byte frame through the replay device: {cause}")]
    Send { len: usize, cause: io::Error },
}

/// An AF_PACKET socket on a private `ifb` device whose egress runs the program.
#[derive(Debug)]
pub struct EgressReplay {
    socket: OwnedFd,
    ifindex: i32,
}

fn setup(step: &'static str) -> impl FnOnce(io::Error) -> ReplayError {
    move |cause| ReplayError::Setup { step, cause }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl EgressReplay {
    /// Creates the namespace and device, and attaches `program` to the device's egress.
    pub fn new(program: &mut SchedClassifier) -> Result<Self, ReplayError> {
        // A thread of its own enters the new namespace, so the caller's stays as it was;
        // the socket keeps the namespace alive after the thread ends.
        std::thread::scope(|scope| {
            scope
                .spawn(|| Self::setup_in_new_namespace(program))
                .join()
                .unwrap_or_else(|_| Err(setup("thread")(io::Error::other("setup thread panicked"))))
        })
    }

    fn setup_in_new_namespace(program: &mut SchedClassifier) -> Result<Self, ReplayError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| setup("unshare(CLONE_NEWNET)")(e.into()))?;
        // No IPv6 on devices made from here on: no router solicitations on our egress.
        // (/proc/sys/net shows the namespace of the thread that opens it.)
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(setup("disable IPv6"))?;
        ip(&["link", "add", DEVICE, "type", "ifb"]).map_err(setup("create the ifb device"))?;
        ip(&["link", "set", DEVICE, "mtu", MTU, "up"]).map_err(setup("bring the device up"))?;
        program
            .attach(DEVICE, TcAttachType::Egress)
            .map_err(ReplayError::Attach)?;

        let ifindex = nix::net::if_::if_nametoindex(DEVICE)
            .map_err(|e| setup("find the device")(e.into()))?;
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| setup("find the device")(io::Error::other("index out of range")))?;
        // Protocol 0: the socket only sends, it never receives.
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Packet,
            nix::sys::socket::SockType::Raw,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| setup("AF_PACKET socket")(e.into()))?;
        Ok(Self { socket, ifindex })
    }

    /// Writes one Ethernet frame (at least 14 bytes) to the device; the egress program
    /// has run when this returns.
    pub fn send(&self, frame: &[u8]) -> Result<(), ReplayError> {
        let failed = |cause| ReplayError::Send {
            len: frame.len(),
            cause,
        };
        let sent =
            crate::sys::packet::send_frame(&self.socket, self.ifindex, frame).map_err(failed)?;
        if sent != frame.len() {
            // A packet socket sends a frame whole or not at all.
            return Err(failed(io::Error::from(io::ErrorKind::WriteZero)));
        }
        Ok(())
    }
}
