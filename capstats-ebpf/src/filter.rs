//! Filter expressions compiled to classic BPF by libpcap's own compiler.
//!
//! Two semantics, as tcpdump has them:
//! - [`Filter::for_capture`]: the capture file's handle, what `tcpdump -r FILE EXPR` runs
//!   (in-packet VLAN checks, no socket metadata).
//! - [`Filter::for_interface`]: an activated live handle on the interface, what
//!   `tcpdump -i IF EXPR` runs, including the Linux ancillary loads (`vlanp`, `vlan_tci`,
//!   packet type, interface index) libpcap emits there.
//!
//! The `pcap` crate opens the handles; `pcap_compile` is called through
//! [`crate::sys::pcap`] because the crate cannot pass a netmask (`ip broadcast` needs
//! one).

use std::path::Path;

use pcap::{Active, Capture, Offline, State};

use crate::cbpf::{ClassicError, Program, RawInsn};
use crate::sys::pcap::Code;

/// `PCAP_NETMASK_UNKNOWN`.
pub const NETMASK_UNKNOWN: u32 = 0xffff_ffff;
/// Snapshot length for live handles: tcpdump's default, so `ret #262144` is the same.
pub const SNAPLEN: i32 = 262_144;

/// Why an expression could not become a classic program.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// libpcap's compiler refused the expression; `message` is libpcap's own.
    #[error("invalid filter expression {expression:?}: {message}")]
    Compile { expression: String, message: String },
    #[error("cannot open {what}: {cause}")]
    Open { what: String, cause: pcap::Error },
    #[error("filter expression contains a NUL byte")]
    Nul,
    /// libpcap 1.10 compiles `inbound`, `outbound` and `ifindex` for capture files into
    /// loads of socket metadata that no capture file records (its interpreter then
    /// matches nothing); newer libpcap refuses them, and so does capstats.
    #[error(
        "filter expression {expression:?} tests the packet's direction or interface, which a \
         capture file does not record and the xdp hook does not see (use hook socket or tc)"
    )]
    NeedsInterface { expression: String },
    /// libpcap reads this interface's packets through a Linux cooked header (its own
    /// link-layer header is one libpcap does not know): no hook sees that header.
    #[error(
        "{interface} has link type {linktype}: libpcap reads its packets through a Linux \
         cooked header that the {hook} hook does not see, so capstats cannot count there as \
         tcpdump would"
    )]
    LinkType {
        interface: String,
        linktype: String,
        hook: &'static str,
    },
    /// libpcap produced a program the kernel's classic rules refuse.
    #[error("libpcap compiled {expression:?} to a program capstats cannot run: {cause}")]
    Classic {
        expression: String,
        cause: ClassicError,
    },
}

/// A compiled filter expression: libpcap's classic program, validated.
pub struct Filter {
    expression: String,
    code: Code,
    program: Program,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("expression", &self.expression)
            .field("insns", &self.program.len())
            .finish()
    }
}

impl Filter {
    /// Compiles `expression` as `tcpdump -r` would for the capture `capture` was opened
    /// from (its link type, savefile semantics), optimised.
    pub fn for_capture(
        capture: &Capture<Offline>,
        expression: &str,
        netmask: u32,
    ) -> Result<Self, FilterError> {
        compile(capture, expression, netmask, Semantics::Savefile)
    }

    /// Compiles `expression` for a link type without any file or interface
    /// (`pcap_open_dead`: savefile semantics).
    pub fn for_linktype(
        linktype: pcap::Linktype,
        expression: &str,
        netmask: u32,
    ) -> Result<Self, FilterError> {
        let dead = open_dead(linktype)?;
        compile(&dead, expression, netmask, Semantics::Savefile)
    }

    /// libpcap's program for a link type exactly as libpcap 1.10 makes it, even where
    /// it reads socket metadata a capture file lacks (which [`Filter::for_linktype`]
    /// refuses). For comparing with libpcap's own interpreter.
    pub fn libpcap_for_linktype(
        linktype: pcap::Linktype,
        expression: &str,
        netmask: u32,
    ) -> Result<Self, FilterError> {
        let dead = open_dead(linktype)?;
        compile(&dead, expression, netmask, Semantics::Live)
    }

    /// Compiles `expression` for the XDP hook of `interface`, for the link type a live
    /// handle on it has (`tcpdump -i interface` shows it): XDP's data starts where a
    /// packet socket's does (the driver's frame natively; generically the skb from its
    /// link-layer header, `skb_mac_header`, as `packet_rcv` pushes it back), so an
    /// Ethernet link's program reads Ethernet offsets and a raw-IP link's (tun,
    /// WireGuard, IP-in-IP tunnels: `DLT_RAW`) reads the IP header at 0. XDP sees frames
    /// before the kernel takes VLAN tags out of them, so the program tests tags in the
    /// frame (savefile semantics), with the interface's netmask for `ip broadcast`.
    /// Expressions that need socket metadata are refused, and so are links where
    /// libpcap itself sees a Linux cooked header that no frame carries.
    pub fn for_xdp(interface: &str, expression: &str) -> Result<Self, FilterError> {
        LiveHandle::open(interface)?.for_xdp(expression)
    }

    /// Compiles `expression` as `tcpdump -i interface` would: on an activated live
    /// handle, with the interface's netmask. Needs `CAP_NET_RAW`.
    /// Refused on links where libpcap reads packets through a Linux cooked header
    /// (`tcpdump -i` says `LINUX_SLL`): the socket and tc hooks see the link's own
    /// header there. `any` is [`Filter::for_any`].
    pub fn for_interface(interface: &str, expression: &str) -> Result<Self, FilterError> {
        LiveHandle::open(interface)?.for_interface(expression)
    }

    /// Compiles `expression` as `tcpdump -i any` does: on a live handle on `any` with
    /// tcpdump's link type there, `LINUX_SLL2` (the `pcap` crate's handle would be
    /// `LINUX_SLL`), so that the program reads the header tcpdump records. Counting
    /// needs it as the kernel runs it ([`Program::for_cooked_socket`]).
    pub fn for_any(expression: &str) -> Result<Self, FilterError> {
        LiveHandle::open(ANY)?.for_any(expression)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The validated classic program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The instructions exactly as libpcap produced them.
    pub fn raw(&self) -> &[RawInsn] {
        self.code.insns()
    }

    /// libpcap's own verdict (`pcap_offline_filter`) on `packet`, its captured length
    /// taken as its wire length too.
    pub fn libpcap_matches(&self, packet: &[u8]) -> bool {
        // libpcap's own program, which its check accepts (the kernel's, stricter,
        // accepted it too: `Program::new`).
        libpcap_run(self.raw(), packet).is_some_and(|verdict| verdict != 0)
    }
}

/// libpcap's interpreter (`pcap_offline_filter`) running any classic program on
/// `packet`, its captured length taken as its wire length: the reference the
/// translation is held to. Returns the program's return value (0: no match), or
/// `None` when libpcap's own check (`bpf_validate`) refuses the program (its
/// interpreter checks no jump or scratch index itself).
pub fn libpcap_run(program: &[RawInsn], packet: &[u8]) -> Option<u32> {
    crate::sys::pcap::offline_filter(program, packet)
}

/// An activated live handle on an interface, kept to compile filters for it (the
/// `Filter::for_*` of an interface open one and close it).
///
/// Opening one sets up a packet socket and its ring, and closing it takes that socket
/// down: the kernel waits for RCU grace periods in both, about 8 ms and 30 ms here,
/// more than most compiles take. A caller that compiles for an interface again and
/// again keeps its handle, deaf ([`LiveHandle::stop_receiving`]), while
/// [`LiveHandle::bound_ifindex`] says it is still on the interface of its name (the
/// daemon's compile helpers do).
pub struct LiveHandle {
    interface: String,
    capture: Capture<Active>,
}

impl LiveHandle {
    /// Opens `interface`. Needs `CAP_NET_RAW`.
    pub fn open(interface: &str) -> Result<Self, FilterError> {
        Ok(Self {
            interface: interface.to_owned(),
            capture: open_live(interface)?,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// [`Filter::for_interface`] on this handle.
    pub fn for_interface(&self, expression: &str) -> Result<Filter, FilterError> {
        refuse_cooked(&self.interface, self.link_type(), "socket or tc")?;
        compile(
            &self.capture,
            expression,
            interface_netmask(&self.interface),
            Semantics::Live,
        )
    }

    /// [`Filter::for_any`] on this handle, which must be `any`'s: its link type becomes
    /// tcpdump's there, `LINUX_SLL2`.
    pub fn for_any(&mut self, expression: &str) -> Result<Filter, FilterError> {
        debug_assert_eq!(self.interface, ANY);
        self.capture
            .set_datalink(LINKTYPE_LINUX_SLL2)
            .map_err(|cause| FilterError::Open {
                what: "interface \"any\" with link type LINUX_SLL2".into(),
                cause,
            })?;
        compile(
            &self.capture,
            expression,
            interface_netmask(ANY),
            Semantics::Live,
        )
    }

    /// [`Filter::for_xdp`] with this handle's link type.
    pub fn for_xdp(&self, expression: &str) -> Result<Filter, FilterError> {
        let linktype = self.link_type();
        refuse_cooked(&self.interface, linktype, "xdp")?;
        Filter::for_linktype(linktype, expression, interface_netmask(&self.interface))
    }

    /// The link type, as `tcpdump -i interface` reports it.
    pub fn link_type(&self) -> pcap::Linktype {
        self.capture.get_datalink()
    }

    /// The index of the interface this handle's packet socket is bound to: the
    /// interface's while it is there (0 on `any`), -1 once it has gone, even when an
    /// interface of the same name and index has come since. A handle kept to compile
    /// filters is for the interface it was opened on only while this is the index its
    /// name has.
    pub fn bound_ifindex(&self) -> std::io::Result<i32> {
        crate::sys::packet::bound_ifindex(&self.capture)
    }

    /// Makes this handle's packet socket receive nothing, for as long as it stays open
    /// ([`crate::sys::packet::stop_receiving`]). An activated handle's socket has every
    /// packet of its interface copied into its ring; a handle kept open only to
    /// compile filters (whose programs depend on the activation alone: link type,
    /// VLAN and packet-type loads) must not cost the interface's packets that. Takes
    /// an RCU grace period, as opening does: make it deaf off any caller's path.
    pub fn stop_receiving(&self) -> std::io::Result<()> {
        let ifindex = self.bound_ifindex()?;
        crate::sys::packet::stop_receiving(&self.capture, ifindex)
    }
}

/// A handle for a link type with no file or interface behind it (`pcap_open_dead`).
fn open_dead(linktype: pcap::Linktype) -> Result<Capture<pcap::Dead>, FilterError> {
    Capture::dead(linktype).map_err(|cause| FilterError::Open {
        what: format!("a handle for link type {}", linktype.0),
        cause,
    })
}

fn open_live(interface: &str) -> Result<Capture<Active>, FilterError> {
    let open = || {
        Capture::from_device(interface)?
            .snaplen(SNAPLEN)
            // The handle only compiles; keep its ring small.
            .buffer_size(1 << 16)
            .timeout(1)
            .open()
    };
    open().map_err(|cause| FilterError::Open {
        what: format!("interface {interface:?}"),
        cause,
    })
}

/// libpcap's pseudo-interface for every interface (`tcpdump -i any`).
pub const ANY: &str = "any";

/// `DLT_LINUX_SLL` and `DLT_LINUX_SLL2`: the headers libpcap makes up for `any` and for
/// links whose own header it does not read (cooked mode).
pub const LINKTYPE_LINUX_SLL: pcap::Linktype = pcap::Linktype(113);
pub const LINKTYPE_LINUX_SLL2: pcap::Linktype = pcap::Linktype(276);

/// The link type of a live handle on `interface`, as `tcpdump -i interface` reports it.
pub fn link_type(interface: &str) -> Result<pcap::Linktype, FilterError> {
    Ok(open_live(interface)?.get_datalink())
}

/// A link type's name for people (`EN10MB`, `RAW`, ...), or its number.
pub fn link_type_name(linktype: pcap::Linktype) -> String {
    linktype
        .get_name()
        .unwrap_or_else(|_| format!("DLT {}", linktype.0))
}

fn refuse_cooked(
    interface: &str,
    linktype: pcap::Linktype,
    hook: &'static str,
) -> Result<(), FilterError> {
    if linktype == LINKTYPE_LINUX_SLL || linktype == LINKTYPE_LINUX_SLL2 {
        return Err(FilterError::LinkType {
            interface: interface.to_owned(),
            linktype: link_type_name(linktype),
            hook,
        });
    }
    Ok(())
}

/// The netmask tcpdump would use: the interface's IPv4 one, or 0 when it has none.
fn interface_netmask(interface: &str) -> u32 {
    crate::sys::pcap::lookup_netmask(interface).unwrap_or(0)
}

/// Whether the program will see packets of a capture file or of an interface (or is
/// taken as libpcap made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantics {
    Savefile,
    Live,
}

fn compile<T: State + ?Sized>(
    capture: &Capture<T>,
    expression: &str,
    netmask: u32,
    semantics: Semantics,
) -> Result<Filter, FilterError> {
    let text = std::ffi::CString::new(expression).map_err(|_| FilterError::Nul)?;
    let code = crate::sys::pcap::compile(capture, &text, netmask).map_err(|message| {
        FilterError::Compile {
            expression: expression.to_owned(),
            message,
        }
    })?;
    let program = Program::new(code.insns()).map_err(|cause| FilterError::Classic {
        expression: expression.to_owned(),
        cause,
    })?;
    if semantics == Semantics::Savefile && program.uses_ancillary() {
        return Err(FilterError::NeedsInterface {
            expression: expression.to_owned(),
        });
    }
    Ok(Filter {
        expression: expression.to_owned(),
        code,
        program,
    })
}

/// Opens a capture file (pcap or pcapng) with libpcap.
pub fn open_capture(path: &Path) -> Result<Capture<Offline>, FilterError> {
    Capture::from_file(path).map_err(|cause| FilterError::Open {
        what: format!("capture file {}", path.display()),
        cause,
    })
}
