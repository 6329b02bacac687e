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
pub mod presence;
pub mod shape;

use std::collections::{HashMap, HashSet};

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::insn::Insn;
use crate::program::MapBinding;
use crate::translate::{
    Count, Hook, Placement, SharedMaps, TailCall, TranslateError, translate_shared,
};

use maps::{CounterTable, DispatchKey, DispatchMap, MapsError, dispatch_entries};
use plan::{Item, Plan};
use shape::{Shape, comparisons};

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
///
/// A change is made in the maps alone when every filter that leaves was a group's
/// member and every filter that comes joins a group as it is (same shape and count,
/// its constants equal the group's where the group's do not vary, none of its keys
/// taken). Deciding that costs what the change touches: the program keeps its members
/// by entry and its groups by shape, and never plans its members again. A group whose
/// members all left stays in the code (its look-ups find nothing) until the program is
/// built again.
#[derive(Debug)]
pub struct SharedProgram {
    /// The plan the code was generated from. Its filter numbers are the program's
    /// member slots: after changes in place, slots of members that left are reused
    /// and a group's members are the slots now in it.
    pub plan: Plan,
    pub insns: Vec<Insn>,
    pub maps: Option<(DispatchMap, CounterTable)>,
    placement: Placement,
    /// The dispatch map's entries.
    dispatch: HashMap<DispatchKey, u32>,
    /// The counter table's entries: the serial of the counter map in each
    /// ([`CounterMap::serial`]).
    table: ByEntry<u64>,
    /// The members, by slot (none: a slot free since its member left).
    members: Vec<Option<Member>>,
    free_slots: Vec<usize>,
    /// Member slots by counter table entry.
    by_entry: ByEntry<usize>,
    /// The groups, by number (the dispatch keys' group).
    groups: Vec<GroupCode>,
    /// Group numbers by the shape and count of their members.
    by_shape: HashMap<(Shape, Count), Vec<u16>>,
}

/// A filter counted by a shared program.
#[derive(Debug)]
struct Member {
    program: Program,
    /// The group it is a member of, if any.
    group: Option<u16>,
}

/// What a group's code stands for.
#[derive(Debug)]
struct GroupCode {
    /// Its item in the plan.
    item: usize,
    /// The constants of the code at every comparison point.
    constants: Vec<(usize, u32)>,
    /// The varying points, ascending.
    varying: Vec<usize>,
    /// What its members count.
    count: Count,
}

impl SharedProgram {
    /// One program for `hook` counting each of `counted` into slot 0 of its own counter
    /// map, filters of one shape evaluated together, filter `i` at counter table entry
    /// `i`. See [`SharedProgram::build_at`].
    pub fn build(
        name: &str,
        counted: &[(&Program, &CounterMap)],
        hook: Hook,
        next: Option<TailCall>,
    ) -> Result<Self, SharedError> {
        let entries: Vec<u32> = (0..counted.len() as u32).collect();
        let placement = Placement {
            hook,
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
            table: ByEntry::default(),
            members: Vec::new(),
            free_slots: Vec::new(),
            by_entry: ByEntry::default(),
            groups: Vec::new(),
            by_shape: HashMap::new(),
        };
        shared.index(&filters, entries)?;
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

    /// Records the members and groups of a new program's plan.
    fn index(&mut self, filters: &[&Program], entries: &[u32]) -> Result<(), SharedError> {
        for (filter, (&program, &entry)) in filters.iter().zip(entries).enumerate() {
            if self.by_entry.insert(entry, filter).is_some() {
                return Err(SharedError::SharedEntry { filter, entry });
            }
            self.members.push(Some(Member {
                program: program.clone(),
                group: None,
            }));
        }
        let mut number = 0u16;
        for (item, group) in self.plan.items.iter().enumerate() {
            let Item::Group(group) = group else {
                continue;
            };
            let code = filters[group.members[0]];
            let count = self.plan.count(group.members[0]);
            for &m in &group.members {
                if let Some(member) = self.members[m].as_mut() {
                    member.group = Some(number);
                }
            }
            self.by_shape
                .entry((Shape::of(code), count))
                .or_default()
                .push(number);
            self.groups.push(GroupCode {
                item,
                constants: comparisons(code).collect(),
                varying: group.template.varying.clone(),
                count,
            });
            number += 1;
        }
        Ok(())
    }

    /// The filter counted at table entry `entry`, if any.
    pub fn filter_at(&self, entry: u32) -> Option<&Program> {
        let slot = *self.by_entry.get(&entry)?;
        self.members[slot].as_ref().map(|m| &m.program)
    }

    /// How many filters the program counts.
    pub fn filters(&self) -> usize {
        self.by_entry.len()
    }

    /// A trial of joining filters to this program's groups as they are (see
    /// [`Joins`]).
    pub fn joins(&self) -> Joins<'_> {
        Joins {
            shared: self,
            freed: HashSet::new(),
            taken: HashSet::new(),
        }
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
            Some(change) => self.apply(change).map(|()| true),
            None => Ok(false),
        }
    }

    /// The first half of [`SharedProgram::update_in_place`], changing nothing: the
    /// change to make in the maps, or none if the code or the maps' room would not do.
    /// A caller that must know every part of a change can be made before making any
    /// (the daemon's chains) applies it later with [`SharedProgram::apply`], while the
    /// counter maps of `counted` are still open. Compares each filter with the one its
    /// entry has (no planning); what changed is made as [`SharedProgram::prepare_change`].
    pub fn prepare_in_place(
        &self,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
    ) -> Result<Option<InPlace>, SharedError> {
        let Some((_, table)) = &self.maps else {
            return Ok(None);
        };
        let beyond = entries.iter().max().map_or(0, |&e| e as usize + 1);
        if beyond > table.capacity() as usize {
            // An entry past the table's room: not in place.
            return Ok(None);
        }
        // Entries given, by number: thousands of members are compared per change.
        let mut present = vec![false; beyond];
        let mut stops = Vec::new();
        let mut adds = Vec::new();
        for (filter, (&(program, map), &entry)) in counted.iter().zip(entries).enumerate() {
            if std::mem::replace(&mut present[entry as usize], true) {
                return Err(SharedError::SharedEntry { filter, entry });
            }
            let same = self.by_entry.get(&entry).and_then(|&slot| {
                let member = self.members[slot].as_ref()?;
                Some(member.program == *program && self.table.get(&entry) == Some(&map.serial()))
            });
            match same {
                Some(true) => {}
                Some(false) => {
                    stops.push(entry);
                    adds.push((entry, program, map));
                }
                None => adds.push((entry, program, map)),
            }
        }
        stops.extend(
            self.by_entry
                .keys()
                .filter(|&&e| !present.get(e as usize).copied().unwrap_or(false)),
        );
        self.prepare_change(&stops, &adds)
    }

    /// A change in the maps alone: the filters at entries `stops` leave and each
    /// `(entry, filter, map)` of `adds` comes, or none if the code would change (a
    /// filter alone leaves, or one comes that joins no group as it is) or the maps have
    /// no room. Costs what it touches, not what the program counts. Changes nothing.
    pub fn prepare_change(
        &self,
        stops: &[u32],
        adds: &[(u32, &Program, &CounterMap)],
    ) -> Result<Option<InPlace>, SharedError> {
        let Some((dispatch, table)) = &self.maps else {
            return Ok(None);
        };
        let leaving = stops
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|e| self.by_entry.contains_key(e))
            .count();
        if self.by_entry.len() - leaving + adds.len() == 0 {
            // Nothing left to count: a new program only goes on.
            return Ok(None);
        }
        let mut joins = self.joins();
        let mut stopped = HashSet::new();
        for &entry in stops {
            if !joins.stop(entry) {
                return Ok(None);
            }
            stopped.insert(entry);
        }
        let mut added = Vec::with_capacity(adds.len());
        let mut coming = HashSet::new();
        for (filter, &(entry, program, map)) in adds.iter().enumerate() {
            let taken = self.by_entry.contains_key(&entry) && !stopped.contains(&entry);
            if taken || !coming.insert(entry) {
                return Err(SharedError::SharedEntry { filter, entry });
            }
            if entry >= table.capacity() {
                return Ok(None);
            }
            let Some((group, keys)) = joins.join(program, map.count()) else {
                return Ok(None);
            };
            added.push(Added {
                entry,
                program: program.clone(),
                fd: map.raw_fd(),
                id: map.id(),
                serial: map.serial(),
                group,
                keys,
            });
        }
        // New keys go in before stale ones go: the map holds both meanwhile.
        let fresh = joins
            .taken
            .iter()
            .filter(|key| !self.dispatch.contains_key(key))
            .count();
        if self.dispatch.len() + fresh > dispatch.capacity() as usize {
            return Ok(None);
        }
        Ok(Some(InPlace {
            stops: stops.to_vec(),
            freed: joins.freed,
            added,
        }))
    }

    /// Makes `change` (from [`SharedProgram::prepare_in_place`] or
    /// [`SharedProgram::prepare_change`]) in the maps: keys that lead to an entry about
    /// to hold another map go first (and the programs that may have found them end:
    /// an RCU grace period), then the table's new entries (seen by every
    /// program when [`maps::CounterTable::set_fds`] returns), the new keys, and the stale
    /// keys last.
    pub fn apply(&mut self, change: InPlace) -> Result<(), SharedError> {
        let Some((dispatch, table)) = &self.maps else {
            return Ok(());
        };
        let InPlace {
            stops,
            freed,
            added,
        } = change;
        let new_keys: HashMap<DispatchKey, u32> = added
            .iter()
            .flat_map(|a| a.keys.iter().map(|&key| (key, a.entry)))
            .collect();
        let repointed: HashSet<u32> = added
            .iter()
            .filter(|a| self.table.get(&a.entry) != Some(&a.serial))
            .map(|a| a.entry)
            .collect();
        let (early, late): (Vec<DispatchKey>, Vec<DispatchKey>) = freed
            .into_iter()
            .filter(|key| !new_keys.contains_key(key))
            .partition(|key| {
                self.dispatch
                    .get(key)
                    .is_some_and(|entry| repointed.contains(entry))
            });
        dispatch.delete(&early)?;
        for key in &early {
            self.dispatch.remove(key);
        }
        if !early.is_empty() {
            // A packet that found one of those keys may still be counting through its
            // entry: it ends before the entry holds another map. (A kernel that
            // refuses the wait, with `nohz_full` CPUs, goes on as before: a packet
            // there would have to outlast the writes below.)
            let _ = crate::sys::rcu::wait_for_running_programs();
        }
        let fds: Vec<(u32, i32, u32)> = added
            .iter()
            .filter(|a| repointed.contains(&a.entry))
            .map(|a| (a.entry, a.fd, a.id))
            .collect();
        table.set_fds(&fds)?;
        self.table.extend(added.iter().map(|a| (a.entry, a.serial)));
        let update: Vec<(DispatchKey, u32)> = new_keys
            .iter()
            .filter(|&(key, entry)| self.dispatch.get(key) != Some(entry))
            .map(|(&key, &entry)| (key, entry))
            .collect();
        dispatch.update(&update)?;
        self.dispatch.extend(update);
        dispatch.delete(&late)?;
        for key in &late {
            self.dispatch.remove(key);
        }
        for entry in stops {
            let Some(slot) = self.by_entry.remove(&entry) else {
                continue;
            };
            if let Some(Member {
                group: Some(group), ..
            }) = self.members[slot].take()
            {
                let item = self.groups[group as usize].item;
                if let Item::Group(g) = &mut self.plan.items[item] {
                    g.members.retain(|&m| m != slot);
                }
            }
            self.free_slots.push(slot);
        }
        for a in added {
            let count = self.groups[a.group as usize].count;
            let slot = match self.free_slots.pop() {
                Some(slot) => slot,
                None => {
                    self.members.push(None);
                    self.plan.counts.push(count);
                    self.members.len() - 1
                }
            };
            if let Some(c) = self.plan.counts.get_mut(slot) {
                *c = count;
            }
            let item = self.groups[a.group as usize].item;
            if let Item::Group(g) = &mut self.plan.items[item] {
                g.members.push(slot);
            }
            self.members[slot] = Some(Member {
                program: a.program,
                group: Some(a.group),
            });
            self.by_entry.insert(a.entry, slot);
        }
        Ok(())
    }

    /// Puts `counted`'s maps at `entries` of the table and `keys` into the dispatch
    /// map, in that order (a new program's).
    fn fill(
        &mut self,
        counted: &[(&Program, &CounterMap)],
        entries: &[u32],
        keys: Vec<(DispatchKey, u32)>,
    ) -> Result<(), SharedError> {
        let Some((dispatch, table)) = &self.maps else {
            return Ok(());
        };
        let changed: Vec<(u32, &CounterMap)> = counted
            .iter()
            .zip(entries)
            .map(|(&(_, map), &entry)| (entry, map))
            .collect();
        table.set(&changed)?;
        self.table
            .extend(changed.iter().map(|&(entry, map)| (entry, map.serial())));
        dispatch.update(&keys)?;
        self.dispatch = keys.into_iter().collect();
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
                .bind(refs.presence, dispatch.presence())
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

/// Filters joining a shared program's groups as they are, and members leaving them,
/// tried without changing the program: what a change in its maps alone needs. Each
/// step costs what it touches.
pub struct Joins<'a> {
    shared: &'a SharedProgram,
    /// Keys of members that left.
    freed: HashSet<DispatchKey>,
    /// Keys of filters that joined.
    taken: HashSet<DispatchKey>,
}

impl Joins<'_> {
    /// The member at `entry` leaves; false if that changes the code (it is a filter
    /// alone). An entry no member has leaves nothing.
    pub fn stop(&mut self, entry: u32) -> bool {
        let Some(&slot) = self.shared.by_entry.get(&entry) else {
            return true;
        };
        let Some(member) = self.shared.members[slot].as_ref() else {
            return true;
        };
        let Some(group) = member.group else {
            return false;
        };
        let keys = self.keys(group, &member.program);
        for key in keys.into_iter().flatten() {
            self.taken.remove(&key);
            self.freed.insert(key);
        }
        true
    }

    /// `program`, counting `count`, joins the first group it fits as the group is:
    /// its number and the filter's dispatch keys; none if it fits no group.
    pub fn join(&mut self, program: &Program, count: Count) -> Option<(u16, Vec<DispatchKey>)> {
        let candidates = self.shared.by_shape.get(&(Shape::of(program), count))?;
        for &group in candidates {
            let Some(keys) = self.keys(group, program) else {
                continue;
            };
            let free = |key: &DispatchKey| {
                !self.taken.contains(key)
                    && (!self.shared.dispatch.contains_key(key) || self.freed.contains(key))
            };
            if keys.is_empty() || !keys.iter().all(free) {
                continue;
            }
            for key in &keys {
                self.freed.remove(key);
                self.taken.insert(*key);
            }
            return Some((group, keys));
        }
        None
    }

    /// `program`'s dispatch keys in group `group`, if it is of the group's code: equal
    /// to it wherever the group's members do not vary.
    fn keys(&self, group: u16, program: &Program) -> Option<Vec<DispatchKey>> {
        let code = &self.shared.groups[group as usize];
        let mut keys = Vec::with_capacity(code.varying.len());
        let mut constants = comparisons(program);
        for &(pc, k) in &code.constants {
            let (at, value) = constants.next()?;
            if at != pc {
                return None;
            }
            if code.varying.binary_search(&pc).is_ok() {
                keys.push(DispatchKey {
                    group,
                    pc: pc as u16,
                    value,
                });
            } else if value != k {
                return None;
            }
        }
        constants.next().is_none().then_some(keys)
    }
}

/// A map walked or looked up for every member per change (4,096 at the most; here by
/// counter table entry, in the daemon's layout by session name): hashed with
/// foldhash, not std's SipHash, which was a fifth of a change at 4,096 sessions.
/// Seeded per process; no key comes from outside the daemon's own users.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set, as [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A map by counter table entry.
type ByEntry<V> = FastMap<u32, V>;

/// A change of a shared program's maps that keeps its code
/// ([`SharedProgram::prepare_in_place`], [`SharedProgram::prepare_change`]). Holds the
/// counter maps' descriptors: apply it while they are open.
#[derive(Debug)]
pub struct InPlace {
    stops: Vec<u32>,
    freed: HashSet<DispatchKey>,
    added: Vec<Added>,
}

/// A filter joining a group in place.
#[derive(Debug)]
struct Added {
    entry: u32,
    program: Program,
    fd: i32,
    /// The kernel's id of the map behind `fd`.
    id: u32,
    serial: u64,
    group: u16,
    keys: Vec<DispatchKey>,
}

/// What each filter counts: its counter map says ([`CounterMap::count`]).
fn counts_of(counted: &[(&Program, &CounterMap)]) -> Vec<Count> {
    counted.iter().map(|&(_, map)| map.count()).collect()
}

/// Room for `needed` entries and as many again, at least `least`, a power of two.
fn room(needed: usize, least: usize) -> u32 {
    (needed * 2).max(least).next_power_of_two() as u32
}
