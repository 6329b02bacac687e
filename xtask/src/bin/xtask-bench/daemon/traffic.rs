//! Frames into the veth pair as fast as one thread writes them, and the machine's CPU
//! time while it does.
//!
//! The sender is an AF_PACKET socket opened in the sending namespace and bound to its
//! end of the pair, so the frames cannot go anywhere else. `PACKET_QDISC_BYPASS` hands
//! each frame straight to the veth driver, and `sendmmsg` writes [`BATCH`] frames per
//! system call. The veth driver passes each frame to its peer, whose receive path (the
//! daemon's socket filters included) runs in the sender's own softirq on the same CPU:
//! the send rate is therefore also a measure of what the receiving side costs per
//! frame.

use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Frames per `sendmmsg` call.
const BATCH: usize = 256;
/// The longest the sending may take before the bench gives up.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// An AF_PACKET socket writing frames out of one interface.
#[derive(Debug)]
pub struct PacketSender {
    fd: OwnedFd,
    ifindex: i32,
}

/// What [`PacketSender::send`] did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Frames the kernel took.
    pub frames: u64,
    pub elapsed: Duration,
    /// `sendmmsg` calls that took no frame (the kernel had no room) and were repeated.
    pub retries: u64,
}

impl Sent {
    pub fn per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl PacketSender {
    /// Opens the socket on `interface` of the calling thread's network namespace (call
    /// it inside [`super::netns::Namespace::run`]). Protocol 0: it receives nothing.
    pub fn open(interface: &str) -> anyhow::Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!(
                "no interface {interface} here: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: plain system calls; the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // SAFETY: an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Writes `count` copies of `frame` (a whole Ethernet frame), as fast as the kernel
    /// takes them.
    pub fn send(&self, frame: &[u8], count: u64) -> anyhow::Result<Sent> {
        // SAFETY (all of this function's unsafe blocks): the messages point at
        // `address`, `iov` and `frame`, which outlive the sendmmsg calls, and the kernel
        // only reads them (it writes msg_len alone).
        let mut address: libc::sockaddr_ll = unsafe { zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address.sll_ifindex = self.ifindex;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                let mut message: libc::mmsghdr = unsafe { zeroed() };
                message.msg_hdr.msg_name = (&mut address as *mut libc::sockaddr_ll).cast();
                message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
                message.msg_hdr.msg_iov = &mut iov;
                message.msg_hdr.msg_iovlen = 1;
                message
            })
            .collect();

        let start = Instant::now();
        let (mut frames, mut retries) = (0u64, 0u64);
        while frames < count {
            let batch = (count - frames).min(BATCH as u64) as u32;
            let rc =
                unsafe { libc::sendmmsg(self.fd.as_raw_fd(), messages.as_mut_ptr(), batch, 0) };
            if rc > 0 {
                frames += rc as u64;
            } else {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                        retries += 1;
                        std::thread::yield_now();
                    }
                    _ => return Err(error).context("sendmmsg on the AF_PACKET socket"),
                }
            }
            if start.elapsed() > SEND_TIMEOUT {
                bail!("sent only {frames} of {count} frames in {SEND_TIMEOUT:?}");
            }
        }
        Ok(Sent {
            frames,
            elapsed: start.elapsed(),
            retries,
        })
    }
}

/// The machine's CPU time (every CPU) from the first line of `/proc/stat`, in clock
/// ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    /// Also nice, irq and steal: everything but idle and iowait.
    pub busy: u64,
    pub idle: u64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&stat)
    }

    fn parse(stat: &str) -> anyhow::Result<Self> {
        let line = stat
            .lines()
            .find(|line| line.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is in user)
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().context("a field of /proc/stat is not a number"))
            .collect::<anyhow::Result<_>>()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let (user, nice, system, idle, iowait) = (field(0), field(1), field(2), field(3), field(4));
        let (irq, softirq, steal) = (field(5), field(6), field(7));
        Ok(Self {
            user,
            system,
            softirq,
            busy: user + nice + system + irq + softirq + steal,
            idle: idle + iowait,
        })
    }

    /// The ticks spent between `before` and `self`.
    pub fn since(&self, before: &MachineCpu) -> MachineCpu {
        MachineCpu {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
            softirq: self.softirq.saturating_sub(before.softirq),
            busy: self.busy.saturating_sub(before.busy),
            idle: self.idle.saturating_sub(before.idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let stat = "cpu  100 5 40 1000 3 2 7 1 0 0\ncpu0 50 2 20 500 1 1 3 0 0 0\nintr 1\n";
        let cpu = MachineCpu::parse(stat).unwrap();
        assert_eq!(
            cpu,
            MachineCpu {
                user: 100,
                system: 40,
                softirq: 7,
                busy: 100 + 5 + 40 + 2 + 7 + 1,
                idle: 1003,
            }
        );
    }
}
