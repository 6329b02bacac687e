//! The counting programs of interfaces: the sessions of an interface and hook share
//! them.
//!
//! Every session has its own counter map (pinned by the caller). A program counts the
//! sessions laid out in it, as a shared program (`capstats_ebpf::shared`): sessions of
//! one shape, differing only in their constants, are one group evaluated once per
//! packet; the others are evaluated in turn; each counts into its session's map through
//! the program's counter table, at an entry the session keeps for life. So a session
//! costs at most a few nanoseconds, not a program of its own (tcx takes 63 programs per
//! hook; an interface has one XDP hook). Sessions are laid out in programs, a session
//! staying in its program for life (new sessions go into the first program they fit):
//! when a session is added, changed or stopped, only its program changes, in its maps
//! alone where its code stays the same, else by generating it again and swapping it in
//! atomically, so every packet meets each session's filter exactly once, also while
//! sessions come and go:
//!
//! - socket: AF_PACKET sockets bound to the interface, both directions, each counting
//!   up to 32 groups or filters alone (a socket holds a filter of limited size;
//!   `SO_ATTACH_BPF` replaces a filter). The sockets live in the daemon.
//! - tc (each direction) and xdp: a chain of programs of up to 63 groups or filters
//!   alone, chunk 0's program on the link (`BPF_LINK_UPDATE`), chunk `k`'s in entry `k`
//!   of a prog array, each ending with a tail call to the next
//!   (`capstats_ebpf::chain`). A chunk emptied in the middle keeps a program that only
//!   passes packets on; one emptied at the end goes. At most 34 chunks (the kernel's 33
//!   tail calls).
//!   The link is pinned at `<pin-dir>/%tc/<interface>/<in|out>-link` or
//!   `%xdp/<interface>/<mode>-link` (XDP in native mode where the driver has it,
//!   generic otherwise), the prog array beside it as `in-chain`, `out-chain` or
//!   `chain` (a prog array's entries go with its last fd or pin), so the kernel keeps
//!   counting while no daemon runs. A new daemon takes the link back, builds a fresh
//!   chain, swaps its chunk 0 in and renames the new array's pin over the old. An XDP
//!   program that capstats did not attach is never replaced.
//!
//! An interface deleted takes its attachments with it; the next sync for a new
//! interface of that name attaches afresh.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, XdpMode as XdpFlags};
use aya::sys::SyscallError;
use capstats_common::hook::{Hook, XdpMode};
use capstats_ebpf::cbpf::Cooked;
use capstats_ebpf::cbpf::Program;
use capstats_ebpf::chain::{CHAIN_ITEMS, CHAIN_PROGRAMS, ProgArray, build_chunk};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::errors::with_causes;
use capstats_ebpf::filter::ANY;
use capstats_ebpf::insn::MapRef;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::plan::Planner;
use capstats_ebpf::shared::{InPlace, Joins, SharedProgram};
use capstats_ebpf::translate::{Count, Placement};

use crate::attach::{CountingSocket, ifindex};
use crate::log::event;
use crate::session::SessionError;

/// The directories of the interfaces' XDP and tc links in the pin directory. No
/// session name encodes to them: there `%` is always followed by two hex digits.
pub const XDP_DIR: &str = "%xdp";
pub const TC_DIR: &str = "%tc";

/// The prefix of the names of `hook`'s programs' maps, as `bpftool map` shows them
/// (`tc_in_d`: the dispatch map, `tc_in_t`: the counter table).
fn maps_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Socket => "socket",
        Hook::TcIngress => "tc_in",
        Hook::TcEgress => "tc_out",
        Hook::Xdp => "xdp",
    }
}

/// The name of `hook`'s programs, as `bpftool prog` shows it.
fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Socket => "capstats_socket",
        Hook::TcIngress => "capstats_tc_in",
        Hook::TcEgress => "capstats_tc_out",
        Hook::Xdp => "capstats_xdp",
    }
}

/// The names `hook`'s links are pinned under in the interface's directory, and the
/// XDP mode each stands for.
fn link_pins(hook: Hook) -> &'static [(&'static str, Option<XdpMode>)] {
    match hook {
        Hook::Socket => &[],
        Hook::TcIngress => &[("in-link", None)],
        Hook::TcEgress => &[("out-link", None)],
        Hook::Xdp => {
            const XDP: [(&str, Option<XdpMode>); 2] = [
                (xdp_link_pin(XdpMode::Native), Some(XdpMode::Native)),
                (xdp_link_pin(XdpMode::Generic), Some(XdpMode::Generic)),
            ];
            &XDP
        }
    }
}

/// The name an XDP link attached in `mode` is pinned under.
const fn xdp_link_pin(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Native => "native-link",
        XdpMode::Generic => "generic-link",
    }
}

/// The name `hook`'s chain's prog array is pinned under in the interface's directory.
fn chain_pin(hook: Hook) -> Option<&'static str> {
    match hook {
        Hook::Socket => None,
        Hook::TcIngress => Some("in-chain"),
        Hook::TcEgress => Some("out-chain"),
        Hook::Xdp => Some("chain"),
    }
}

/// What holds an interface's tc or XDP program in the kernel: a link, pinned.
#[derive(Debug)]
struct Linked {
    link: FdLink,
    /// XDP: how the program runs.
    mode: Option<XdpMode>,
}

/// Groups and filters alone per socket. A socket filter is charged to the socket's
/// option memory (`net.core.optmem_max`, 128 KiB by default), twice while a new filter
/// replaces the old, so one socket cannot hold the program of hundreds of filters
/// evaluated in turn (a group's members cost its program nothing). A session stays in
/// its socket's program for its life, so that every packet meets each session's filter
/// exactly once, also while sessions come and go.
const SESSIONS_PER_SOCKET: usize = 32;

/// What one program counts: its sessions, their filters and counter table entries,
/// and the shared program it was built as (whose maps a change may alter alone).
#[derive(Debug)]
struct Counting {
    /// The sessions, in the order of the program. Their filters as the program has
    /// them are its shared program's ([`SharedProgram::filter_at`]): a program whose
    /// sessions and filters are unchanged is kept as it is.
    members: Vec<String>,
    /// Their entries in the program's counter table, stable for a session's life.
    entries: Vec<u32>,
    shared: SharedProgram,
    /// Kept until it is replaced (the socket, link or prog array holds it anyway).
    program: LoadedProgram,
}

/// How a program comes to count a new set of sessions.
enum Work {
    /// Its sessions and filters are unchanged.
    Keep,
    /// A change of its maps alone: the code for the new set is the code it has.
    InPlace {
        members: Vec<String>,
        entries: Vec<u32>,
        change: InPlace,
    },
    /// A new program, loaded, to be swapped in.
    Load(Box<Counting>),
}

/// A socket counting a group of socket sessions.
#[derive(Debug)]
struct SocketGroup {
    counting: Counting,
    /// The interface's index when the socket was bound.
    ifindex: u32,
    socket: CountingSocket,
}

/// One program of a tc or XDP chain and the sessions it counts; none for a chunk
/// whose sessions all stopped while later chunks still count (its program only
/// passes packets on).
#[derive(Debug)]
struct Chunk {
    counting: Counting,
}

/// The chain of programs on a tc or XDP hook: chunk 0's program on the link, chunk
/// `k`'s in entry `k` of the prog array, each ending with a tail call to the next.
#[derive(Debug)]
struct Installed {
    /// The interface's index when attached: another index means a new interface.
    ifindex: u32,
    linked: Linked,
    /// Our reference to the chain's prog array (pinned too): its entries go when the
    /// last reference to it does.
    chain: ProgArray,
    chunks: Vec<Chunk>,
}

/// The counting programs the daemon has on interfaces.
#[derive(Debug)]
pub struct InterfacePrograms {
    pin_dir: PathBuf,
    /// tc and XDP.
    installed: BTreeMap<(String, Hook), Installed>,
    /// Socket sessions, by interface.
    sockets: BTreeMap<String, Vec<SocketGroup>>,
}

fn failed(interface: &str, hook: Hook, what: impl std::fmt::Display) -> SessionError {
    SessionError::Refused(format!("{} on {interface}: {what}", hook.describe()))
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

    fn link_dir(&self, interface: &str, hook: Hook) -> Option<PathBuf> {
        match hook {
            Hook::Socket => None,
            Hook::TcIngress | Hook::TcEgress => Some(self.pin_dir.join(TC_DIR).join(interface)),
            Hook::Xdp => Some(self.pin_dir.join(XDP_DIR).join(interface)),
        }
    }

    /// Makes `hook` of `interface` count every filter of `counted` into its counter map
    /// (socket groups, or a chain), or run no program if `counted` is empty. On error
    /// the kernel keeps what it had. Returns the XDP mode, for XDP.
    pub fn sync(
        &mut self,
        interface: &str,
        hook: Hook,
        counted: &[Counted<'_>],
    ) -> Result<Option<XdpMode>, SessionError> {
        if counted.is_empty() {
            self.detach(interface, hook);
            return Ok(None);
        }
        if hook == Hook::Socket {
            return self.sync_sockets(interface, counted).map(|()| None);
        }
        let Some(index) = ifindex(interface) else {
            // Links pinned for an interface of this name count on whatever it became
            // (renamed or moved while no daemon ran): a session shown down must not
            // count.
            if self.has_pins(interface, hook) {
                event!(
                    "removing the pinned {} programs of {interface}: no interface has that \
                     name now (they counted on one renamed, moved or deleted meanwhile)",
                    hook.describe()
                );
            }
            self.detach(interface, hook);
            return Err(SessionError::UnknownInterface(interface.into()));
        };
        let key = (interface.to_owned(), hook);
        let installed = match self.installed.remove(&key) {
            Some(old) if old.ifindex == index => {
                match self.update_chain(interface, hook, old, counted) {
                    (Some(installed), Ok(())) => installed,
                    (kept, result) => {
                        if let Some(kept) = kept {
                            self.installed.insert(key, kept);
                        }
                        return result.map(|()| None);
                    }
                }
            }
            Some(old) => {
                event!(
                    "{interface} is a new interface (index {index}, was {}): attaching its {} \
                     programs afresh",
                    old.ifindex,
                    hook.describe()
                );
                drop(old);
                self.unpin(interface, hook);
                self.new_chain(interface, hook, index, counted)?
            }
            None => self.new_chain(interface, hook, index, counted)?,
        };
        let mode = installed.linked.mode;
        self.installed.insert(key, installed);
        Ok(mode)
    }

    /// A chain made afresh for `counted`: a new prog array and every chunk's program,
    /// chunk 0 swapped onto the link a previous daemon pinned, or attached. The new
    /// prog array replaces the pinned one once the new chunk 0 runs (the old array's
    /// entries go with its pin). On error the kernel keeps what it had.
    fn new_chain(
        &self,
        interface: &str,
        hook: Hook,
        index: u32,
        counted: &[Counted<'_>],
    ) -> Result<Installed, SessionError> {
        let plan = chain_plan(interface, hook, &[], counted)?;
        let chain =
            ProgArray::create(program_name(hook)).map_err(|e| failed(interface, hook, e))?;
        let wanted = by_name(counted);
        let mut chunks = Vec::with_capacity(plan.len());
        for (k, members) in plan.into_iter().enumerate() {
            let entries = entries_for(None, &members);
            let counting = generate_chunk(interface, hook, &wanted, members, entries, &chain, k)?;
            chunks.push(Chunk { counting });
        }
        for (k, chunk) in chunks.iter().enumerate().skip(1) {
            chain
                .set(k as u32, &chunk.counting.program)
                .map_err(|e| failed(interface, hook, e))?;
        }
        // Pinned under a name of its own until chunk 0 refers to it.
        let (pending, pin) = self.chain_pins(interface, hook);
        let dir = self
            .link_dir(interface, hook)
            .expect("tc and XDP have a directory");
        fs::create_dir_all(&dir)
            .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))?;
        let _ = fs::remove_file(&pending);
        chain
            .pin(&pending)
            .map_err(|e| failed(interface, hook, e))?;
        let head = &chunks[0].counting.program;
        let linked = match self.taken_back(interface, hook) {
            // A pinned link that cannot be opened now (too few descriptors) still
            // counts: attaching another would count twice, unpinning it lose the gap.
            Err(e) => Err(e),
            Ok(Some(linked)) => match self.swap(interface, hook, head, linked) {
                Ok(linked) => Ok(linked),
                Err(e) => {
                    // A link of an interface that is gone (the name now belongs to
                    // another), or one that cannot be updated: start afresh.
                    event!(
                        "not using the pinned {} link of {interface}: {e}",
                        hook.describe()
                    );
                    self.unpin(interface, hook);
                    fs::create_dir_all(&dir)
                        .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))
                        .and_then(|()| chain.pin(&pending).map_err(|e| failed(interface, hook, e)))
                        .and_then(|()| self.attach(interface, hook, head))
                }
            },
            Ok(None) => self.attach(interface, hook, head),
        };
        let linked = match linked {
            Ok(linked) => linked,
            Err(e) => {
                // Nothing of ours stays: the array's pin, and directories left empty.
                let _ = fs::remove_file(&pending);
                let _ = fs::remove_dir(&dir);
                if let Some(parent) = dir.parent() {
                    let _ = fs::remove_dir(parent);
                }
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&pending, &pin) {
            event!(
                "cannot pin the {} chain of {interface} at {}: {e}; chained programs stop \
                 counting when this daemon exits",
                hook.describe(),
                pin.display()
            );
        }
        Ok(Installed {
            ifindex: index,
            linked,
            chain,
            chunks,
        })
    }

    /// `installed` brought to `counted`: only chunks whose sessions or filters changed
    /// change, in their maps alone where their code stays the same, else with a new
    /// program: chunk 0 on the link (`BPF_LINK_UPDATE`), chunk `k` in entry `k` of the
    /// prog array; chunks emptied at the end go. Every new program is loaded and every
    /// change of maps prepared before anything is changed: a refused one leaves
    /// everything as it was. Returns what is installed after, with the error if any;
    /// none after a failed swap of chunk 0 (the kernel keeps the old chain, taken back
    /// from the pins next time).
    fn update_chain(
        &self,
        interface: &str,
        hook: Hook,
        mut installed: Installed,
        counted: &[Counted<'_>],
    ) -> (Option<Installed>, Result<(), SessionError>) {
        let old: Vec<&Counting> = installed.chunks.iter().map(|c| &c.counting).collect();
        let plan = match chain_plan(interface, hook, &old, counted) {
            Ok(plan) => plan,
            Err(e) => return (Some(installed), Err(e)),
        };
        let wanted = by_name(counted);
        let mut works = Vec::with_capacity(plan.len());
        for (k, members) in plan.iter().enumerate() {
            let old = installed.chunks.get(k).map(|c| &c.counting);
            let work = plan_work(old, members, &wanted, |members, entries| {
                generate_chunk(
                    interface,
                    hook,
                    &wanted,
                    members,
                    entries,
                    &installed.chain,
                    k,
                )
            });
            match work {
                Ok(work) => works.push(work),
                Err(e) => return (Some(installed), Err(e)),
            }
        }
        let mut first_error = None;
        for (k, work) in works.into_iter().enumerate() {
            match work {
                Work::Keep => {}
                Work::InPlace {
                    members,
                    entries,
                    change,
                } => {
                    let counting = &mut installed.chunks[k].counting;
                    if let Err(e) = apply(counting, members, entries, change) {
                        first_error.get_or_insert(failed(interface, hook, e));
                        break;
                    }
                }
                // Chunk 0 first: when its swap fails nothing has changed.
                Work::Load(counting) if k == 0 => {
                    let Installed {
                        ifindex,
                        linked,
                        chain,
                        mut chunks,
                    } = installed;
                    let linked = match self.swap(interface, hook, &counting.program, linked) {
                        Ok(linked) => linked,
                        Err(e) => return (None, Err(e)),
                    };
                    chunks[0] = Chunk {
                        counting: *counting,
                    };
                    installed = Installed {
                        ifindex,
                        linked,
                        chain,
                        chunks,
                    };
                }
                Work::Load(counting) => {
                    // Atomic per entry; an entry that cannot be set keeps its program.
                    // Later chunks are left as they were: chunks stay in order.
                    if let Err(e) = installed.chain.set(k as u32, &counting.program) {
                        first_error.get_or_insert(failed(interface, hook, e));
                        break;
                    }
                    let chunk = Chunk {
                        counting: *counting,
                    };
                    match installed.chunks.get_mut(k) {
                        Some(old) => *old = chunk,
                        None => installed.chunks.push(chunk),
                    }
                }
            }
        }
        // Chunks emptied at the end: their entries emptied, last first.
        while first_error.is_none() && installed.chunks.len() > plan.len() {
            let k = installed.chunks.len() - 1;
            if let Err(e) = installed.chain.clear(k as u32) {
                first_error.get_or_insert(failed(interface, hook, e));
                break;
            }
            installed.chunks.pop();
        }
        // What was swapped in is recorded; the error says what was not.
        match first_error {
            Some(e) => (Some(installed), Err(e)),
            None => (Some(installed), Ok(())),
        }
    }

    /// The socket sessions of `interface`, in groups of at most
    /// [`SESSIONS_PER_SOCKET`], a socket each. Every program is loaded before any is
    /// swapped in; a group left empty closes its socket.
    fn sync_sockets(
        &mut self,
        interface: &str,
        counted: &[Counted<'_>],
    ) -> Result<(), SessionError> {
        let index =
            ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.into()))?;
        let mut groups = self.sockets.remove(interface).unwrap_or_default();
        if groups.iter().any(|g| g.ifindex != index) {
            event!(
                "{interface} is a new interface (index {index}): opening its counting sockets afresh"
            );
            groups.clear();
        }
        let wanted = by_name(counted);
        let old: Vec<&Counting> = groups.iter().map(|g| &g.counting).collect();
        let plan = plan_groups(&old, counted, SESSIONS_PER_SOCKET);
        let works = plan
            .iter()
            .enumerate()
            .map(|(i, members)| {
                if members.is_empty() {
                    return Ok(None);
                }
                let old = groups.get(i).map(|g| &g.counting);
                plan_work(old, members, &wanted, |members, entries| {
                    generate_socket_program(interface, &wanted, members, entries)
                })
                .map(Some)
            })
            .collect::<Result<Vec<_>, SessionError>>();
        let works = match works {
            Ok(works) => works,
            Err(e) => {
                self.sockets.insert(interface.to_owned(), groups);
                return Err(e);
            }
        };
        let mut old = groups.into_iter().map(Some).collect::<Vec<_>>();
        let mut synced = Vec::new();
        let mut first_error = None;
        for (i, work) in works.into_iter().enumerate() {
            let existing = old.get_mut(i).and_then(Option::take);
            let counting = match (work, existing) {
                // Empty: its socket, if any, closes here.
                (None, _) => continue,
                (Some(Work::Keep), Some(group)) => {
                    synced.push(group);
                    continue;
                }
                (
                    Some(Work::InPlace {
                        members,
                        entries,
                        change,
                    }),
                    Some(mut group),
                ) => {
                    if let Err(e) = apply(&mut group.counting, members, entries, change) {
                        first_error.get_or_insert(SessionError::Refused(format!(
                            "socket on {interface}: {e}"
                        )));
                    }
                    synced.push(group);
                    continue;
                }
                (Some(Work::Load(counting)), existing) => (*counting, existing),
                (Some(_), None) => unreachable!("only a program that exists is kept or changed"),
            };
            let (counting, existing) = counting;
            let socket = match existing {
                Some(group) => match attach_filter(
                    &counting.program,
                    &group.socket,
                    interface,
                    &counting.members,
                ) {
                    Ok(()) => group.socket,
                    Err(e) => {
                        // The socket keeps its old program and members.
                        first_error.get_or_insert(e);
                        synced.push(group);
                        continue;
                    }
                },
                None => match open_socket(&counting.program, index, interface, &counting.members) {
                    Ok(socket) => socket,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                },
            };
            synced.push(SocketGroup {
                counting,
                ifindex: index,
                socket,
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
        hook: Hook,
        program: &LoadedProgram,
        Linked { link, mode }: Linked,
    ) -> Result<Linked, SessionError> {
        let link = match hook {
            Hook::Xdp => {
                let link = XdpLink::try_from(link).map_err(|e| {
                    failed(
                        interface,
                        hook,
                        format!("the link is not an XDP link: {}", with_causes(&e)),
                    )
                })?;
                let mut xdp = program.xdp()?;
                let id = xdp.attach_to_link(link)?;
                FdLink::try_from(xdp.take_link(id)?)
                    .map_err(|e| failed(interface, hook, with_causes(&e)))?
            }
            _ => {
                let link = SchedClassifierLink::try_from(link).map_err(|e| {
                    failed(
                        interface,
                        hook,
                        format!("the link is not a tcx link: {}", with_causes(&e)),
                    )
                })?;
                let mut classifier = program.sched_classifier()?;
                let id = classifier.attach_to_link(link)?;
                FdLink::try_from(classifier.take_link(id)?)
                    .map_err(|e| failed(interface, hook, with_causes(&e)))?
            }
        };
        Ok(Linked { link, mode })
    }

    /// A link a previous daemon pinned for `hook` of `interface`. One that is there but
    /// cannot be opened is an error, and stays pinned (and counting).
    fn taken_back(&self, interface: &str, hook: Hook) -> Result<Option<Linked>, SessionError> {
        let Some(dir) = self.link_dir(interface, hook) else {
            return Ok(None);
        };
        for &(name, mode) in link_pins(hook) {
            let path = dir.join(name);
            if path.exists() {
                return match PinnedLink::from_pin(&path) {
                    Ok(pinned) => Ok(Some(Linked {
                        link: FdLink::from(pinned),
                        mode,
                    })),
                    Err(e) => Err(failed(
                        interface,
                        hook,
                        format!(
                            "cannot open the pinned link {}: {}; it is left in place",
                            path.display(),
                            with_causes(&e)
                        ),
                    )),
                };
            }
        }
        Ok(None)
    }

    /// Attaches `program` to `hook` of `interface` (index `index`), pinning a link.
    fn attach(
        &self,
        interface: &str,
        hook: Hook,
        program: &LoadedProgram,
    ) -> Result<Linked, SessionError> {
        match hook {
            Hook::Socket => unreachable!("sockets are synced by sync_sockets"),
            Hook::TcIngress | Hook::TcEgress => {
                let attach_type = match hook {
                    Hook::TcIngress => TcAttachType::Ingress,
                    _ => TcAttachType::Egress,
                };
                let (pin, _) = link_pins(hook)[0];
                let mut classifier = program.sched_classifier()?;
                let id = classifier
                    .attach(interface, attach_type)
                    .map_err(|e| attach_error(e, interface, hook))?;
                let link = FdLink::try_from(classifier.take_link(id)?)
                    .map_err(|e| failed(interface, hook, with_causes(&e)))?;
                let link = self.pin(interface, hook, link, pin)?;
                Ok(Linked { link, mode: None })
            }
            Hook::Xdp => self.attach_xdp(interface, program),
        }
    }

    /// Attaches natively where the driver can, generically otherwise. An XDP program
    /// already on the interface is left alone.
    fn attach_xdp(&self, interface: &str, program: &LoadedProgram) -> Result<Linked, SessionError> {
        let hook = Hook::Xdp;
        let mut xdp = program.xdp()?;
        let mut tried = Vec::new();
        for (mode, flags) in [
            (XdpMode::Native, XdpFlags::Driver),
            (XdpMode::Generic, XdpFlags::Skb),
        ] {
            match xdp.attach(interface, flags) {
                Ok(id) => {
                    let link = FdLink::try_from(xdp.take_link(id)?)
                        .map_err(|e| failed(interface, hook, with_causes(&e)))?;
                    let link = self.pin(interface, hook, link, xdp_link_pin(mode))?;
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
                        hook,
                        "the interface already has an XDP program that capstats did not attach; \
                         it is left in place (remove it, or count with hook tc)",
                    ));
                }
                Err(e) => {
                    tried.push(format!("{}: {}", mode.as_str(), with_causes(&e)));
                }
            }
        }
        Err(failed(
            interface,
            hook,
            format!("cannot attach ({})", tried.join("; ")),
        ))
    }

    /// Pins `link` as `name` in the hook's directory and keeps an fd to it.
    fn pin(
        &self,
        interface: &str,
        hook: Hook,
        link: FdLink,
        name: &str,
    ) -> Result<FdLink, SessionError> {
        let dir = self
            .link_dir(interface, hook)
            .expect("only links are pinned");
        fs::create_dir_all(&dir)
            .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))?;
        let pinned = link.pin(dir.join(name)).map_err(|e| {
            failed(
                interface,
                hook,
                format!("cannot pin the link: {}", with_causes(&e)),
            )
        })?;
        Ok(FdLink::from(pinned))
    }

    /// Where the hook's prog array is pinned while its chunk 0 is being swapped in,
    /// and after.
    fn chain_pins(&self, interface: &str, hook: Hook) -> (PathBuf, PathBuf) {
        let dir = self.link_dir(interface, hook).unwrap_or_default();
        let name = chain_pin(hook).unwrap_or_default();
        (dir.join(format!("{name}-new")), dir.join(name))
    }

    /// Removes the hook's pinned link(s) and prog array; the kernel detaches a link
    /// once nothing holds it, and empties a prog array.
    fn unpin(&self, interface: &str, hook: Hook) {
        let Some(dir) = self.link_dir(interface, hook) else {
            return;
        };
        for (name, _) in link_pins(hook) {
            let path = dir.join(name);
            if path.exists() {
                detach_now(&path);
            }
            let _ = fs::remove_file(path);
        }
        let (pending, pin) = self.chain_pins(interface, hook);
        let _ = fs::remove_file(pending);
        let _ = fs::remove_file(pin);
        // Empty directories go; one still holding the other direction's link stays.
        let _ = fs::remove_dir(&dir);
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }

    /// Whether links or a chain are pinned for `hook` of `interface`.
    fn has_pins(&self, interface: &str, hook: Hook) -> bool {
        let Some(dir) = self.link_dir(interface, hook) else {
            return false;
        };
        let (pending, pin) = self.chain_pins(interface, hook);
        link_pins(hook).iter().any(|(n, _)| dir.join(n).exists())
            || pending.exists()
            || pin.exists()
    }

    /// The interface `old` is now called `new` (same index): its programs, sockets and
    /// pins are filed under the new name. Whatever was filed under `new` (of an
    /// interface gone meanwhile) is dropped first.
    pub fn rename(&mut self, old: &str, new: &str) {
        for hook in [Hook::Socket, Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
            self.detach(new, hook);
        }
        if let Some(groups) = self.sockets.remove(old) {
            self.sockets.insert(new.to_owned(), groups);
        }
        for hook in [Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
            if let Some(installed) = self.installed.remove(&(old.to_owned(), hook)) {
                self.installed.insert((new.to_owned(), hook), installed);
            }
        }
        for top in [TC_DIR, XDP_DIR] {
            let (from, to) = (
                self.pin_dir.join(top).join(old),
                self.pin_dir.join(top).join(new),
            );
            if from.exists()
                && let Err(e) = fs::rename(&from, &to)
            {
                event!(
                    "cannot move the pins of {old} to {}: {e}; a daemon started later does \
                     not find them",
                    to.display()
                );
            }
        }
    }

    /// Takes the program off `hook` of `interface` and removes its pin.
    pub fn detach(&mut self, interface: &str, hook: Hook) {
        if hook == Hook::Socket {
            self.sockets.remove(interface);
        }
        self.installed.remove(&(interface.to_owned(), hook));
        self.unpin(interface, hook);
    }

    /// Every hook of every interface: detached, pins removed (`--detach-on-exit`).
    pub fn detach_all(&mut self) {
        let keys: Vec<_> = self.installed.keys().cloned().collect();
        for (interface, hook) in keys {
            self.detach(&interface, hook);
        }
        self.sockets.clear();
        self.remove_unclaimed(&std::collections::HashSet::new());
    }

    /// Pinned links of hooks `keep` does not name: removed, and said so.
    pub fn remove_unclaimed(&mut self, keep: &std::collections::HashSet<(String, Hook)>) {
        for (top, hooks) in [
            (XDP_DIR, &[Hook::Xdp][..]),
            (TC_DIR, &[Hook::TcIngress, Hook::TcEgress][..]),
        ] {
            let Ok(entries) = fs::read_dir(self.pin_dir.join(top)) else {
                continue;
            };
            for entry in entries.flatten() {
                let interface = entry.file_name().to_string_lossy().into_owned();
                for &hook in hooks {
                    if !keep.contains(&(interface.clone(), hook)) {
                        let dir = entry.path();
                        let (pending, pin) = self.chain_pins(&interface, hook);
                        if link_pins(hook).iter().any(|(n, _)| dir.join(n).exists())
                            || pending.exists()
                            || pin.exists()
                        {
                            event!(
                                "removing the pinned {} programs of {interface}: no saved session counts there",
                                hook.describe()
                            );
                        }
                        self.unpin(&interface, hook);
                    }
                }
            }
        }
    }

    /// The interface's index when `hook`'s program was attached, if it is.
    pub fn attached_ifindex(&self, interface: &str, hook: Hook) -> Option<u32> {
        if hook == Hook::Socket {
            return self
                .sockets
                .get(interface)
                .and_then(|groups| groups.first())
                .map(|g| g.ifindex);
        }
        self.installed
            .get(&(interface.to_owned(), hook))
            .map(|i| i.ifindex)
    }
}

/// The program counting the sessions `members` (named in `wanted`) into their maps at
/// table entries `entries`, for a socket on `interface` (at most
/// [`SESSIONS_PER_SOCKET`] groups and filters alone; on `any`, behind a cooked header).
fn generate_socket_program(
    interface: &str,
    wanted: &HashMap<&str, Counted<'_>>,
    members: Vec<String>,
    entries: Vec<u32>,
) -> Result<Counting, SessionError> {
    let hook = Hook::Socket;
    let filters = counted_filters(wanted, &members);
    let placement = Placement {
        cooked: (interface == ANY).then(|| Cooked::Sll2.header_len()),
        ..Placement::on(hook)
    };
    let shared = SharedProgram::build_at(maps_name(hook), &filters, &entries, placement)
        .map_err(|e| SessionError::Refused(format!("socket: {e}")))?;
    let maps = shared.binding();
    let program = LoadedProgram::load_with(hook, program_name(hook), &shared.insns, &maps)?;
    Ok(Counting {
        members,
        entries,
        shared,
        program,
    })
}

/// Program `k` of `hook`'s chain, counting the sessions `members` (named in `wanted`)
/// at table entries `entries`.
fn generate_chunk(
    interface: &str,
    hook: Hook,
    wanted: &HashMap<&str, Counted<'_>>,
    members: Vec<String>,
    entries: Vec<u32>,
    chain: &ProgArray,
    k: usize,
) -> Result<Counting, SessionError> {
    let filters = counted_filters(wanted, &members);
    let shared = build_chunk(maps_name(hook), &filters, &entries, hook, k)
        .map_err(|e| failed(interface, hook, e))?;
    let maps = shared.binding().bind(MapRef::ProgArray, chain);
    let program = LoadedProgram::load_with(hook, program_name(hook), &shared.insns, &maps)
        .map_err(|e| {
            if k == 0 {
                e.into()
            } else {
                failed(
                    interface,
                    hook,
                    format!("program {k} of the chain ({} sessions): {e}", members.len()),
                )
            }
        })?;
    Ok(Counting {
        members,
        entries,
        shared,
        program,
    })
}

/// The filters and counter maps of `members`, in order.
fn counted_filters<'a>(
    wanted: &HashMap<&str, Counted<'a>>,
    members: &[String],
) -> Vec<(&'a Program, &'a CounterMap)> {
    members
        .iter()
        .map(|m| {
            let (_, program, map) = wanted[m.as_str()];
            (program, map)
        })
        .collect()
}

/// Counter table entries for `members`: a session keeps the one it had in `old`; a new
/// one takes the lowest entry no other member has.
fn entries_for(old: Option<&Counting>, members: &[String]) -> Vec<u32> {
    let had: HashMap<&str, u32> = old
        .map(|c| {
            c.members
                .iter()
                .map(String::as_str)
                .zip(c.entries.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let mut taken: HashSet<u32> = members
        .iter()
        .filter_map(|m| had.get(m.as_str()).copied())
        .collect();
    let mut next = 0;
    members
        .iter()
        .map(|m| match had.get(m.as_str()) {
            Some(&entry) => entry,
            None => {
                while taken.contains(&next) {
                    next += 1;
                }
                taken.insert(next);
                next
            }
        })
        .collect()
}

/// How the program `old` (none: there is none yet) comes to count `members`: kept,
/// changed in its maps alone, or generated anew with `generate`.
fn plan_work(
    old: Option<&Counting>,
    members: &[String],
    wanted: &HashMap<&str, Counted<'_>>,
    generate: impl FnOnce(Vec<String>, Vec<u32>) -> Result<Counting, SessionError>,
) -> Result<Work, SessionError> {
    let unchanged = |c: &Counting| {
        c.members == members
            && members
                .iter()
                .zip(&c.entries)
                .all(|(m, &e)| c.shared.filter_at(e) == Some(wanted[m.as_str()].1))
    };
    if old.is_some_and(unchanged) {
        return Ok(Work::Keep);
    }
    let entries = entries_for(old, members);
    if let Some(old) = old {
        let filters = counted_filters(wanted, members);
        let change = old
            .shared
            .prepare_in_place(&filters, &entries)
            .map_err(|e| SessionError::Refused(e.to_string()))?;
        if let Some(change) = change {
            return Ok(Work::InPlace {
                members: members.to_vec(),
                entries,
                change,
            });
        }
    }
    generate(members.to_vec(), entries).map(|counting| Work::Load(Box::new(counting)))
}

/// Makes a change prepared by [`plan_work`] in `counting`'s maps (the counter maps of
/// its sessions still open).
fn apply(
    counting: &mut Counting,
    members: Vec<String>,
    entries: Vec<u32>,
    change: InPlace,
) -> Result<(), capstats_ebpf::shared::SharedError> {
    counting.shared.apply(change)?;
    counting.members = members;
    counting.entries = entries;
    Ok(())
}

/// The sessions of `counted` by name.
fn by_name<'a>(counted: &[Counted<'a>]) -> HashMap<&'a str, Counted<'a>> {
    counted.iter().map(|&c| (c.0, c)).collect()
}

/// Who goes where, given the programs `old` had: every session of `counted` that is
/// in one stays there, in its place (a program may be left with none); a new session
/// goes into the first program where it joins a group of filters evaluated together
/// or there is room for it alone (at most `most_items` groups and filters alone, see
/// `capstats_ebpf::shared`), else into a new program at the end. A session staying in
/// its program for life is what makes every packet meet each session's filter
/// exactly once while programs are replaced one by one.
fn plan_groups(old: &[&Counting], counted: &[Counted<'_>], most_items: usize) -> Vec<Vec<String>> {
    let wanted = by_name(counted);
    let mut plan: Vec<Place<'_, '_>> = old.iter().map(|c| Place::of(c, &wanted)).collect();
    let placed: HashSet<&str> = old
        .iter()
        .flat_map(|c| c.members.iter().map(String::as_str))
        .filter(|m| wanted.contains_key(m))
        .collect();
    // Programs made in this change: planned from their sessions.
    let mut fresh: Vec<(Vec<String>, Planner<'_>)> = Vec::new();
    for &(name, program, map) in counted {
        if placed.contains(name) {
            continue;
        }
        let count = map.count();
        if let Some(i) = plan
            .iter_mut()
            .position(|place| place.add(program, count, most_items))
        {
            plan[i].members.push(name.to_owned());
            continue;
        }
        match fresh
            .iter_mut()
            .position(|(_, planner)| planner.add_counted_within(program, count, most_items))
        {
            Some(i) => fresh[i].0.push(name.to_owned()),
            None => {
                let mut planner = Planner::new();
                planner.add_counted_within(program, count, usize::MAX);
                fresh.push((vec![name.to_owned()], planner));
            }
        }
    }
    plan.into_iter()
        .map(|p| p.members)
        .chain(fresh.into_iter().map(|(members, _)| members))
        .collect()
}

/// One program of [`plan_groups`]: the sessions it keeps and gains, and whether a
/// newcomer fits.
struct Place<'o, 'a> {
    members: Vec<String>,
    /// Their filters and counts, in order.
    filters: Vec<(&'a Program, Count)>,
    fit: Fit<'o, 'a>,
}

/// How [`Place`] decides whether a newcomer fits.
enum Fit<'o, 'a> {
    /// The program's groups as they are: a session leaving or joining one changes its
    /// maps alone, and deciding costs what the change touches, not what the program
    /// counts.
    InPlace(Joins<'o>),
    /// Its code changes anyway: planned afresh from its sessions, as a new program is.
    Planned(Planner<'a>),
}

impl<'o, 'a> Place<'o, 'a> {
    /// `old`'s sessions that are still wanted, in their order.
    fn of(old: &'o Counting, wanted: &HashMap<&str, Counted<'a>>) -> Self {
        let mut joins = old.shared.joins();
        let mut in_place = true;
        let mut members = Vec::with_capacity(old.members.len());
        let mut filters = Vec::with_capacity(old.members.len());
        let mut modified = Vec::new();
        for (member, &entry) in old.members.iter().zip(&old.entries) {
            let Some(&(_, program, map)) = wanted.get(member.as_str()) else {
                in_place = in_place && joins.stop(entry);
                continue;
            };
            if old.shared.filter_at(entry) != Some(program) {
                // Modified: it leaves its group and joins one with its new filter,
                // once every leaver's keys are free (as the change is made).
                in_place = in_place && joins.stop(entry);
                modified.push((program, map.count()));
            }
            members.push(member.clone());
            filters.push((program, map.count()));
        }
        for (program, count) in modified {
            in_place = in_place && joins.join(program, count).is_some();
        }
        let mut place = Self {
            members,
            filters,
            fit: Fit::InPlace(joins),
        };
        if !in_place {
            place.plan();
        }
        place
    }

    /// Plans the program afresh from its sessions.
    fn plan(&mut self) {
        let mut planner = Planner::new();
        for &(program, count) in &self.filters {
            planner.add_counted_within(program, count, usize::MAX);
        }
        self.fit = Fit::Planned(planner);
    }

    /// Whether `program`, counting `count`, fits (joins a group, or there is room for it
    /// alone among at most `most_items` groups and filters alone); if so it is taken.
    fn add(&mut self, program: &'a Program, count: Count, most_items: usize) -> bool {
        if let Fit::InPlace(joins) = &mut self.fit {
            if joins.join(program, count).is_some() {
                self.filters.push((program, count));
                return true;
            }
            self.plan();
        }
        let Fit::Planned(planner) = &mut self.fit else {
            unreachable!("planned above");
        };
        let fits = planner.add_counted_within(program, count, most_items);
        if fits {
            self.filters.push((program, count));
        }
        fits
    }
}

/// [`plan_groups`] for a chain: chunks of at most [`CHAIN_ITEMS`] groups and filters
/// alone, those emptied at the end left out (an emptied chunk in the middle stays,
/// passing packets on), at most [`CHAIN_PROGRAMS`] chunks.
fn chain_plan(
    interface: &str,
    hook: Hook,
    old: &[&Counting],
    counted: &[Counted<'_>],
) -> Result<Vec<Vec<String>>, SessionError> {
    let mut plan = plan_groups(old, counted, CHAIN_ITEMS);
    while plan.last().is_some_and(Vec::is_empty) {
        plan.pop();
    }
    if plan.len() > CHAIN_PROGRAMS {
        return Err(failed(
            interface,
            hook,
            format!(
                "{} sessions are more than one interface's {} hook can count: at most \
                 {CHAIN_PROGRAMS} chained programs of {CHAIN_ITEMS} filters or groups of \
                 filters that differ only in their constants (the kernel allows 33 tail \
                 calls); filters of one shape, such as `udp port P` for many P, take one \
                 place together",
                counted.len(),
                hook.describe()
            ),
        ));
    }
    Ok(plan)
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
                Hook::Socket,
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
        move |cause| SessionError::Socket {
            what,
            interface: interface.to_owned(),
            cause,
        }
    };
    let socket = CountingSocket::new(interface == ANY).map_err(socket_error("open"))?;
    // The filter first, so that no packet passes unfiltered.
    attach_filter(program, &socket, interface, members)?;
    socket.bind(index).map_err(socket_error("bind"))?;
    Ok(socket)
}

/// Detaches the link pinned at `path` at once (`BPF_LINK_DETACH`), whoever still
/// holds it. A link whose pin is removed goes only when its pin's inode is freed, a
/// moment later (RCU and a work queue): packets passing meanwhile would still be
/// counted by a session already shown down. Best effort: the pin's removal follows.
fn detach_now(path: &Path) {
    // A pin that cannot be opened has nothing to detach.
    let Ok(link) = crate::sys::bpf::obj_get(path) else {
        return;
    };
    if let Err(e) = crate::sys::bpf::link_detach(&link) {
        event!(
            "cannot detach the link pinned at {} at once ({e}); it goes with its pin",
            path.display(),
        );
    }
}

/// The kernel's reason, in words.
fn attach_error(error: ProgramError, interface: &str, hook: Hook) -> SessionError {
    if let ProgramError::SyscallError(SyscallError { io_error, .. }) = &error
        && io_error.raw_os_error() == Some(libc::ERANGE)
    {
        return failed(
            interface,
            hook,
            "the tcx hook already runs as many programs as the kernel allows (63); capstats \
             needs one: detach another program there",
        );
    }
    failed(
        interface,
        hook,
        format!("cannot attach: {}", with_causes(&error)),
    )
}
