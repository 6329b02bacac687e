//! Helpers of the XDP session tests (`tests/daemon_xdp.rs`).
//!
//! - [`ask`]: one raw request to a daemon, for the error kinds the client does not print.
//! - [`program_on`]: the XDP program an interface runs, as `ip -d link show` reports it.
//! - [`link_of`]: the BPF link that holds a program on its interface, as `bpftool link`
//!   reports it.
//! - [`ForeignXdp`]: an XDP program capstats did not attach, attached the ways other
//!   tools attach theirs: through a BPF link, or through netlink as `ip link set dev IF
//!   xdp...` does; natively or generically. Detached on drop.
//! - [`MetadataTagger`]: frames leaving an interface tagged in the socket buffer's
//!   metadata, as a VLAN device or a NIC's VLAN offload tags them.
//! - [`veth_without_native_xdp`]: a veth pair whose receiving end runs XDP generically.
//! - [`Expected`]: what a session must count of frames B's end received, per hook, from
//!   libpcap's own verdicts (`pcap_offline_filter`).
//! - [`corpus_frames`]: the frames of corpus captures (`crate::corpus` replays them).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aya_obj::generated::bpf_prog_type;
use capstats_common::protocol::{Command, Request, Response};
use capstats_ebpf::filter::Filter;
use capstats_ebpf::insn::{AluOp, Insn, Operand, Reg, Width};
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::translate::Hook;

use crate::frame::{MacAddr, ethertype, outer_tag, without_outer_tag};
use crate::link::{Link, VethPair};
use crate::netns::NetNs;

pub use super::{Count, counts};

/// Sends one request to the daemon on `socket` and reads its response.
///
/// # Errors
/// When the daemon cannot be reached or answers something that is not a response.
pub fn ask(socket: &Path, command: Command) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(&Request::new(command))?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).with_context(|| format!("the daemon answered {answer:?}"))
}

/// The XDP program on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnInterface {
    /// `native` (in the driver), `generic` (`xdpgeneric`), `offload` or `multi`.
    pub mode: &'static str,
    /// The program's kernel id.
    pub id: u32,
    pub name: String,
}

/// The XDP program `interface` (in `ns`) runs, if any: `ip -j -d link show`.
///
/// # Errors
/// When `ip` fails or prints something unexpected.
pub fn program_on(ns: &NetNs, interface: &str) -> anyhow::Result<Option<OnInterface>> {
    let json = ns.ip(&["-j", "-d", "link", "show", "dev", interface])?;
    let links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j link show printed {json}"))?;
    let Some(xdp) = links.get(0).and_then(|l| l.get("xdp")) else {
        return Ok(None);
    };
    // XDP_ATTACHED_DRV, _SKB, _HW, _MULTI (linux/if_link.h).
    let mode = match xdp.get("mode").and_then(serde_json::Value::as_u64) {
        Some(1) => "native",
        Some(2) => "generic",
        Some(3) => "offload",
        Some(4) => "multi",
        other => bail!("{interface}: unknown XDP mode {other:?} in {xdp}"),
    };
    let prog = xdp
        .get("prog")
        .with_context(|| format!("{interface}: XDP without a program: {xdp}"))?;
    Ok(Some(OnInterface {
        mode,
        id: prog
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .with_context(|| format!("{interface}: no program id in {xdp}"))?,
        name: prog
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }))
}

/// The id of the XDP link that runs program `prog_id`, if a link runs it (and not a
/// netlink attachment): `bpftool link show`. Links are global, so no namespace.
///
/// # Errors
/// When bpftool fails.
pub fn link_of(prog_id: u32) -> anyhow::Result<Option<u32>> {
    let json = crate::cmd::run(std::process::Command::new("bpftool").args(["-j", "link", "show"]))?;
    let links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("bpftool link show printed {json}"))?;
    Ok(links.as_array().into_iter().flatten().find_map(|link| {
        let is_xdp = link.get("type").and_then(serde_json::Value::as_str) == Some("xdp");
        let runs = link.get("prog_id").and_then(serde_json::Value::as_u64) == Some(prog_id.into());
        (is_xdp && runs)
            .then(|| link.get("id")?.as_u64()?.try_into().ok())
            .flatten()
    }))
}

/// How an XDP program runs on an interface: the daemon's own word for it, as
/// [`OnInterface::mode`] says it.
pub use capstats_common::hook::XdpMode;

/// `XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE`, as another tool attaches in `mode`.
const fn xdp_flags(mode: XdpMode) -> u32 {
    match mode {
        XdpMode::Native => 1 << 2,
        XdpMode::Generic => 1 << 1,
    }
}

/// `ip link set ... xdpdrv` or `xdpgeneric`.
const fn ip_keyword(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Native => "xdpdrv",
        XdpMode::Generic => "xdpgeneric",
    }
}

/// How another tool attached its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A BPF link (`BPF_LINK_CREATE`), as libxdp or Cilium attach: closing its fd
    /// detaches it.
    Link(XdpMode),
    /// Netlink (`IFLA_XDP`), as `ip link set dev IF xdp... pinned FILE` attaches: it
    /// stays until someone takes it off.
    Netlink(XdpMode),
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attachment::Link(mode) => write!(f, "a BPF link, {}", mode.as_str()),
            Attachment::Netlink(mode) => write!(f, "netlink, {}", mode.as_str()),
        }
    }
}

/// An XDP program that capstats did not attach: `r0 = XDP_PASS; exit`, on an interface
/// until dropped.
#[derive(Debug)]
pub struct ForeignXdp<'ns> {
    program: LoadedProgram,
    /// The BPF link holding the attachment, for [`Attachment::Link`].
    _link: Option<OwnedFd>,
    /// For [`Attachment::Netlink`]: where to take it off.
    netlink: Option<(&'ns NetNs, String, XdpMode)>,
}

const XDP_PASS: i32 = 2;
/// `BPF_LINK_CREATE` and the XDP attach type (linux/bpf.h): capstats attaches through
/// aya, so `capstats_ebpf::sys::bpf` (which loads the tagger and pins the foreign
/// program) makes no links.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;

/// `bpf(cmd, attr)` with an attribute struct whose unused tail is zero.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a plain repr(C) struct of the size passed; the kernel reads it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl<'ns> ForeignXdp<'ns> {
    /// Loads the program and attaches it to `link` (an interface of `ns`) as `how` says.
    /// A netlink attachment goes through a pin in `pin_dir` (on bpffs; the caller guards
    /// it), which `ip` opens and which is removed right after.
    ///
    /// # Errors
    /// When the program cannot be loaded or attached.
    pub fn attach(
        ns: &'ns NetNs,
        link: &Link,
        how: Attachment,
        pin_dir: &Path,
    ) -> anyhow::Result<Self> {
        let pass = [
            // r0 = XDP_PASS
            Insn::Alu {
                width: Width::W64,
                op: AluOp::Mov,
                dst: Reg::R0,
                src: Operand::Imm(XDP_PASS),
            },
            Insn::Exit,
        ];
        let program = LoadedProgram::load(Hook::Xdp, "foreign_pass", &pass)?;
        match how {
            Attachment::Link(mode) => {
                let fd = program.as_fd().as_raw_fd();
                Ok(Self {
                    _link: Some(link_create(ns, link, fd, BPF_XDP, xdp_flags(mode))?),
                    program,
                    netlink: None,
                })
            }
            Attachment::Netlink(mode) => {
                std::fs::create_dir_all(pin_dir)
                    .with_context(|| format!("cannot create {}", pin_dir.display()))?;
                let pin = pin_dir.join("foreign_pass");
                capstats_ebpf::sys::bpf::obj_pin(program.as_fd(), &pin)
                    .with_context(|| format!("pinning at {}", pin.display()))?;
                // Not `ip -n`: it mounts its own /sys, where the pin is not.
                let attached = crate::cmd::run(
                    ns.command_keeping_mounts("ip")
                        .args(["link", "set", "dev", &link.name, ip_keyword(mode), "pinned"])
                        .arg(&pin),
                );
                let _ = std::fs::remove_file(&pin);
                let _ = std::fs::remove_dir(pin_dir);
                attached?;
                Ok(Self {
                    program,
                    _link: None,
                    netlink: Some((ns, link.name.clone(), mode)),
                })
            }
        }
    }

    /// The program's kernel id.
    pub fn id(&self) -> u32 {
        self.program.id()
    }
}

impl Drop for ForeignXdp<'_> {
    fn drop(&mut self) {
        // A link goes with its fd; a netlink attachment is taken off.
        if let Some((ns, interface, mode)) = &self.netlink
            && let Err(e) = ns.ip(&["link", "set", "dev", interface, ip_keyword(*mode), "off"])
        {
            eprintln!("warning: the foreign XDP program stays on {interface}: {e:#}");
        }
    }
}

/// Tags every frame leaving an interface with an 802.1Q tag held in the socket buffer's
/// metadata (not written into the frame), as a VLAN device hands its frames to the
/// device below it, or as a NIC with VLAN offload receives them: a tcx egress program
/// calling `bpf_skb_vlan_push`. A frame that already carries a tag in the frame gets
/// the new one outside it (QinQ). Detached on drop.
#[derive(Debug)]
pub struct MetadataTagger {
    _program: OwnedFd,
    _link: OwnedFd,
}

/// `BPF_TCX_EGRESS` (linux/bpf.h).
const BPF_TCX_EGRESS: u32 = 47;
/// `bpf_skb_vlan_push` in `enum bpf_func_id`.
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;

/// One `struct bpf_insn`: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, imm: i32) -> [u8; 8] {
    (u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(imm as u32) << 32).to_le_bytes()
}

impl MetadataTagger {
    /// Tags what leaves `link` (an interface of `ns`) with VLAN `vid`.
    ///
    /// # Errors
    /// When the program cannot be loaded or attached.
    pub fn attach(ns: &NetNs, link: &Link, vid: u16) -> anyhow::Result<Self> {
        // BPF_ALU64 | BPF_MOV | BPF_K, BPF_JMP | BPF_CALL, BPF_JMP | BPF_EXIT.
        let (mov, call, exit) = (0xb7, 0x85, 0x95);
        let program = [
            // r2 = htons(ETH_P_8021Q); r1 is the socket buffer already.
            insn(mov, 2, 0, i32::from(0x8100u16.to_be())),
            // r3 = the tag control information: the VLAN id, priority 0.
            insn(mov, 3, 0, i32::from(vid)),
            insn(call, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
            // r0 = TC_ACT_OK, whatever the push did.
            insn(mov, 0, 0, 0),
            insn(exit, 0, 0, 0),
        ];
        let load = capstats_ebpf::sys::bpf::ProgLoad {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
            attach_type: None,
            flags: 0,
            name: "",
            insns: &program,
            license: c"GPL",
        };
        let program = capstats_ebpf::sys::bpf::prog_load(&load, None)
            .context("BPF_PROG_LOAD of the VLAN tagger")?;
        let link_fd = link_create(ns, link, program.as_raw_fd(), BPF_TCX_EGRESS, 0)?;
        Ok(Self {
            _program: program,
            _link: link_fd,
        })
    }
}

/// `BPF_LINK_CREATE`: a link running program `prog_fd` at `attach_type` of `link` (an
/// interface of `ns`), with `flags`.
fn link_create(
    ns: &NetNs,
    link: &Link,
    prog_fd: i32,
    attach_type: u32,
    flags: u32,
) -> anyhow::Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 6],
    }
    let attr = LinkCreate {
        prog_fd: prog_fd as u32,
        target_ifindex: link.ifindex,
        attach_type,
        flags,
        rest: [0; 6],
    };
    // The index means an interface of the calling thread's namespace.
    let fd = ns
        .run(|| Ok(bpf(BPF_LINK_CREATE, &attr)?))
        .with_context(|| {
            format!(
                "BPF_LINK_CREATE, attach type {attach_type} on {}",
                link.name
            )
        })?;
    // SAFETY: a new link fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A veth pair like the rig's (end `a` in `ns_a`, end `b` in `ns_b`, both up, the
/// largest MTU, GRO off on `b`), but with two transmit queues on `a` and one receive
/// queue on `b`: veth runs an XDP program natively only on an end with at least as many
/// receive queues as its peer has transmit queues, so XDP on `b` runs generically.
///
/// # Errors
/// When `ip` or `ethtool` fails.
pub fn veth_without_native_xdp(
    ns_a: &NetNs,
    (name_a, mac_a): (&str, MacAddr),
    ns_b: &NetNs,
    (name_b, mac_b): (&str, MacAddr),
) -> anyhow::Result<VethPair> {
    let add = format!(
        "link add {name_a} address {mac_a} numtxqueues 2 numrxqueues 2 type veth peer name \
         {name_b} address {mac_b} numtxqueues 1 numrxqueues 1 netns {}",
        ns_b.name()
    );
    ns_a.ip(&add.split_whitespace().collect::<Vec<_>>())?;
    let pair = VethPair {
        a: Link::find(ns_a, name_a, mac_a)?,
        b: Link::find(ns_b, name_b, mac_b)?,
    };
    let mtu = crate::daemon::rig::JUMBO_MTU.to_string();
    ns_a.ip(&["link", "set", name_a, "mtu", &mtu])?;
    ns_b.ip(&["link", "set", name_b, "mtu", &mtu])?;
    pair.a.up(ns_a)?;
    pair.b.up(ns_b)?;
    crate::cmd::run(ns_b.command("ethtool").args(["-K", name_b, "gro", "off"]))?;
    Ok(pair)
}

/// What a session must count of some frames that B's end received, by hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expected {
    /// XDP sees each frame as it was sent, tags in it (the expression is compiled as for
    /// a capture file): libpcap's verdict on the frame, its whole length.
    pub xdp: Count,
    /// The socket hook sees a received frame after the kernel moved its outer 802.1Q or
    /// 802.1ad tag into metadata: a live handle's program reads that tag through `vlan`
    /// only, and everything else in the frame without it. So: libpcap's verdict on the
    /// frame if the expression tests `vlan`, on the frame without its outer tag if not;
    /// counted with its wire length (the tag put back).
    pub socket: Count,
}

/// Whether `expression` uses `vlan`: a live handle then reads the outer tag from
/// metadata, and what follows at the offsets of the frame without it, which for one
/// outer tag gives the verdict of the capture-file program on the tagged frame.
fn tests_tags(expression: &str) -> bool {
    expression
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "vlan")
}

impl Expected {
    /// The counts of `expression` over `frames`, each as it was written on A's end.
    ///
    /// # Errors
    /// When libpcap refuses the expression for Ethernet capture files.
    pub fn of<'f>(
        expression: &str,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> anyhow::Result<Self> {
        let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, expression, 0)
            .with_context(|| format!("libpcap on {expression:?}"))?;
        let moved = [ethertype::DOT1Q, ethertype::DOT1AD];
        let mut expected = Self::default();
        for frame in frames {
            let length = frame.len() as u64;
            if filter.libpcap_matches(frame) {
                expected.xdp.0 += 1;
                expected.xdp.1 += length;
            }
            let live = if outer_tag(frame, &moved).is_some() && !tests_tags(expression) {
                filter.libpcap_matches(&without_outer_tag(frame))
            } else {
                filter.libpcap_matches(frame)
            };
            if live {
                expected.socket.0 += 1;
                expected.socket.1 += length;
            }
        }
        Ok(expected)
    }
}

/// Every record of `files`, in order, as tcpreplay writes them (the captured bytes).
///
/// # Errors
/// When a file cannot be read.
pub fn corpus_frames(files: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    for path in files {
        let mut capture = pcap::Capture::from_file(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        loop {
            match capture.next_packet() {
                Ok(packet) => frames.push(packet.data.to_vec()),
                Err(pcap::Error::NoMorePackets) => break,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_is_a_word_of_the_expression() {
        assert!(tests_tags("vlan"));
        assert!(tests_tags("(vlan 10) and udp"));
        assert!(tests_tags("not vlan"));
        assert!(!tests_tags("udp port 53"));
        assert!(!tests_tags("ether proto 0x8100"));
    }
}
