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

pub mod maps;
pub mod plan;
pub mod shape;

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::insn::Insn;
use crate::translate::{Hook, SharedMaps, TailCall, TranslateError, translate_shared};

use maps::{CounterTable, DispatchMap, MapsError, dispatch_entries, table_order};
use plan::Plan;

/// Why a shared program could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// A shared program's code with the maps it reads (none when it counts nothing). A
/// loaded program holds references to its maps: these are for inspection.
#[derive(Debug)]
pub struct SharedProgram {
    pub plan: Plan,
    pub insns: Vec<Insn>,
    pub maps: Option<(DispatchMap, CounterTable)>,
}

impl SharedProgram {
    /// One program for `hook` counting each of `counted` into slot 0 of its own counter
    /// map, filters of one shape evaluated together. `name` names the maps (`NAME_d`,
    /// `NAME_t`; keep it short: the kernel keeps 15 characters); `tc_egress` and `next`
    /// as for [`crate::translate::translate_chained`]. With nothing to count the
    /// program only goes on to `next` (or returns).
    pub fn build(
        name: &str,
        counted: &[(&Program, &CounterMap)],
        hook: Hook,
        tc_egress: bool,
        next: Option<TailCall>,
    ) -> Result<Self, SharedError> {
        let filters: Vec<&Program> = counted.iter().map(|&(program, _)| program).collect();
        let plan = Plan::new(&filters);
        let order = table_order(&plan);
        let mut entry_of = vec![0u32; filters.len()];
        for (entry, &filter) in order.iter().enumerate() {
            entry_of[filter] = entry as u32;
        }
        let maps = match counted.is_empty() {
            true => None,
            false => {
                let maps: Vec<&CounterMap> =
                    order.iter().map(|&filter| counted[filter].1).collect();
                let table = CounterTable::create(&format!("{name}_t"), &maps)?;
                let entries = dispatch_entries(&plan, &filters, |filter| entry_of[filter]);
                let dispatch = DispatchMap::create(&format!("{name}_d"), &entries)?;
                Some((dispatch, table))
            }
        };
        let fds = SharedMaps {
            dispatch_fd: maps.as_ref().map_or(-1, |(d, _)| d.raw_fd()),
            table_fd: maps.as_ref().map_or(-1, |(_, t)| t.raw_fd()),
        };
        let insns = translate_shared(&filters, &plan, hook, tc_egress, fds, next)?;
        Ok(Self { plan, insns, maps })
    }
}
