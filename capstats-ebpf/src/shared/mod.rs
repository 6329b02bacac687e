//! Many filters at the cost of one: filters of one shape evaluated once per packet.
//!
//! A monitoring daemon watches one link with many expressions of a few shapes: each of
//! 200 ports, each customer subnet. Run one after another, they cost a packet each
//! filter's work. Here the filters of one shape that differ only in the constants they
//! compare with form a group ([`plan`]), whose code runs once per packet; where members
//! differ, it looks the packet's value up in a hash map ([`maps`]) that names the one
//! member comparing equal there, and counts that member if the rest of its filter
//! accepts ([`shape`] says when this is exact). A packet then costs what it matches and
//! one look-up per varying comparison it reaches, however many members a group has,
//! as DPF (Engler & Kaashoek, 1996) dispatches many filters on one field with a hash
//! table. Filters that fit no group run alone, as before.
//!
//! The code depends on the plan's shape, not on the members' constants, so a change
//! that keeps the code (a member joins or leaves a group, or changes its constants)
//! is made in the maps alone ([`SharedProgram::update_in_place`]): no program is
//! loaded, and each map update is atomic for the packets that run meanwhile.

pub mod maps;
pub mod plan;
pub mod shape;

use std::collections::{HashMap, HashSet};

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::insn::Insn;
use crate::program::MapBinding;
use crate::translate::{Hook, Placement, SharedMaps, TailCall, TranslateError, translate_shared};

use maps::{CounterTable, DispatchKey, DispatchMap, MapsError, dispatch_entries};
use plan::Plan;

/// Why a shared program could not be generated or changed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("filter {filter} has counter table entry {entry}, which another filter has too")]
    SharedEntry { filter: usize, entry: u32 },
}

/// A shared program's code with the maps it reads (none when it counts nothing), and
/// what the maps hold, so that a later change can be made in them alone.
#[derive(Debug)]
pub struct SharedProgram {
    pub plan: Plan,
    pub insns: Vec<Insn>,
    pub maps: Option<(DispatchMap, CounterTable)>,
    placement: Placement,
    /// The dispatch map's entries.
    dispatch: HashMap<DispatchKey, u32>,
    /// The counter table's entries: the serial of the counter map in each
    /// ([`CounterMap::serial`]).
    table: HashMap<u32, u64>,
}

impl SharedProgram {
    /// One program for `hook` counting each of `counted` into slot 0 of its own counter
    /// map, filters of one shape evaluated together, filter `i` at counter table entry
    /// `i`. See [`SharedProgram::build_at`].
    pub fn build(
        name: &str,
        counted: &[(&Program, &CounterMap)],
        hook: Hook,
        tc_egress: bool,
        next: Option<TailCall>,
    ) -> Result<Self, SharedError> {
        let entries: Vec<u32> = (0..counted.len() as u32).collect();
        let placement = Placement {
            hook,
            tc_egress,
            cooked: None,
            next,
        };
        Self::build_at(name, counted, &entries, placement)
    }

    /// [`SharedProgram::build`] with filter `i` at counter table entry `entries[i]`
    /// (distinct), for `placement`. `name` names the maps (`NAME_d`, `NAME_t`; keep it
    /// short: the kernel keeps 15 characters). The maps get room to grow (twice what
    /// is needed now), for [`SharedProgram::update_in_place`]. With nothing to count
    /// the program only goes on to `next` (or returns).
    pub fn build_at(
        name: &str,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
        placement: Placement,
    ) -> Result<Self, SharedError> {
        let filters: Vec<&Program> = counted.iter().map(|&(program, _)| program).collect();
        let plan = Plan::new_counted(&filters, &counts_of(counted));
        let mut shared = Self {
            plan,
            insns: Vec::new(),
            maps: None,
            placement,
            dispatch: HashMap::new(),
            table: HashMap::new(),
        };
        if let Some(&(_, template)) = counted.first() {
            let most_entry = entries.iter().copied().max().unwrap_or(0);
            let table = CounterTable::create(
                &format!("{name}_t"),
                template,
                room(most_entry as usize + 1, 64),
            )?;
            let keys = dispatch_entries(&shared.plan, &filters, |f| entries[f]);
            let dispatch = DispatchMap::create(&format!("{name}_d"), room(keys.len(), 256))?;
            shared.maps = Some((dispatch, table));
            shared.fill(counted, entries, keys)?;
        }
        shared.insns = shared.translate(&filters, entries)?;
        Ok(shared)
    }

    /// Brings the program to `counted` at `entries` by changing its maps alone, if the
    /// code for them is the code it has and they fit the maps' room: a member joining
    /// or leaving a group, or changing its constants. Returns whether it did; if not,
    /// nothing changed and the caller builds a new program. Entries are made before
    /// the dispatch keys that lead to them, and stale keys go last, so a packet meets
    /// each filter at most once and counts into the right map throughout.
    pub fn update_in_place(
        &mut self,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
    ) -> Result<bool, SharedError> {
        match self.prepare_in_place(counted, entries)? {
            Some(change) => self.apply(change, counted, entries).map(|()| true),
            None => Ok(false),
        }
    }

    /// The first half of [`SharedProgram::update_in_place`], changing nothing: the
    /// change to make in the maps, or none if the code or the maps' room would not do.
    /// A caller that must know every part of a change can be made before making any
    /// (the daemon's chains) applies it later with [`SharedProgram::apply`].
    pub fn prepare_in_place(
        &self,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
    ) -> Result<Option<InPlace>, SharedError> {
        let Some((dispatch, table)) = &self.maps else {
            return Ok(None);
        };
        if counted.is_empty() || entries.iter().any(|&e| e >= table.capacity()) {
            return Ok(None);
        }
        let filters: Vec<&Program> = counted.iter().map(|&(program, _)| program).collect();
        let plan = Plan::new_counted(&filters, &counts_of(counted));
        let keys = dispatch_entries(&plan, &filters, |f| entries[f]);
        if keys.len() > dispatch.capacity() as usize {
            return Ok(None);
        }
        let insns = translate_shared(&filters, entries, &plan, self.placement, self.fds())?;
        Ok((insns == self.insns).then_some(InPlace { plan, keys }))
    }

    /// Makes `change` (from [`SharedProgram::prepare_in_place`] with the same
    /// `counted` and `entries`) in the maps.
    pub fn apply(
        &mut self,
        change: InPlace,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
    ) -> Result<(), SharedError> {
        self.fill(counted, entries, change.keys)?;
        self.plan = change.plan;
        Ok(())
    }

    /// Puts `counted`'s maps at `entries` of the table and `keys` into the dispatch
    /// map, in that order, then removes the keys no longer wanted.
    fn fill(
        &mut self,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
        keys: Vec<(DispatchKey, u32)>,
    ) -> Result<(), SharedError> {
        let Some((dispatch, table)) = &self.maps else {
            return Ok(());
        };
        let mut seen = HashSet::new();
        let mut changed = Vec::new();
        let mut ids = Vec::new();
        for (filter, (&(_, map), &entry)) in counted.iter().zip(entries).enumerate() {
            if !seen.insert(entry) {
                return Err(SharedError::SharedEntry { filter, entry });
            }
            let id = map.serial();
            if self.table.get(&entry) != Some(&id) {
                changed.push((entry, map));
                ids.push((entry, id));
            }
        }
        table.set(&changed)?;
        self.table.extend(ids);
        let wanted: HashMap<DispatchKey, u32> = keys.into_iter().collect();
        let new: Vec<(DispatchKey, u32)> = wanted
            .iter()
            .filter(|&(key, entry)| self.dispatch.get(key) != Some(entry))
            .map(|(&key, &entry)| (key, entry))
            .collect();
        dispatch.update(&new)?;
        let stale: Vec<DispatchKey> = self
            .dispatch
            .keys()
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        dispatch.delete(&stale)?;
        self.dispatch = wanted;
        Ok(())
    }

    /// The references its code reads its maps by ([`SharedProgram::binding`] binds them).
    fn fds(&self) -> SharedMaps {
        SharedMaps::default()
    }

    /// The program's map references bound to its maps, to load it with; a program of
    /// a chain (with a tail call) needs the chain's prog array bound too
    /// ([`crate::insn::MapRef::ProgArray`]).
    pub fn binding(&self) -> MapBinding<'_> {
        let refs = self.fds();
        match &self.maps {
            Some((dispatch, table)) => MapBinding::new()
                .bind(refs.dispatch, dispatch)
                .bind(refs.table, table),
            None => MapBinding::new(),
        }
    }

    fn translate(&self, filters: &[&Program], entries: &[u32]) -> Result<Vec<Insn>, SharedError> {
        Ok(translate_shared(
            filters,
            entries,
            &self.plan,
            self.placement,
            self.fds(),
        )?)
    }
}

/// A change of a shared program's maps that keeps its code
/// ([`SharedProgram::prepare_in_place`]).
#[derive(Debug)]
pub struct InPlace {
    plan: Plan,
    keys: Vec<(DispatchKey, u32)>,
}

/// What each filter counts: its counter map says ([`CounterMap::count`]).
fn counts_of(counted: &[(&Program, &CounterMap)]) -> Vec<crate::translate::Count> {
    counted.iter().map(|&(_, map)| map.count()).collect()
}

/// Room for `needed` entries and as many again, at least `least`, a power of two.
fn room(needed: usize, least: usize) -> u32 {
    (needed * 2).max(least).next_power_of_two() as u32
}
