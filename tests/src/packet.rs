//! AF_PACKET sockets: writing raw frames, and tapping an interface as tcpdump does.
//!
//! A tap is a `SOCK_RAW` socket bound to one interface with `ETH_P_ALL`: the kernel hands
//! it every frame the interface receives and every frame it sends, from the Ethernet
//! header on (`PACKET_OUTGOING` for the latter), after moving a received frame's outer
//! VLAN tag into the socket buffer's metadata. A filter attached to it (classic with
//! [`PacketSocket::attach_classic`], eBPF with `SO_ATTACH_BPF`) runs on each of them
//! before anything is queued.
//!
//! To count from a well-defined moment on, open the socket ([`PacketSocket::new`]: it
//! receives nothing yet), attach its filter, then [`PacketSocket::bind`] it.

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use capstats_ebpf::cbpf::RawInsn;

/// `ETH_P_ALL`: every protocol, in both directions.
pub const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

/// An AF_PACKET `SOCK_RAW` socket.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

/// `struct tpacket_stats`: what a socket's filter accepted since the last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames the filter accepted, queued or not.
    pub packets: u64,
    /// Of those, frames dropped because the receive queue was full.
    pub drops: u64,
}

/// What [`PacketSocket::drain`] received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub packets: u64,
    /// The sum of the frames' lengths as the filter saw them (`skb->len`).
    pub bytes: u64,
    /// Frames whose VLAN tag the kernel held in metadata (with
    /// [`PacketSocket::enable_auxdata`]; 0 without).
    pub tagged: u64,
}

impl Received {
    /// The bytes as tcpdump records them: a tag held in metadata is put back, 4 bytes.
    pub fn wire_bytes(&self) -> u64 {
        self.bytes + 4 * self.tagged
    }
}

/// The `PACKET_AUXDATA` control message of a received frame, if any.
fn auxdata(msg: &libc::msghdr) -> Option<libc::tpacket_auxdata> {
    // SAFETY: msg was filled by recvmsg; the CMSG macros stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

impl std::ops::AddAssign for PacketStats {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.drops += other.drops;
    }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn link_address(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = ifindex as i32;
    address
}

impl PacketSocket {
    /// Opens a socket in the calling thread's network namespace. With protocol 0 and no
    /// binding it receives nothing; it can already write frames ([`PacketSocket::send`]).
    ///
    /// # Errors
    /// When `socket()` fails (`EPERM` without `CAP_NET_RAW`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right after.
        let fd = check(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
            "socket(AF_PACKET, SOCK_RAW)",
        )?;
        // SAFETY: a new fd nobody else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Binds to interface `ifindex` for `protocol` ([`ETH_P_ALL`] to tap everything).
    ///
    /// # Errors
    /// When `bind()` fails (no such interface in the socket's namespace).
    pub fn bind(&self, ifindex: u32, protocol: u16) -> io::Result<()> {
        let address = link_address(ifindex, protocol);
        // SAFETY: a valid sockaddr_ll and its size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc, &format!("bind(AF_PACKET) to ifindex {ifindex}")).map(drop)
    }

    /// Writes `frame` (from its Ethernet header on) out of interface `ifindex`.
    ///
    /// # Errors
    /// When `sendto()` fails or writes less than the frame.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        let address = link_address(ifindex, 0);
        // SAFETY: valid buffer and address with their sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "sendto(AF_PACKET) of a {}-byte frame on ifindex {ifindex}: {e}",
                    frame.len()
                ),
            ));
        }
        if sent as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Attaches a classic program (`SO_ATTACH_FILTER`): the kernel's own classic path,
    /// checked by `bpf_check_classic()` and run as the kernel runs tcpdump's filters.
    ///
    /// # Errors
    /// When the kernel refuses the program.
    pub fn attach_classic(&self, program: &[RawInsn]) -> io::Result<()> {
        let mut insns: Vec<libc::sock_filter> = program
            .iter()
            .map(|insn| libc::sock_filter {
                code: insn.code,
                jt: insn.jt,
                jf: insn.jf,
                k: insn.k,
            })
            .collect();
        let len =
            u16::try_from(insns.len()).map_err(|_| io::Error::other("classic program too long"))?;
        let fprog = libc::sock_fprog {
            len,
            filter: insns.as_mut_ptr(),
        };
        self.set_option(
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
            "SO_ATTACH_FILTER",
        )
    }

    /// Sets the receive buffer to `bytes`, beyond `rmem_max` (`SO_RCVBUFFORCE`, root), so
    /// that whatever a test lets queue up fits.
    ///
    /// # Errors
    /// When `setsockopt()` fails.
    pub fn force_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let bytes = libc::c_int::try_from(bytes)
            .map_err(|_| io::Error::other("receive buffer too large"))?;
        self.set_option(
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes,
            "SO_RCVBUFFORCE",
        )
    }

    /// Reads and resets the socket's statistics (`PACKET_STATISTICS`).
    ///
    /// # Errors
    /// When `getsockopt()` fails.
    pub fn take_stats(&self) -> io::Result<PacketStats> {
        // SAFETY: plain data.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid buffer and length.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        check(rc, "getsockopt(PACKET_STATISTICS)")?;
        // The kernel reports drops inside tp_packets too.
        Ok(PacketStats {
            packets: u64::from(stats.tp_packets),
            drops: u64::from(stats.tp_drops),
        })
    }

    /// Asks for each received frame's `struct tpacket_auxdata` (`PACKET_AUXDATA`), which
    /// says whether the kernel holds a VLAN tag of it in metadata; [`PacketSocket::drain`]
    /// counts those.
    ///
    /// # Errors
    /// When `setsockopt()` fails.
    pub fn enable_auxdata(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        self.set_option(
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            &on,
            "PACKET_AUXDATA",
        )
    }

    /// Receives every queued frame without waiting. Each frame's full length as the
    /// filter saw it is summed (`MSG_TRUNC`), however little of it is copied.
    ///
    /// # Errors
    /// When `recvmsg()` fails other than for an empty queue.
    pub fn drain(&self) -> io::Result<Received> {
        let mut received = Received::default();
        let mut buffer = [0u8; 64];
        // u64s: aligned for cmsghdr.
        let mut control = [0u64; 16];
        loop {
            let mut iov = libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            };
            // SAFETY: plain data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { zeroed() };
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            // SAFETY: msg points at live buffers of the sizes it states.
            let n = unsafe {
                libc::recvmsg(
                    self.fd.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(received);
                }
                return Err(io::Error::new(e.kind(), format!("recvmsg(AF_PACKET): {e}")));
            }
            received.packets += 1;
            received.bytes += n as u64;
            if auxdata(&msg).is_some_and(|aux| aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0) {
                received.tagged += 1;
            }
        }
    }

    fn set_option<T>(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
        what: &str,
    ) -> io::Result<()> {
        // SAFETY: `value` is a valid T for the option and outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        check(rc, &format!("setsockopt({what})")).map(drop)
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
