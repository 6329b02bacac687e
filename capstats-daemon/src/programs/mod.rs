//! The counting programs of interfaces: the sessions of an interface and hook share
//! them.
//!
//! Every session has its own counter map (pinned by the caller). A program counts the
//! sessions laid out in it, as a shared program (`capstats_ebpf::shared`): sessions of
//! one shape, differing only in their constants, are one group evaluated once per
//! packet; the others are evaluated in turn; each counts into its session's map through
//! the program's counter table, at an entry the session keeps for life. So a session
//! costs at most a few nanoseconds, not a program of its own (tcx takes 63 programs per
//! hook; an interface has one XDP slot).
//!
//! One job per module:
//!
//! - [`layout`]: who goes where, pure: a session stays in its program for life, a new
//!   one goes into the first program it fits without making a large one again.
//! - [`swap`]: plan, regenerate what changed, swap, written once: when a session is
//!   added, changed or stopped, only its program changes, in its maps alone where its
//!   code stays the same, else by generating it again and swapping it in atomically,
//!   so every packet meets each session's filter exactly once, also while sessions come
//!   and go.
//! - [`socket`]: the socket hook's places, AF_PACKET sockets bound to the interface,
//!   each counting up to 32 groups or filters alone. They live in the daemon.
//! - [`chain`]: the tc (each direction) and XDP hooks' places, a chain of programs of
//!   up to 63 groups or filters alone, chunk 0's program on the link
//!   (`BPF_LINK_UPDATE`), chunk `k`'s in entry `k` of a prog array, each ending with a
//!   tail call to the next (`capstats_ebpf::chain`). A chunk emptied in the middle
//!   keeps a program that only passes packets on; one emptied at the end goes. At most
//!   34 chunks (the kernel's 33 tail calls). The link and the prog array are pinned
//!   (`crate::bpffs::HookPins`), so the kernel keeps counting while no daemon runs. A
//!   new daemon takes the link back, builds a fresh chain, swaps its chunk 0 in and
//!   renames the new array's pin over the old.
//! - [`tc`], [`xdp`]: attaching a program to the hook through a pinned link, and
//!   swapping it there (XDP in native mode where the driver has it, generic otherwise;
//!   an XDP program that capstats did not attach is never replaced).
//!
//! An interface deleted takes its attachments with it; the next sync for a new
//! interface of that name attaches afresh.

mod chain;
mod layout;
mod socket;
mod swap;
mod tc;
mod xdp;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use capstats_common::hook::{Hook, XdpMode};
use capstats_ebpf::cbpf::Program;
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::errors::with_causes;

use crate::attach::ifindex;
use crate::bpffs::{self, HookPins};
use crate::log::event;
use crate::session::SessionError;

/// The maps of sessions by name the layout and the swap build per change.
pub use capstats_ebpf::shared::{FastMap, FastSet};

/// One session's part of a program: its name, its filter and its counter map.
pub type Counted<'a> = (&'a str, &'a Program, &'a CounterMap);

fn failed(interface: &str, hook: Hook, what: impl std::fmt::Display) -> SessionError {
    SessionError::Refused(format!("{} on {interface}: {what}", hook.describe()))
}

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

/// Pins `link` at `path` (making its directory) and keeps an fd to it.
fn pin_link(
    interface: &str,
    hook: Hook,
    link: FdLink,
    path: &Path,
) -> Result<FdLink, SessionError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))?;
    }
    let pinned = link.pin(path).map_err(|e| {
        failed(
            interface,
            hook,
            format!("cannot pin the link: {}", with_causes(&e)),
        )
    })?;
    Ok(FdLink::from(pinned))
}

/// The counting programs the daemon has on interfaces.
#[derive(Debug)]
pub struct InterfacePrograms {
    pin_dir: PathBuf,
    /// tc and XDP.
    installed: BTreeMap<(String, Hook), chain::Installed>,
    /// Socket sessions, by interface.
    sockets: BTreeMap<String, Vec<socket::SocketGroup>>,
}

impl InterfacePrograms {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            installed: BTreeMap::new(),
            sockets: BTreeMap::new(),
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
        // Only the socket hook pins nothing: its sockets live in the daemon.
        let Some(pins) = HookPins::of(&self.pin_dir, interface, hook) else {
            let groups = self.sockets.remove(interface).unwrap_or_default();
            let (groups, result) = socket::sync(groups, interface, counted);
            if !groups.is_empty() {
                self.sockets.insert(interface.to_owned(), groups);
            }
            return result.map(|()| None);
        };
        let Some(index) = ifindex(interface) else {
            // Links pinned for an interface of this name count on whatever it became
            // (renamed or moved while no daemon ran): a session shown down must not
            // count.
            if pins.exist() {
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
                match chain::update(interface, hook, old, counted) {
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
                chain::unpin(&pins);
                chain::new_chain(interface, hook, index, &pins, counted)?
            }
            None => chain::new_chain(interface, hook, index, &pins, counted)?,
        };
        let mode = installed.mode();
        self.installed.insert(key, installed);
        Ok(mode)
    }

    /// The interface `old` is now called `new` (same index): its programs, sockets and
    /// pins are filed under the new name. Whatever was filed under `new` (of an
    /// interface gone meanwhile) is dropped first.
    pub fn rename(&mut self, old: &str, new: &str) {
        for hook in Hook::ALL {
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
        for (to, e) in bpffs::rename_interface(&self.pin_dir, old, new) {
            event!(
                "cannot move the pins of {old} to {}: {e}; a daemon started later does \
                 not find them",
                to.display()
            );
        }
    }

    /// Takes the program off `hook` of `interface` and removes its pins.
    pub fn detach(&mut self, interface: &str, hook: Hook) {
        if hook == Hook::Socket {
            self.sockets.remove(interface);
        }
        self.installed.remove(&(interface.to_owned(), hook));
        if let Some(pins) = HookPins::of(&self.pin_dir, interface, hook) {
            chain::unpin(&pins);
        }
    }

    /// Every hook of every interface: detached, pins removed (`--detach-on-exit`).
    pub fn detach_all(&mut self) {
        let keys: Vec<_> = self.installed.keys().cloned().collect();
        for (interface, hook) in keys {
            self.detach(&interface, hook);
        }
        self.sockets.clear();
        self.remove_unclaimed(&HashSet::new());
    }

    /// Pinned links of hooks `keep` does not name: removed, and said so.
    pub fn remove_unclaimed(&mut self, keep: &HashSet<(String, Hook)>) {
        for (interface, hook) in bpffs::pinned_hooks(&self.pin_dir) {
            if keep.contains(&(interface.clone(), hook)) {
                continue;
            }
            let Some(pins) = HookPins::of(&self.pin_dir, &interface, hook) else {
                continue;
            };
            if pins.exist() {
                event!(
                    "removing the pinned {} programs of {interface}: no saved session counts there",
                    hook.describe()
                );
            }
            chain::unpin(&pins);
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
