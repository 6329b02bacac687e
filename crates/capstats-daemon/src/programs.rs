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
//! - socket: AF_PACKET sockets bound to the interface, both directions, each counting
//!   a group of up to 32 sessions (a socket holds a filter of limited size), a session
//!   staying in its group for its life (`SO_ATTACH_BPF` replaces a filter). The
//!   sockets live in the daemon.
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
use capstats_ebpf::table::{CounterTable, CountingError, translate_counting};
use capstats_ebpf::translate::Hook;

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

    /// The names its links are pinned under in the interface's directory, and the
    /// XDP mode each stands for.
    fn link_pins(self) -> &'static [(&'static str, Option<Mode>)] {
        match self {
            Slot::Socket => &[],
            Slot::TcIngress => &[("in-link", None)],
            Slot::TcEgress => &[("out-link", None)],
            Slot::Xdp => {
                const XDP: [(&str, Option<Mode>); 2] = [
                    (Mode::Native.pin_name(), Some(Mode::Native)),
                    (Mode::Generic.pin_name(), Some(Mode::Generic)),
                ];
                &XDP
            }
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

    const fn pin_name(self) -> &'static str {
        match self {
            Mode::Native => "native-link",
            Mode::Generic => "generic-link",
        }
    }
}

/// What holds an interface's tc or XDP program in the kernel: a link, pinned.
#[derive(Debug)]
struct Linked {
    link: FdLink,
    /// XDP: how the program runs.
    mode: Option<Mode>,
}

/// Socket sessions per socket. A socket filter is charged to the socket's option memory
/// (`net.core.optmem_max`, 128 KiB by default), twice while a new filter replaces the
/// old, so one socket cannot hold the program of hundreds of sessions. A session stays
/// in its socket's group for its life, so that every packet meets each session's filter
/// exactly once, also while sessions come and go.
const SESSIONS_PER_SOCKET: usize = 32;

/// A socket counting a group of socket sessions.
#[derive(Debug)]
struct SocketGroup {
    /// The sessions, in the order of the socket's program.
    members: Vec<String>,
    /// Their filters as the program has them: a group whose sessions and filters are
    /// unchanged keeps its program.
    filters: Vec<Program>,
    /// The interface's index when the socket was bound.
    ifindex: u32,
    socket: CountingSocket,
    /// Kept until the next swap (the socket holds it anyway).
    _program: LoadedProgram,
}

#[derive(Debug)]
struct Installed {
    /// The interface's index when attached: another index means a new interface.
    ifindex: u32,
    linked: Linked,
    /// Kept until the next swap (the link holds them anyway).
    _program: LoadedProgram,
    _table: Option<CounterTable>,
}

/// The counting programs the daemon has on interfaces.
#[derive(Debug)]
pub struct InterfacePrograms {
    pin_dir: PathBuf,
    /// tc and XDP.
    installed: BTreeMap<(String, Slot), Installed>,
    /// Socket sessions, by interface.
    sockets: BTreeMap<String, Vec<SocketGroup>>,
}

fn failed(interface: &str, slot: Slot, what: impl std::fmt::Display) -> SessionError {
    SessionError::Refused(format!("{} on {interface}: {what}", slot.describe()))
}

/// One session's part of a program: its name, its filter and its counter map.
pub type Counted<'a> = (&'a str, &'a Program, &'a CounterMap);

impl InterfacePrograms {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            installed: BTreeMap::new(),
            sockets: BTreeMap::new(),
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
        if slot == Slot::Socket {
            return self.sync_sockets(interface, counted).map(|()| None);
        }
        let index =
            ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.into()))?;
        let (program, table) = generate(interface, slot, counted)?;
        let key = (interface.to_owned(), slot);
        let linked = match self.installed.remove(&key) {
            Some(old) if old.ifindex == index => {
                // On failure the kernel keeps the old program; a link stays pinned and
                // is taken back from its pin next time.
                self.swap(interface, slot, &program, old.linked)?
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
                self.attach(interface, slot, &program)?
            }
            None => match self.taken_back(interface, slot) {
                Some(linked) => match self.swap(interface, slot, &program, linked) {
                    Ok(linked) => linked,
                    Err(e) => {
                        // A link of an interface that is gone (the name now belongs
                        // to another), or one that cannot be updated: start afresh.
                        event!(
                            "not using the pinned {} link of {interface}: {e}",
                            slot.describe()
                        );
                        self.unpin(interface, slot);
                        self.attach(interface, slot, &program)?
                    }
                },
                None => self.attach(interface, slot, &program)?,
            },
        };
        let mode = linked.mode;
        self.installed.insert(
            key,
            Installed {
                ifindex: index,
                linked,
                _program: program,
                _table: table,
            },
        );
        Ok(mode)
    }

    /// The socket sessions of `interface`, in groups of at most
    /// [`SESSIONS_PER_SOCKET`], a socket each. Every program is loaded before any is
    /// swapped in; a group left empty closes its socket.
    fn sync_sockets(
        &mut self,
        interface: &str,
        counted: &[Counted<'_>],
    ) -> Result<(), SessionError> {
        let slot = Slot::Socket;
        let index =
            ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.into()))?;
        let mut groups = self.sockets.remove(interface).unwrap_or_default();
        if groups.iter().any(|g| g.ifindex != index) {
            event!(
                "{interface} is a new interface (index {index}): opening its counting sockets afresh"
            );
            groups.clear();
        }
        // Who goes where: members stay; new sessions fill the first group with room.
        let wanted: std::collections::HashMap<&str, &Counted<'_>> =
            counted.iter().map(|c| (c.0, c)).collect();
        let mut plan: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                g.members
                    .iter()
                    .filter(|m| wanted.contains_key(m.as_str()))
                    .cloned()
                    .collect()
            })
            .collect();
        let placed: std::collections::HashSet<String> = plan.iter().flatten().cloned().collect();
        for (name, _, _) in counted {
            if placed.contains(*name) {
                continue;
            }
            match plan.iter_mut().find(|g| g.len() < SESSIONS_PER_SOCKET) {
                Some(group) => group.push((*name).to_owned()),
                None => plan.push(vec![(*name).to_owned()]),
            }
        }
        let filters_of = |members: &[String]| -> Vec<Program> {
            members
                .iter()
                .map(|m| wanted[m.as_str()].1.clone())
                .collect()
        };
        let unchanged = |i: usize, members: &[String]| {
            groups
                .get(i)
                .is_some_and(|g| g.members == members && g.filters == filters_of(members))
        };
        let programs = plan
            .iter()
            .enumerate()
            .map(|(i, members)| {
                if members.is_empty() || unchanged(i, members) {
                    return Ok(None);
                }
                let part: Vec<Counted<'_>> = members
                    .iter()
                    .map(|m| {
                        let (name, program, map) = wanted[m.as_str()];
                        (*name, *program, *map)
                    })
                    .collect();
                generate(interface, slot, &part).map(|(program, _)| Some(program))
            })
            .collect::<Result<Vec<_>, SessionError>>();
        let programs = match programs {
            Ok(programs) => programs,
            Err(e) => {
                self.sockets.insert(interface.to_owned(), groups);
                return Err(e);
            }
        };
        let mut old = groups.into_iter().map(Some).collect::<Vec<_>>();
        let mut synced = Vec::new();
        let mut first_error = None;
        for (i, (members, program)) in plan.iter().zip(programs).enumerate() {
            let existing = old.get_mut(i).and_then(Option::take);
            let Some(program) = program else {
                match existing {
                    // Unchanged: it keeps its socket and program.
                    Some(group) if !members.is_empty() => synced.push(group),
                    // Empty: its socket, if any, closes here.
                    _ => {}
                }
                continue;
            };
            let members = members.clone();
            let filters = filters_of(&members);
            let socket = match existing {
                Some(group) => match attach_filter(&program, &group.socket, interface, &members) {
                    Ok(()) => group.socket,
                    Err(e) => {
                        // The socket keeps its old program and members.
                        first_error.get_or_insert(e);
                        synced.push(group);
                        continue;
                    }
                },
                None => match open_socket(&program, index, interface, &members) {
                    Ok(socket) => socket,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                },
            };
            synced.push(SocketGroup {
                members,
                filters,
                ifindex: index,
                socket,
                _program: program,
            });
        }
        self.sockets.insert(interface.to_owned(), synced);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Puts `program` on `linked`'s link, atomically (`BPF_LINK_UPDATE`).
    fn swap(
        &self,
        interface: &str,
        slot: Slot,
        program: &LoadedProgram,
        Linked { link, mode }: Linked,
    ) -> Result<Linked, SessionError> {
        let link = match slot {
            Slot::Xdp => {
                let link = XdpLink::try_from(link).map_err(|e| {
                    failed(interface, slot, format!("the link is not an XDP link: {e}"))
                })?;
                let mut xdp = program.xdp()?;
                let id = xdp.attach_to_link(link)?;
                FdLink::try_from(xdp.take_link(id)?).map_err(|e| failed(interface, slot, e))?
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
        Ok(Linked { link, mode })
    }

    /// A link a previous daemon pinned for `slot` of `interface`.
    fn taken_back(&self, interface: &str, slot: Slot) -> Option<Linked> {
        let dir = self.link_dir(interface, slot)?;
        for &(name, mode) in slot.link_pins() {
            let path = dir.join(name);
            if path.exists() {
                match PinnedLink::from_pin(&path) {
                    Ok(pinned) => {
                        return Some(Linked {
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
        slot: Slot,
        program: &LoadedProgram,
    ) -> Result<Linked, SessionError> {
        match slot {
            Slot::Socket => unreachable!("sockets are synced by sync_sockets"),
            Slot::TcIngress | Slot::TcEgress => {
                let attach_type = match slot {
                    Slot::TcIngress => TcAttachType::Ingress,
                    _ => TcAttachType::Egress,
                };
                let (pin, _) = slot.link_pins()[0];
                let mut classifier = program.sched_classifier()?;
                let id = classifier
                    .attach(interface, attach_type)
                    .map_err(|e| attach_error(e, interface, slot))?;
                let link = FdLink::try_from(classifier.take_link(id)?)
                    .map_err(|e| failed(interface, slot, e))?;
                let link = self.pin(interface, slot, link, pin)?;
                Ok(Linked { link, mode: None })
            }
            Slot::Xdp => self.attach_xdp(interface, program),
        }
    }

    /// Attaches natively where the driver can, generically otherwise. An XDP program
    /// already on the interface is left alone.
    fn attach_xdp(&self, interface: &str, program: &LoadedProgram) -> Result<Linked, SessionError> {
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
                    return Ok(Linked {
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
        for (name, _) in slot.link_pins() {
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
        if slot == Slot::Socket {
            self.sockets.remove(interface);
        }
        self.installed.remove(&(interface.to_owned(), slot));
        self.unpin(interface, slot);
    }

    /// Every slot of every interface: detached, pins removed (`--detach-on-exit`).
    pub fn detach_all(&mut self) {
        let keys: Vec<_> = self.installed.keys().cloned().collect();
        for (interface, slot) in keys {
            self.detach(&interface, slot);
        }
        self.sockets.clear();
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
                        let dir = entry.path();
                        if slot.link_pins().iter().any(|(n, _)| dir.join(n).exists()) {
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
        if slot == Slot::Socket {
            return self
                .sockets
                .get(interface)
                .and_then(|groups| groups.first())
                .map(|g| g.ifindex);
        }
        self.installed
            .get(&(interface.to_owned(), slot))
            .map(|i| i.ifindex)
    }
}

/// The program counting every filter of `counted` into its map, for `slot`.
fn generate(
    interface: &str,
    slot: Slot,
    counted: &[Counted<'_>],
) -> Result<(LoadedProgram, Option<CounterTable>), SessionError> {
    let filters: Vec<_> = counted
        .iter()
        .map(|&(_, program, map)| (program, map))
        .collect();
    let (insns, table) = translate_counting(&filters, slot.hook(), slot == Slot::TcEgress)
        .map_err(|e| match e {
            CountingError::Translate(e) => SessionError::Translate(e),
            CountingError::Table(e) => failed(interface, slot, e),
        })?;
    let program = LoadedProgram::load(slot.hook(), slot.program_name(), &insns)?;
    Ok((program, table))
}

/// `SO_ATTACH_BPF`: `program` replaces the socket's filter atomically.
fn attach_filter(
    program: &LoadedProgram,
    socket: &CountingSocket,
    interface: &str,
    members: &[String],
) -> Result<(), SessionError> {
    use aya::programs::socket_filter::SocketFilterError;
    match program.socket_filter()?.attach(socket) {
        Ok(_) => Ok(()),
        Err(ProgramError::SocketFilterError(SocketFilterError::SetsockoptError {
            io_error,
            ..
        })) => {
            let why = if io_error.raw_os_error() == Some(libc::ENOMEM) {
                let optmem = std::fs::read_to_string("/proc/sys/net/core/optmem_max")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "?".into());
                format!(
                    "the filter is larger than a socket may hold (net.core.optmem_max = \
                     {optmem} bytes, counting the old filter while the new one replaces it): \
                     {io_error}"
                )
            } else {
                io_error.to_string()
            };
            Err(failed(
                interface,
                Slot::Socket,
                format!(
                    "cannot attach the filter of {} session(s) ({}) to a counting socket: {why}",
                    members.len(),
                    members.join(", ")
                ),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A new counting socket with `program`, bound to interface `index`.
fn open_socket(
    program: &LoadedProgram,
    index: u32,
    interface: &str,
    members: &[String],
) -> Result<CountingSocket, SessionError> {
    let socket_error = |what: &'static str| {
        move |source| SessionError::Socket {
            what,
            interface: interface.to_owned(),
            source,
        }
    };
    let socket = CountingSocket::new().map_err(socket_error("open"))?;
    // The filter first, so that no packet passes unfiltered.
    attach_filter(program, &socket, interface, members)?;
    socket.bind(index).map_err(socket_error("bind"))?;
    Ok(socket)
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
