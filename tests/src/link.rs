//! Interfaces inside test namespaces: veth pairs made with `ip link`, and redirection
//! between interfaces with `tc`.
//!
//! They need no guard of their own: deleting a namespace ([`NetNs`]) destroys its
//! interfaces, and a veth pair goes with either end.

use crate::frame::MacAddr;
use crate::netns::NetNs;

/// An interface in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: MacAddr,
    /// The index in its own namespace (indices are per namespace).
    pub ifindex: u32,
}

impl Link {
    /// Looks `name` up in `ns`.
    ///
    /// # Errors
    /// When there is no such interface.
    pub fn find(ns: &NetNs, name: &str, mac: MacAddr) -> anyhow::Result<Self> {
        let ifindex = ns.run(|| ifindex(name))?;
        Ok(Self {
            name: name.to_owned(),
            mac,
            ifindex,
        })
    }

    /// `ip link set NAME up`.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn up(&self, ns: &NetNs) -> anyhow::Result<()> {
        ns.ip(&["link", "set", &self.name, "up"]).map(drop)
    }
}

/// The index of interface `name` in the calling thread's namespace.
///
/// # Errors
/// When there is no such interface.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("no interface {name:?}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

/// The two ends of a veth pair; frames written on one end arrive on the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub a: Link,
    pub b: Link,
}

impl VethPair {
    /// Creates a pair with end `a` (named `name_a`, address `mac_a`) in `ns_a` and end `b`
    /// in `ns_b`, and brings both up. Fixed addresses keep the frames a test writes
    /// predictable.
    ///
    /// # Errors
    /// When `ip link add` fails (a name taken, not root).
    pub fn create(
        ns_a: &NetNs,
        (name_a, mac_a): (&str, MacAddr),
        ns_b: &NetNs,
        (name_b, mac_b): (&str, MacAddr),
    ) -> anyhow::Result<Self> {
        // Created directly inside the namespaces: never visible in the host's.
        let add = format!(
            "link add {name_a} address {mac_a} type veth peer name {name_b} address {mac_b} netns {}",
            ns_b.name()
        );
        ns_a.ip(&add.split_whitespace().collect::<Vec<_>>())?;
        let pair = Self {
            a: Link::find(ns_a, name_a, mac_a)?,
            b: Link::find(ns_b, name_b, mac_b)?,
        };
        pair.a.up(ns_a)?;
        pair.b.up(ns_b)?;
        Ok(pair)
    }
}

/// Redirects every frame arriving on `from` out of `to` (both in `ns`): a `tc` ingress
/// qdisc on `from` with a match-all `u32` filter and a `mirred egress redirect` action.
///
/// The frame keeps what the receive path gave it, in particular an outer VLAN tag moved
/// into metadata on arrival: it leaves `to` with the tag there, which is how frames sent
/// through a VLAN device look to AF_PACKET taps on `to`, without the `8021q` module.
///
/// # Errors
/// When `tc` fails (no `sch_ingress`, `cls_u32` or `act_mirred` in the kernel).
pub fn redirect_to_egress(ns: &NetNs, from: &Link, to: &Link) -> anyhow::Result<()> {
    let tc = |args: String| {
        let args: Vec<&str> = args.split_whitespace().collect();
        crate::cmd::run(ns.command("tc").args(args)).map(drop)
    };
    tc(format!("qdisc add dev {} ingress", from.name))?;
    tc(format!(
        "filter add dev {} ingress protocol all u32 match u32 0 0 action mirred egress redirect dev {}",
        from.name, to.name
    ))
}

/// A tun device (raw IP: no link-layer header) in a namespace, with its queue open:
/// IP packets written to it arrive on the interface, as from a VPN's wire. The
/// device goes with its namespace; the queue closes on drop.
#[derive(Debug)]
pub struct Tun {
    pub name: String,
    file: std::fs::File,
}

impl Tun {
    /// `ip tuntap add NAME mode tun` in `ns`, its queue opened from inside `ns`
    /// (`TUNSETIFF`, no packet information header), and the interface set up.
    ///
    /// # Errors
    /// When `ip` fails or `/dev/net/tun` cannot be opened or attached.
    pub fn create(ns: &NetNs, name: &str) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        ns.ip(&["tuntap", "add", name, "mode", "tun"])?;
        let file = ns.run(|| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(|e| anyhow::anyhow!("cannot open /dev/net/tun: {e}"))?;
            // struct ifreq: the name, then ifr_flags.
            let mut request = [0u8; 40];
            request[..name.len()].copy_from_slice(name.as_bytes());
            let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as u16;
            request[16..18].copy_from_slice(&flags.to_ne_bytes());
            const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
            // SAFETY: an ifreq-sized buffer for the ioctl to read and write.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
            anyhow::ensure!(
                rc == 0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            Ok(file)
        })?;
        ns.ip(&["link", "set", name, "up"])?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// Writes one IP packet: it arrives on the interface.
    ///
    /// # Errors
    /// When the write fails or is short.
    pub fn send(&self, packet: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let written = (&self.file).write(packet)?;
        anyhow::ensure!(
            written == packet.len(),
            "wrote {written} of {} bytes",
            packet.len()
        );
        Ok(())
    }
}
