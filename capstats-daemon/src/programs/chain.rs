//! The chain of programs on an interface's tc or XDP hook: chunk 0's program on the
//! link, chunk `k`'s in entry `k` of the chain's prog array, each ending with a tail
//! call to the next (`capstats_ebpf::chain`). Made afresh ([`new_chain`]), or brought
//! to a new set of sessions by the loop of [`super::swap`] ([`update`]).

use std::fs;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use capstats_common::hook::{Hook, XdpMode};
use capstats_ebpf::chain::{ProgArray, build_chunk};
use capstats_ebpf::errors::with_causes;
use capstats_ebpf::insn::MapRef;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::SharedError;

use super::layout::{self, Laid, Wanted};
use super::swap::{self, Counting, Places, filters_of};
use super::{Counted, FastMap, failed, maps_name, program_name, tc, xdp};
use crate::bpffs::HookPins;
use crate::log::event;
use crate::session::SessionError;

/// What holds an interface's tc or XDP program in the kernel: a link, pinned.
#[derive(Debug)]
pub struct Linked {
    pub link: FdLink,
    /// XDP: how the program runs.
    pub mode: Option<XdpMode>,
}

/// The chain of programs on a tc or XDP hook.
#[derive(Debug)]
pub struct Installed {
    /// The interface's index when attached: another index means a new interface.
    pub ifindex: u32,
    /// None only after a failed swap of chunk 0, which loses it: the chain is then
    /// dropped (the kernel keeps the old one, taken back from the pins next time).
    linked: Option<Linked>,
    /// Our reference to the chain's prog array (pinned too): its entries go when the
    /// last reference to it does.
    chain: ProgArray,
    /// Chunk `k`'s program and the sessions it counts; a chunk whose sessions all
    /// stopped while later chunks still count only passes packets on.
    chunks: Vec<Counting>,
}

impl Installed {
    /// XDP: how the program runs.
    pub fn mode(&self) -> Option<XdpMode> {
        self.linked.as_ref().and_then(|l| l.mode)
    }
}

/// The sessions of `counted` as the layout sees them.
fn wanted<'a>(counted: &[Counted<'a>]) -> Vec<Wanted<'a>> {
    counted
        .iter()
        .map(|&(name, program, map)| (name, program, map.count()))
        .collect()
}

/// The chain's layout: chunks, [`layout::chain`].
fn chain_layout(
    interface: &str,
    hook: Hook,
    old: &[Laid<'_>],
    wanted: &[Wanted<'_>],
) -> Result<Vec<Vec<String>>, SessionError> {
    layout::chain(old, wanted, hook.describe()).map_err(|e| failed(interface, hook, e))
}

/// A chain made afresh for `counted`: a new prog array and every chunk's program,
/// chunk 0 swapped onto the link a previous daemon pinned, or attached. The new
/// prog array replaces the pinned one once the new chunk 0 runs (the old array's
/// entries go with its pin). On error the kernel keeps what it had.
pub fn new_chain(
    interface: &str,
    hook: Hook,
    index: u32,
    pins: &HookPins,
    counted: &[Counted<'_>],
) -> Result<Installed, SessionError> {
    let plan = chain_layout(interface, hook, &[], &wanted(counted))?;
    let chain = ProgArray::create(program_name(hook)).map_err(|e| failed(interface, hook, e))?;
    let by_name: FastMap<&str, Counted<'_>> = counted.iter().map(|&c| (c.0, c)).collect();
    let mut chunks = Vec::with_capacity(plan.len());
    for (k, members) in plan.into_iter().enumerate() {
        let entries = layout::entries(None, &members);
        chunks.push(generate_chunk(
            interface, hook, &by_name, members, entries, &chain, k,
        )?);
    }
    for (k, chunk) in chunks.iter().enumerate().skip(1) {
        chain
            .set(k as u32, &chunk.program)
            .map_err(|e| failed(interface, hook, e))?;
    }
    // Pinned under a name of its own until chunk 0 refers to it.
    let (pending, pin) = (pins.chain_pending(), pins.chain());
    let dir = pins.dir();
    pins.create_dir()
        .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))?;
    let _ = fs::remove_file(&pending);
    chain
        .pin(&pending)
        .map_err(|e| failed(interface, hook, e))?;
    let head = &chunks[0].program;
    let linked = match taken_back(interface, hook, pins) {
        // A pinned link that cannot be opened now (too few descriptors) still
        // counts: attaching another would count twice, unpinning it lose the gap.
        Err(e) => Err(e),
        Ok(Some(linked)) => match swap_link(interface, hook, head, linked) {
            Ok(linked) => Ok(linked),
            Err(e) => {
                // A link of an interface that is gone (the name now belongs to
                // another), or one that cannot be updated: start afresh.
                event!(
                    "not using the pinned {} link of {interface}: {e}",
                    hook.describe()
                );
                unpin(pins);
                pins.create_dir()
                    .map_err(|e| failed(interface, hook, format!("{}: {e}", dir.display())))
                    .and_then(|()| chain.pin(&pending).map_err(|e| failed(interface, hook, e)))
                    .and_then(|()| attach(interface, hook, head, pins))
            }
        },
        Ok(None) => attach(interface, hook, head, pins),
    };
    let linked = match linked {
        Ok(linked) => linked,
        Err(e) => {
            // Nothing of ours stays: the array's pin, and directories left empty.
            let _ = fs::remove_file(&pending);
            pins.remove_empty_dirs();
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
        linked: Some(linked),
        chain,
        chunks,
    })
}

/// `installed` brought to `counted` ([`swap::resync`]): only chunks whose sessions or
/// filters changed change, in their maps alone where their code stays the same, else
/// with a new program: chunk 0 on the link (`BPF_LINK_UPDATE`), chunk `k` in entry `k`
/// of the prog array; chunks emptied at the end go. Returns what is installed after,
/// with the error if any; none after a failed swap of chunk 0 (the kernel keeps the
/// old chain, taken back from the pins next time).
pub fn update(
    interface: &str,
    hook: Hook,
    installed: Installed,
    counted: &[Counted<'_>],
) -> (Option<Installed>, Result<(), SessionError>) {
    let mut change = Change {
        interface,
        hook,
        installed,
    };
    let result = swap::resync(&mut change, counted);
    let installed = change.installed;
    (installed.linked.is_some().then_some(installed), result)
}

/// A chain being changed.
struct Change<'i> {
    interface: &'i str,
    hook: Hook,
    installed: Installed,
}

impl Places for Change<'_> {
    const STOP_AT_ERROR: bool = true;

    fn countings(&self) -> Vec<&Counting> {
        self.installed.chunks.iter().collect()
    }

    fn layout(
        &self,
        old: &[Laid<'_>],
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<Vec<String>>, SessionError> {
        chain_layout(self.interface, self.hook, old, wanted)
    }

    fn closes_empty(&self) -> bool {
        false
    }

    fn generate(
        &self,
        k: usize,
        wanted: &FastMap<&str, Counted<'_>>,
        members: Vec<String>,
        entries: Vec<u32>,
    ) -> Result<Counting, SessionError> {
        let chain = &self.installed.chain;
        generate_chunk(
            self.interface,
            self.hook,
            wanted,
            members,
            entries,
            chain,
            k,
        )
    }

    fn counting_mut(&mut self, k: usize) -> &mut Counting {
        &mut self.installed.chunks[k]
    }

    /// Chunk 0 on the link; chunk `k` in entry `k`, atomic per entry (an entry that
    /// cannot be set keeps its program).
    fn put(&mut self, k: usize, counting: Counting) -> Result<(), SessionError> {
        let installed = &mut self.installed;
        if k == 0 {
            let Some(linked) = installed.linked.take() else {
                unreachable!("a chain without its link is dropped at once");
            };
            let linked = swap_link(self.interface, self.hook, &counting.program, linked)?;
            installed.linked = Some(linked);
        } else {
            installed
                .chain
                .set(k as u32, &counting.program)
                .map_err(|e| failed(self.interface, self.hook, e))?;
        }
        match installed.chunks.get_mut(k) {
            Some(old) => *old = counting,
            None => installed.chunks.push(counting),
        }
        Ok(())
    }

    fn close(&mut self, _k: usize) {
        unreachable!("a chain keeps its empty chunks (closes_empty)");
    }

    /// Their entries emptied, last first.
    fn truncate(&mut self, len: usize) -> Result<(), SessionError> {
        while self.installed.chunks.len() > len {
            let k = self.installed.chunks.len() - 1;
            self.installed
                .chain
                .clear(k as u32)
                .map_err(|e| failed(self.interface, self.hook, e))?;
            self.installed.chunks.pop();
        }
        Ok(())
    }

    fn failed(&self, error: SharedError) -> SessionError {
        failed(self.interface, self.hook, error)
    }
}

/// Program `k` of `hook`'s chain, counting the sessions `members` (named in `wanted`)
/// at table entries `entries`.
fn generate_chunk(
    interface: &str,
    hook: Hook,
    wanted: &FastMap<&str, Counted<'_>>,
    members: Vec<String>,
    entries: Vec<u32>,
    chain: &ProgArray,
    k: usize,
) -> Result<Counting, SessionError> {
    let filters = filters_of(wanted, &members);
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

/// Attaches `program` to `hook` of `interface`, pinning the link.
fn attach(
    interface: &str,
    hook: Hook,
    program: &LoadedProgram,
    pins: &HookPins,
) -> Result<Linked, SessionError> {
    if hook == Hook::Xdp {
        let (link, mode) = xdp::attach(interface, program, pins)?;
        Ok(Linked {
            link,
            mode: Some(mode),
        })
    } else {
        let link = tc::attach(interface, hook, program, pins)?;
        Ok(Linked { link, mode: None })
    }
}

/// Puts `program` on `linked`'s link, atomically (`BPF_LINK_UPDATE`).
fn swap_link(
    interface: &str,
    hook: Hook,
    program: &LoadedProgram,
    Linked { link, mode }: Linked,
) -> Result<Linked, SessionError> {
    let link = if hook == Hook::Xdp {
        xdp::swap(interface, link, program)?
    } else {
        tc::swap(interface, hook, link, program)?
    };
    Ok(Linked { link, mode })
}

/// A link a previous daemon pinned for `hook` of `interface`. One that is there but
/// cannot be opened is an error, and stays pinned (and counting).
fn taken_back(
    interface: &str,
    hook: Hook,
    pins: &HookPins,
) -> Result<Option<Linked>, SessionError> {
    for (path, mode) in pins.links() {
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

/// Removes the hook's pinned link(s) and prog array; the kernel detaches a link once
/// nothing holds it, and empties a prog array.
pub fn unpin(pins: &HookPins) {
    for (path, _) in pins.links() {
        if path.exists() {
            detach_now(&path);
        }
        let _ = fs::remove_file(path);
    }
    let _ = fs::remove_file(pins.chain_pending());
    let _ = fs::remove_file(pins.chain());
    // Empty directories go; one still holding the other direction's link stays.
    pins.remove_empty_dirs();
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
