//! One counting program per interface and hook: the sessions of an interface share it.
//!
//! Every session has its own counter map (pinned by the caller). The program of an
//! interface's hook evaluates each session's filter in turn, each counting into its
//! session's map, so a session costs a few nanoseconds and any number of sessions fit
//! (tcx takes 63 programs per hook; an interface has one XDP slot). A program may refer
//! to 64 maps: beyond 64 sessions it counts through a table of their maps
//! (`capstats_ebpf::table`). Whenever a
//! session is added, changed or stopped, the program is generated again and swapped in
//! atomically, so every packet meets the old program or the new one:
//!
//! - socket: one AF_PACKET socket bound to the interface, both directions
//!   (`SO_ATTACH_BPF` replaces its filter). The socket lives in the daemon.
//! - tc: one program per direction on the interface's tcx links (`BPF_LINK_UPDATE`),
//!   pinned at `<pin-dir>/%tc/<interface>/<in|out>-link`, so the kernel keeps counting
//!   while no daemon runs and a new daemon takes the links back.
//! - xdp: one program in native (driver) mode where the driver has it, generic
//!   otherwise, pinned at `<pin-dir>/%xdp/<interface>/<mode>-link`. An XDP program that
//!   capstats did not attach is never replaced.
//!
//! An interface deleted takes its attachments with it; the next sync for a new
//! interface of that name attaches afresh.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, XdpMode};
use aya::sys::SyscallError;
use capstats_ebpf::cbpf::Program;
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::table::CounterTable;
use capstats_ebpf::translate::{
    CounterSlot, Hook, translate_all, translate_all_tc_egress, translate_with_table,
};

use crate::attach::{CountingSocket, ifindex};
use crate::log::event;
use crate::session::SessionError;

/// The directories of the interfaces' XDP and tc links in the pin directory. No
/// session name encodes to them: there `%` is always followed by two hex digits.
pub const XDP_DIR: &str = "%xdp";
pub const TC_DIR: &str = "%tc";

/// A program slot of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Socket,
    TcIngress,
    TcEgress,
    Xdp,
}

impl Slot {
    fn hook(self) -> Hook {
        match self {
            Slot::Socket => Hook::SocketFilter,
            Slot::TcIngress | Slot::TcEgress => Hook::Tc,
            Slot::Xdp => Hook::Xdp,
        }
    }

    /// The program's name, as `bpftool prog` shows it.
    fn program_name(self) -> &'static str {
        match self {
            Slot::Socket => "capstats_socket",
            Slot::TcIngress => "capstats_tc_in",
            Slot::TcEgress => "capstats_tc_out",
            Slot::Xdp => "capstats_xdp",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Slot::Socket => "socket",
            Slot::TcIngress => "tc ingress",
            Slot::TcEgress => "tc egress",
            Slot::Xdp => "XDP",
        }
    }
}

/// How an XDP program runs on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    fn pin_name(self) -> &'static str {
        match self {
            Mode::Native => "native-link",
            Mode::Generic => "generic-link",
        }
    }
}

/// What holds an interface's program in the kernel.
#[derive(Debug)]
enum Holder {
    Socket(CountingSocket),
    Link { link: FdLink, mode: Option<Mode> },
}

#[derive(Debug)]
struct Installed {
    /// The interface's index when attached: another index means a new interface.
    ifindex: u32,
    holder: Holder,
    /// Kept until the next swap (the socket or link holds them anyway).
    _program: LoadedProgram,
    _table: Option<CounterTable>,
}

/// The counting programs the daemon has on interfaces.
#[derive(Debug)]
pub struct InterfacePrograms {
    pin_dir: PathBuf,
    installed: BTreeMap<(String, Slot), Installed>,
}

fn failed(interface: &str, slot: Slot, what: impl std::fmt::Display) -> SessionError {
    SessionError::Refused(format!("{} on {interface}: {what}", slot.describe()))
}

/// The most maps a program may refer to (the kernel's `MAX_USED_MAPS`): up to this
/// many sessions, the program refers to their maps; beyond, to a table of them.
const MOST_MAPS: usize = 64;

/// One session's part of a program: its filter and its counter map.
pub type Counted<'a> = (Program, &'a CounterMap);

impl InterfacePrograms {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            installed: BTreeMap::new(),
        }
    }

    fn link_dir(&self, interface: &str, slot: Slot) -> Option<PathBuf> {
        match slot {
            Slot::Socket => None,
            Slot::TcIngress | Slot::TcEgress => Some(self.pin_dir.join(TC_DIR).join(interface)),
            Slot::Xdp => Some(self.pin_dir.join(XDP_DIR).join(interface)),
        }
    }

    /// Makes `slot` of `interface` run one program counting every filter of `counted`
    /// into its counter map, or no program if `counted` is empty. On error the kernel
    /// keeps what it had. Returns the XDP mode, for XDP.
    pub fn sync(
        &mut self,
        interface: &str,
        slot: Slot,
        counted: &[Counted<'_>],
    ) -> Result<Option<Mode>, SessionError> {
        if counted.is_empty() {
            self.detach(interface, slot);
            return Ok(None);
        }
        let index =
            ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.into()))?;
        let egress = slot == Slot::TcEgress;
        let (insns, table) = if counted.len() <= MOST_MAPS {
            // Each filter refers to its own map: one lookup per match, and no table,
            // whose making costs an RCU grace period.
            let slots: Vec<_> = counted
                .iter()
                .map(|(program, map)| {
                    let slot = CounterSlot {
                        map_fd: map.raw_fd(),
                        slot: 0,
                    };
                    (program, slot)
                })
                .collect();
            let insns = match egress {
                true => translate_all_tc_egress(&slots)?,
                false => translate_all(&slots, slot.hook())?,
            };
            (insns, None)
        } else {
            let table = CounterTable::create("capstats_table", counted[0].1, counted.len() as u32)
                .map_err(|e| failed(interface, slot, e))?;
            let maps: Vec<&CounterMap> = counted.iter().map(|(_, map)| *map).collect();
            table.fill(&maps).map_err(|e| failed(interface, slot, e))?;
            let filters: Vec<&Program> = counted.iter().map(|(p, _)| p).collect();
            let insns = translate_with_table(&filters, table.raw_fd(), slot.hook(), egress)?;
            (insns, Some(table))
        };
        let program = LoadedProgram::load(slot.hook(), slot.program_name(), &insns)?;

        let key = (interface.to_owned(), slot);
        let holder = match self.installed.remove(&key) {
            Some(old) if old.ifindex == index => {
                // On failure the kernel keeps the old program; a link stays pinned and
                // is taken back from its pin next time.
                self.swap(interface, slot, &program, old.holder)?
            }
            Some(old) => {
                event!(
                    "{interface} is a new interface (index {index}, was {}): attaching its {} \
                     program afresh",
                    old.ifindex,
                    slot.describe()
                );
                drop(old);
                self.unpin(interface, slot);
                self.attach(interface, index, slot, &program)?
            }
            None => match self.taken_back(interface, slot) {
                Some(holder) => match self.swap(interface, slot, &program, holder) {
                    Ok(holder) => holder,
                    Err(e) => {
                        // A link of an interface that is gone (the name now belongs
                        // to another), or one that cannot be updated: start afresh.
                        event!(
                            "not using the pinned {} link of {interface}: {e}",
                            slot.describe()
                        );
                        self.unpin(interface, slot);
                        self.attach(interface, index, slot, &program)?
                    }
                },
                None => self.attach(interface, index, slot, &program)?,
            },
        };
        let mode = match &holder {
            Holder::Link { mode, .. } => *mode,
            Holder::Socket(_) => None,
        };
        self.installed.insert(
            key,
            Installed {
                ifindex: index,
                holder,
                _program: program,
                _table: table,
            },
        );
        Ok(mode)
    }

    /// Puts `program` where `holder`'s program is, atomically.
    fn swap(
        &self,
        interface: &str,
        slot: Slot,
        program: &LoadedProgram,
        holder: Holder,
    ) -> Result<Holder, SessionError> {
        match holder {
            Holder::Socket(socket) => {
                // SO_ATTACH_BPF on a socket with a filter swaps them atomically.
                program.socket_filter()?.attach(&socket)?;
                Ok(Holder::Socket(socket))
            }
            Holder::Link { link, mode } => {
                let link = match slot {
                    Slot::Xdp => {
                        let link = XdpLink::try_from(link).map_err(|e| {
                            failed(interface, slot, format!("the link is not an XDP link: {e}"))
                        })?;
                        let mut xdp = program.xdp()?;
                        let id = xdp.attach_to_link(link)?;
                        FdLink::try_from(xdp.take_link(id)?)
                            .map_err(|e| failed(interface, slot, e))?
                    }
                    _ => {
                        let link = SchedClassifierLink::try_from(link).map_err(|e| {
                            failed(interface, slot, format!("the link is not a tcx link: {e}"))
                        })?;
                        let mut classifier = program.sched_classifier()?;
                        let id = classifier.attach_to_link(link)?;
                        FdLink::try_from(classifier.take_link(id)?)
                            .map_err(|e| failed(interface, slot, e))?
                    }
                };
                Ok(Holder::Link { link, mode })
            }
        }
    }

    /// A link a previous daemon pinned for `slot` of `interface`.
    fn taken_back(&self, interface: &str, slot: Slot) -> Option<Holder> {
        let dir = self.link_dir(interface, slot)?;
        let candidates: &[(&str, Option<Mode>)] = match slot {
            Slot::Socket => return None,
            Slot::TcIngress => &[("in-link", None)],
            Slot::TcEgress => &[("out-link", None)],
            Slot::Xdp => &[
                (Mode::Native.pin_name(), Some(Mode::Native)),
                (Mode::Generic.pin_name(), Some(Mode::Generic)),
            ],
        };
        for &(name, mode) in candidates {
            let path = dir.join(name);
            if path.exists() {
                match PinnedLink::from_pin(&path) {
                    Ok(pinned) => {
                        return Some(Holder::Link {
                            link: FdLink::from(pinned),
                            mode,
                        });
                    }
                    Err(e) => event!("not using {}: {e}", path.display()),
                }
            }
        }
        None
    }

    /// Attaches `program` to `slot` of `interface` (index `index`), pinning a link.
    fn attach(
        &self,
        interface: &str,
        index: u32,
        slot: Slot,
        program: &LoadedProgram,
    ) -> Result<Holder, SessionError> {
        match slot {
            Slot::Socket => {
                let socket_error = |what: &'static str| {
                    move |source| SessionError::Socket {
                        what,
                        interface: interface.to_owned(),
                        source,
                    }
                };
                let socket = CountingSocket::new().map_err(socket_error("open"))?;
                // The filter first, so that no packet passes unfiltered.
                program.socket_filter()?.attach(&socket)?;
                socket.bind(index).map_err(socket_error("bind"))?;
                Ok(Holder::Socket(socket))
            }
            Slot::TcIngress | Slot::TcEgress => {
                let (attach_type, pin) = match slot {
                    Slot::TcIngress => (TcAttachType::Ingress, "in-link"),
                    _ => (TcAttachType::Egress, "out-link"),
                };
                let mut classifier = program.sched_classifier()?;
                let id = classifier
                    .attach(interface, attach_type)
                    .map_err(|e| attach_error(e, interface, slot))?;
                let link = FdLink::try_from(classifier.take_link(id)?)
                    .map_err(|e| failed(interface, slot, e))?;
                let link = self.pin(interface, slot, link, pin)?;
                Ok(Holder::Link { link, mode: None })
            }
            Slot::Xdp => self.attach_xdp(interface, program),
        }
    }

    /// Attaches natively where the driver can, generically otherwise. An XDP program
    /// already on the interface is left alone.
    fn attach_xdp(&self, interface: &str, program: &LoadedProgram) -> Result<Holder, SessionError> {
        let slot = Slot::Xdp;
        let mut xdp = program.xdp()?;
        let mut tried = Vec::new();
        for (mode, flags) in [
            (Mode::Native, XdpMode::Driver),
            (Mode::Generic, XdpMode::Skb),
        ] {
            match xdp.attach(interface, flags) {
                Ok(id) => {
                    let link = FdLink::try_from(xdp.take_link(id)?)
                        .map_err(|e| failed(interface, slot, e))?;
                    let link = self.pin(interface, slot, link, mode.pin_name())?;
                    return Ok(Holder::Link {
                        link,
                        mode: Some(mode),
                    });
                }
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if matches!(io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) =>
                {
                    return Err(failed(
                        interface,
                        slot,
                        "the interface already has an XDP program that capstats did not attach; \
                         it is left in place (remove it, or count with hook tc)",
                    ));
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    tried.push(format!("{}: {e}{cause}", mode.as_str()));
                }
            }
        }
        Err(failed(
            interface,
            slot,
            format!("cannot attach ({})", tried.join("; ")),
        ))
    }

    /// Pins `link` as `name` in the slot's directory and keeps an fd to it.
    fn pin(
        &self,
        interface: &str,
        slot: Slot,
        link: FdLink,
        name: &str,
    ) -> Result<FdLink, SessionError> {
        let dir = self
            .link_dir(interface, slot)
            .expect("only links are pinned");
        fs::create_dir_all(&dir)
            .map_err(|e| failed(interface, slot, format!("{}: {e}", dir.display())))?;
        let pinned = link
            .pin(dir.join(name))
            .map_err(|e| failed(interface, slot, format!("cannot pin the link: {e}")))?;
        Ok(FdLink::from(pinned))
    }

    /// Removes the slot's pinned link(s); the kernel detaches a link once nothing
    /// holds it.
    fn unpin(&self, interface: &str, slot: Slot) {
        let Some(dir) = self.link_dir(interface, slot) else {
            return;
        };
        let names: &[&str] = match slot {
            Slot::Socket => &[],
            Slot::TcIngress => &["in-link"],
            Slot::TcEgress => &["out-link"],
            Slot::Xdp => &[Mode::Native.pin_name(), Mode::Generic.pin_name()],
        };
        for name in names {
            let _ = fs::remove_file(dir.join(name));
        }
        // Empty directories go; one still holding the other direction's link stays.
        let _ = fs::remove_dir(&dir);
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }

    /// Takes the program off `slot` of `interface` and removes its pin.
    pub fn detach(&mut self, interface: &str, slot: Slot) {
        self.installed.remove(&(interface.to_owned(), slot));
        self.unpin(interface, slot);
    }

    /// Every slot of every interface: detached, pins removed (`--detach-on-exit`).
    pub fn detach_all(&mut self) {
        let keys: Vec<_> = self.installed.keys().cloned().collect();
        for (interface, slot) in keys {
            self.detach(&interface, slot);
        }
        self.remove_unclaimed(&std::collections::HashSet::new());
    }

    /// Pinned links of slots `keep` does not name: removed, and said so.
    pub fn remove_unclaimed(&mut self, keep: &std::collections::HashSet<(String, Slot)>) {
        for (top, slots) in [
            (XDP_DIR, &[Slot::Xdp][..]),
            (TC_DIR, &[Slot::TcIngress, Slot::TcEgress][..]),
        ] {
            let Ok(entries) = fs::read_dir(self.pin_dir.join(top)) else {
                continue;
            };
            for entry in entries.flatten() {
                let interface = entry.file_name().to_string_lossy().into_owned();
                for &slot in slots {
                    if !keep.contains(&(interface.clone(), slot)) {
                        if self.taken_back(&interface, slot).is_some() {
                            event!(
                                "removing the pinned {} program of {interface}: no saved session counts there",
                                slot.describe()
                            );
                        }
                        self.unpin(&interface, slot);
                    }
                }
            }
        }
    }

    /// The interface's index when `slot`'s program was attached, if it is.
    pub fn attached_ifindex(&self, interface: &str, slot: Slot) -> Option<u32> {
        self.installed
            .get(&(interface.to_owned(), slot))
            .map(|i| i.ifindex)
    }
}

/// The kernel's reason, in words.
fn attach_error(error: ProgramError, interface: &str, slot: Slot) -> SessionError {
    if let ProgramError::SyscallError(SyscallError { io_error, .. }) = &error
        && io_error.raw_os_error() == Some(libc::ERANGE)
    {
        return failed(
            interface,
            slot,
            "the tcx hook already runs as many programs as the kernel allows (63); capstats \
             needs one: detach another program there",
        );
    }
    let cause = std::error::Error::source(&error)
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    failed(interface, slot, format!("cannot attach: {error}{cause}"))
}
