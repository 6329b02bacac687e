//! Where the daemon tests run: namespaces A and B joined by a veth pair, quiet and
//! able to carry any frame of the corpus.
//!
//! Quiet: IPv6 is off in both namespaces before the interfaces exist and no interface
//! has an address, so neither kernel sends a frame of its own (no router solicitation,
//! DAD, MLD, ARP) nor answers one it receives; GRO is off on both ends, so the
//! receiving kernel merges nothing. Every frame on the link is one a test wrote.
//!
//! Jumbo: both ends have the largest MTU a veth takes (65,535), so captures with
//! jumbo frames replay whole.
//!
//! The daemon runs in B and counts on B's end ([`Rig::interface`]); frames written on
//! A's end ([`Rig::sender_a`]) arrive there (inbound), frames written on B's end
//! ([`Rig::sender_b`]) leave from there (outbound).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::frame::{Ethernet, Ipv4, MacAddr, Tcp, ethertype};
use crate::link::{Link, VethPair};
use crate::netns::NetNs;
use crate::packet::PacketSocket;

/// A's end of the pair.
pub const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0xd0, 0x0a]);
/// B's end of the pair, where the daemon counts.
pub const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0xd0, 0x0b]);
/// The largest MTU of a veth.
pub const JUMBO_MTU: u32 = 65_535;
/// The addresses the frames of [`udp_a_to_b`] and [`tcp_syn_a_to_b`] carry (no
/// interface has them: nobody answers).
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// A UDP frame from A to B, to port `dport`, with `payload` bytes of payload:
/// `14 + 20 + 8 + payload` bytes long.
pub fn udp_a_to_b(dport: u16, payload: usize) -> Vec<u8> {
    Ethernet::new(MAC_B, MAC_A).frame(
        ethertype::IPV4,
        &Ipv4::new(IP_A, IP_B).udp(40000, dport, &vec![0x5a; payload]),
    )
}

/// A UDP frame from B to A, to port `dport`, with `payload` bytes of payload:
/// `14 + 20 + 8 + payload` bytes long. Written on B's end ([`Rig::sender_b`]), it is
/// outbound there.
pub fn udp_b_to_a(dport: u16, payload: usize) -> Vec<u8> {
    Ethernet::new(MAC_A, MAC_B).frame(
        ethertype::IPV4,
        &Ipv4::new(IP_B, IP_A).udp(40000, dport, &vec![0xa5; payload]),
    )
}

/// A TCP SYN from A to B, to port `dport` (54 bytes).
pub fn tcp_syn_a_to_b(dport: u16) -> Vec<u8> {
    Ethernet::new(MAC_B, MAC_A).frame(
        ethertype::IPV4,
        &Ipv4::new(IP_A, IP_B).tcp(&Tcp::syn(40000, dport)),
    )
}

/// `veth-a` in A and `veth-b` in B, jumbo MTU, GRO off, up.
fn quiet_jumbo_veth(ns_a: &NetNs, ns_b: &NetNs) -> anyhow::Result<VethPair> {
    let veth = VethPair::create(ns_a, ("veth-a", MAC_A), ns_b, ("veth-b", MAC_B))?;
    let mtu = JUMBO_MTU.to_string();
    for (ns, end) in [(ns_a, &veth.a), (ns_b, &veth.b)] {
        ns.ip(&["link", "set", &end.name, "mtu", &mtu])?;
        crate::cmd::run(ns.command("ethtool").args(["-K", &end.name, "gro", "off"]))?;
    }
    Ok(veth)
}

/// Two namespaces and the veth pair between them; all gone on drop.
#[derive(Debug)]
pub struct Rig {
    pub veth: VethPair,
    // Dropped after `veth`, whose interfaces they hold.
    pub ns_a: NetNs,
    pub ns_b: NetNs,
}

impl Rig {
    /// Creates namespaces `<tag>-a` and `<tag>-b` with `veth-a` in A and `veth-b` in B.
    ///
    /// # Errors
    /// When `ip`, `ethtool` or a sysctl fails (not root, say).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let ns_a = NetNs::create(&format!("{tag}-a"))?;
        let ns_b = NetNs::create(&format!("{tag}-b"))?;
        for ns in [&ns_a, &ns_b] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let veth = quiet_jumbo_veth(&ns_a, &ns_b)?;
        Ok(Self { veth, ns_a, ns_b })
    }

    /// Deletes the veth pair and makes it again, with the same names and addresses:
    /// new interfaces (new indexes) where the old ones were.
    ///
    /// # Errors
    /// When `ip` or `ethtool` fails.
    pub fn recreate_veth(&mut self) -> anyhow::Result<()> {
        let name = self.veth.b.name.clone();
        if self.ns_b.ip(&["link", "show", &name]).is_ok() {
            self.ns_b.ip(&["link", "del", &name])?;
        }
        self.veth = quiet_jumbo_veth(&self.ns_a, &self.ns_b)?;
        Ok(())
    }

    /// B's end, where the daemon counts.
    pub fn interface(&self) -> &str {
        &self.veth.b.name
    }

    /// Writes frames on A's end: they arrive on B's end (inbound there).
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn sender_a(&self) -> anyhow::Result<Sender> {
        Sender::on(&self.ns_a, &self.veth.a)
    }

    /// Writes frames on B's end: they leave from it (outbound there).
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn sender_b(&self) -> anyhow::Result<Sender> {
        Sender::on(&self.ns_b, &self.veth.b)
    }
}

/// An AF_PACKET socket writing frames out of one end of the pair.
#[derive(Debug)]
pub struct Sender {
    socket: PacketSocket,
    ifindex: u32,
}

impl Sender {
    /// A socket in `ns` writing out of `link`, one of its interfaces.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn on(ns: &NetNs, link: &Link) -> anyhow::Result<Self> {
        let socket = ns.run(|| Ok(PacketSocket::new()?))?;
        Ok(Self {
            socket,
            ifindex: link.ifindex,
        })
    }

    /// Writes one frame.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        Ok(self.socket.send(self.ifindex, frame)?)
    }

    /// Writes `count` copies of `frame`.
    ///
    /// # Errors
    /// When the kernel refuses one.
    pub fn send_n(&self, frame: &[u8], count: u64) -> anyhow::Result<()> {
        for _ in 0..count {
            self.send(frame)?;
        }
        Ok(())
    }

    /// Writes `frames` at a steady `per_second`: frame i leaves at i / `per_second`
    /// after the start, never before. Returns how long it took.
    ///
    /// # Errors
    /// When the kernel refuses a frame.
    pub fn send_paced<'f>(
        &self,
        frames: impl IntoIterator<Item = &'f [u8]>,
        per_second: u32,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for (i, frame) in (0u64..).zip(frames) {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(per_second));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            self.send(frame)
                .with_context(|| format!("writing frame {i}"))?;
        }
        Ok(start.elapsed())
    }

    /// [`Sender::send_paced`], adding 1 to `sent` after each frame is written, so that
    /// another thread can tell how far the stream is (to act in the middle of it).
    ///
    /// # Errors
    /// When the kernel refuses a frame.
    pub fn send_paced_counting<'f>(
        &self,
        frames: impl IntoIterator<Item = &'f [u8]>,
        per_second: u32,
        sent: &AtomicU64,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for (i, frame) in (0u64..).zip(frames) {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(per_second));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            self.send(frame)
                .with_context(|| format!("writing frame {i}"))?;
            sent.fetch_add(1, Ordering::SeqCst);
        }
        Ok(start.elapsed())
    }
}

/// A rig with a daemon in B (its own socket, state and pin directory under a scratch
/// directory), and its client: what most daemon tests start from. Fields drop in order:
/// the daemon stops before the pin guard removes what it may have left, then the
/// namespaces and the files go.
pub struct Setup {
    pub client: crate::daemon::Client,
    pub daemon: crate::daemon::Daemon,
    pub spec: crate::daemon::DaemonSpec,
    /// Removes the pin directory whatever the daemon left (a failed test).
    pub pins: crate::daemon::PinDir,
    pub rig: Rig,
    pub scratch: crate::scratch::ScratchDir,
}

impl Setup {
    /// Creates the rig and starts the daemon, its log in the scratch directory.
    ///
    /// # Errors
    /// When the namespaces, the directory or the daemon cannot be had.
    pub fn start(tag: &str) -> anyhow::Result<Self> {
        Self::start_with(tag, |spec| spec)
    }

    /// [`Setup::start`] with a daemon spec changed by `adjust` (an idle timeout, say).
    ///
    /// # Errors
    /// When the namespaces, the directory or the daemon cannot be had.
    pub fn start_with(
        tag: &str,
        adjust: impl FnOnce(crate::daemon::DaemonSpec) -> crate::daemon::DaemonSpec,
    ) -> anyhow::Result<Self> {
        let rig = Rig::new(tag)?;
        let scratch = crate::scratch::ScratchDir::new(tag)?;
        let spec = adjust(crate::daemon::DaemonSpec::new(
            scratch.join("capstats.sock"),
            scratch.join("state"),
        ));
        let pins = spec.pin_guard();
        Self::with_daemon(rig, scratch, spec, pins, "daemon.log")
    }

    /// Kills the daemon (`kill -9`: it leaves its pins and table as they are), lets
    /// `meanwhile` change the rig while none runs, and starts another with the same
    /// spec, its log at `log` in the scratch directory.
    ///
    /// # Errors
    /// When the daemon cannot be killed or started, or `meanwhile` fails.
    pub fn restart(
        self,
        log: &str,
        meanwhile: impl FnOnce(&mut Rig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let Setup {
            daemon,
            spec,
            pins,
            mut rig,
            scratch,
            ..
        } = self;
        daemon.kill()?;
        meanwhile(&mut rig)?;
        Self::with_daemon(rig, scratch, spec, pins, log)
    }

    /// Kills the daemon as [`Setup::restart`] does, lets `meanwhile` change what it left
    /// (its session table, say) while none runs, and starts another with the same spec,
    /// returning as soon as it answers (its restored sessions may still be compiling),
    /// with how long that took.
    ///
    /// # Errors
    /// When the daemon cannot be killed or started, or `meanwhile` fails.
    pub fn restart_answering(
        self,
        log: &str,
        meanwhile: impl FnOnce(&crate::daemon::DaemonSpec) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Self, Duration)> {
        let Setup {
            daemon,
            spec,
            pins,
            rig,
            scratch,
            ..
        } = self;
        daemon.kill()?;
        meanwhile(&spec)?;
        let started = Instant::now();
        let daemon = crate::daemon::Daemon::start_answering(&rig.ns_b, &spec, &scratch.join(log))?;
        let answered = started.elapsed();
        Ok((Self::around(daemon, rig, scratch, spec, pins)?, answered))
    }

    /// Sends `n` frames A to B and waits until each session of `names` has counted
    /// `total` of them, packets and bytes (within 10 s of arriving, still for 100 ms).
    ///
    /// # Errors
    /// When a frame cannot be sent, or a session counts otherwise.
    pub fn send_and_settle<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        frame: &[u8],
        n: u64,
        total: u64,
    ) -> anyhow::Result<()> {
        self.rig.sender_a()?.send_n(frame, n)?;
        for name in names {
            let session = self.client.settle(
                name,
                total,
                Duration::from_secs(10),
                Duration::from_millis(100),
            )?;
            let counted = (session.packets.unwrap_or(0), session.bytes.unwrap_or(0));
            anyhow::ensure!(
                counted == (total, total * frame.len() as u64),
                "{name} after {total} frames: {session:?}"
            );
        }
        Ok(())
    }

    fn with_daemon(
        rig: Rig,
        scratch: crate::scratch::ScratchDir,
        spec: crate::daemon::DaemonSpec,
        pins: crate::daemon::PinDir,
        log: &str,
    ) -> anyhow::Result<Self> {
        let daemon = crate::daemon::Daemon::start(&rig.ns_b, &spec, &scratch.join(log))?;
        Self::around(daemon, rig, scratch, spec, pins)
    }

    /// The setup of a started `daemon`, with a client of it.
    fn around(
        daemon: crate::daemon::Daemon,
        rig: Rig,
        scratch: crate::scratch::ScratchDir,
        spec: crate::daemon::DaemonSpec,
        pins: crate::daemon::PinDir,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: daemon.client()?,
            daemon,
            spec,
            pins,
            rig,
            scratch,
        })
    }
}
