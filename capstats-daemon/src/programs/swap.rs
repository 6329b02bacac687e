//! Plan, regenerate what changed, swap: how the programs of one interface's hook come
//! to count a new set of sessions, written once for socket groups and tc/XDP chains.
//!
//! The layout says which program counts whom ([`super::layout`]). Each program whose
//! sessions or filters changed is then changed in its maps alone where its code stays
//! the same, else generated again. Every new program is loaded and every change of
//! maps prepared before anything is changed, so a refused one leaves everything as it
//! was; then each is swapped in atomically, where it runs ([`Places::put`]).

use capstats_ebpf::cbpf::Program;
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::{InPlace, SharedError, SharedProgram};

use super::layout::{self, Laid, Wanted};
use super::{Counted, FastMap};
use crate::session::SessionError;

/// What one program counts: its sessions, their filters and counter table entries,
/// and the shared program it was built as (whose maps a change may alter alone).
#[derive(Debug)]
pub struct Counting {
    /// The sessions, in the order of the program. Their filters as the program has
    /// them are its shared program's ([`SharedProgram::filter_at`]): a program whose
    /// sessions and filters are unchanged is kept as it is.
    pub members: Vec<String>,
    /// Their entries in the program's counter table, stable for a session's life.
    pub entries: Vec<u32>,
    pub shared: SharedProgram,
    /// Kept until it is replaced (the socket, link or prog array holds it anyway).
    pub program: LoadedProgram,
}

impl Counting {
    /// How the layout sees it.
    pub fn laid(&self) -> Laid<'_> {
        Laid {
            members: &self.members,
            entries: &self.entries,
            shared: &self.shared,
        }
    }
}

/// How a program comes to count a new set of sessions.
pub enum Work {
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

/// The programs of one interface's hook, as places the loop changes: place `k` is
/// the `k`th socket of the interface, or program `k` of a chain.
pub trait Places {
    /// A failure stops the change there (a chain's programs stay in order), or only
    /// leaves that place as it was (sockets are independent of each other).
    const STOP_AT_ERROR: bool;

    /// What each place counts now.
    fn countings(&self) -> Vec<&Counting>;
    /// Who goes where ([`layout`]).
    fn layout(
        &self,
        old: &[Laid<'_>],
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<Vec<String>>, SessionError>;
    /// Whether a place laid out with no session closes (a socket), rather than keeps
    /// a program that only passes packets on (a chain's).
    fn closes_empty(&self) -> bool;
    /// The program for place `k` counting `members` (named in `wanted`) at table
    /// entries `entries`, loaded.
    fn generate(
        &self,
        k: usize,
        wanted: &FastMap<&str, Counted<'_>>,
        members: Vec<String>,
        entries: Vec<u32>,
    ) -> Result<Counting, SessionError>;
    /// Place `k`'s program, for a change in its maps.
    fn counting_mut(&mut self, k: usize) -> &mut Counting;
    /// Swaps `counting` in at place `k` (a new place at the end); on error place `k`
    /// keeps what it had.
    fn put(&mut self, k: usize, counting: Counting) -> Result<(), SessionError>;
    /// Place `k` counts no one any more and closes.
    fn close(&mut self, k: usize);
    /// Places from `len` on are left out of the layout: they go, last first.
    fn truncate(&mut self, len: usize) -> Result<(), SessionError>;
    /// An error of a change in maps, said for the hook.
    fn failed(&self, error: SharedError) -> SessionError;
}

/// Brings `places` to count `counted`: plan, regenerate what changed, swap. Nothing
/// changes when a program cannot be generated or a change prepared; a failed swap
/// keeps what its place had (and, with [`Places::STOP_AT_ERROR`], every later
/// place's), and is the error returned.
pub fn resync<P: Places>(places: &mut P, counted: &[Counted<'_>]) -> Result<(), SessionError> {
    let wanted: FastMap<&str, Counted<'_>> = counted.iter().map(|&c| (c.0, c)).collect();
    let laid_out: Vec<Wanted<'_>> = counted
        .iter()
        .map(|&(name, program, map)| (name, program, map.count()))
        .collect();
    let (plan, works) = {
        let old = places.countings();
        let laid: Vec<Laid<'_>> = old.iter().map(|c| c.laid()).collect();
        let plan = places.layout(&laid, &laid_out)?;
        let mut works = Vec::with_capacity(plan.len());
        for (k, members) in plan.iter().enumerate() {
            if members.is_empty() && places.closes_empty() {
                works.push(None);
                continue;
            }
            let work = plan_work(old.get(k).copied(), members, &wanted, |members, entries| {
                places.generate(k, &wanted, members, entries)
            })?;
            works.push(Some(work));
        }
        (plan.len(), works)
    };
    let mut first_error = None;
    for (k, work) in works.into_iter().enumerate() {
        let done = match work {
            None => {
                places.close(k);
                Ok(())
            }
            Some(Work::Keep) => Ok(()),
            Some(Work::InPlace {
                members,
                entries,
                change,
            }) => apply(places.counting_mut(k), members, entries, change)
                .map_err(|e| places.failed(e)),
            Some(Work::Load(counting)) => places.put(k, *counting),
        };
        if let Err(e) = done {
            first_error.get_or_insert(e);
            if P::STOP_AT_ERROR {
                break;
            }
        }
    }
    if first_error.is_none() {
        places.truncate(plan)?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How the program `old` (none: there is none yet) comes to count `members`: kept,
/// changed in its maps alone, or generated anew with `generate`.
fn plan_work(
    old: Option<&Counting>,
    members: &[String],
    wanted: &FastMap<&str, Counted<'_>>,
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
    let entries = layout::entries(
        old.map(|c| (c.members.as_slice(), c.entries.as_slice())),
        members,
    );
    if let Some(old) = old {
        let filters = filters_of(wanted, members);
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
) -> Result<(), SharedError> {
    counting.shared.apply(change)?;
    counting.members = members;
    counting.entries = entries;
    Ok(())
}

/// The filters and counter maps of `members`, in order.
pub fn filters_of<'a>(
    wanted: &FastMap<&str, Counted<'a>>,
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
