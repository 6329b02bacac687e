//! Which filters of a program are evaluated together: the plan of a shared program.
//!
//! Filters go, in the order given, into the first group of their shape they fit
//! (same shape; the group's code stays exact with the points where the newcomer
//! differs varying too; no two members with one constant at one varying point, so a
//! look-up names one member). A group of one is a filter evaluated alone, as before.
//! Pure: no kernel objects, so a plan can be built, printed and tested as data.

use std::collections::{HashMap, HashSet};

use crate::cbpf::Program;

use super::shape::{Shape, Template, comparisons};

/// Filters of one shape evaluated once per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Indices of the member filters, in the order given; the first one's program is
    /// the code (its constants stand where nothing varies).
    pub members: Vec<usize>,
    pub template: Template,
}

/// What a shared program evaluates, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One filter, evaluated alone.
    Single(usize),
    Group(Group),
}

/// The items of a program: every filter given is in exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub items: Vec<Item>,
}

/// A group being formed.
struct Forming {
    members: Vec<usize>,
    /// The first member's comparison constants, by point.
    first: Vec<(usize, u32)>,
    varying: Vec<usize>,
    /// (point, constant) pairs taken at the varying points.
    taken: HashSet<(usize, u32)>,
    template: Option<Template>,
}

impl Plan {
    /// Groups `filters` (see the module's text).
    pub fn new(filters: &[&Program]) -> Plan {
        let mut forming: Vec<Forming> = Vec::new();
        let mut by_shape: HashMap<Shape, Vec<usize>> = HashMap::new();
        for (filter, program) in filters.iter().enumerate() {
            let candidates = by_shape.entry(Shape::of(program)).or_default();
            let joined = candidates
                .iter()
                .any(|&g| try_join(&mut forming[g], filters, filter));
            if !joined {
                candidates.push(forming.len());
                forming.push(Forming {
                    members: vec![filter],
                    first: comparisons(program).collect(),
                    varying: Vec::new(),
                    taken: HashSet::new(),
                    template: None,
                });
            }
        }
        // Items in the order of their first member.
        let items = forming
            .into_iter()
            .map(|group| match group.template {
                Some(template) if group.members.len() > 1 => Item::Group(Group {
                    members: group.members,
                    template,
                }),
                _ => Item::Single(group.members[0]),
            })
            .collect();
        Plan { items }
    }

    /// How many filters share their evaluation with others.
    pub fn grouped(&self) -> usize {
        self.groups().map(|g| g.members.len()).sum()
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.items.iter().filter_map(|item| match item {
            Item::Group(group) => Some(group),
            Item::Single(_) => None,
        })
    }
}

/// Adds `filter` to `group` if the group stays exact (see the module's text).
fn try_join(group: &mut Forming, filters: &[&Program], filter: usize) -> bool {
    let program = filters[filter];
    let constants: Vec<(usize, u32)> = comparisons(program).collect();
    debug_assert_eq!(constants.len(), group.first.len(), "one shape");
    let mut varying = group.varying.clone();
    for (&(pc, k), &(_, first)) in constants.iter().zip(&group.first) {
        if k != first && !varying.contains(&pc) {
            varying.push(pc);
        }
    }
    varying.sort_unstable();
    if varying.len() > group.varying.len() && group.members.len() > 1 {
        // A point the members so far agree on would vary: they would all share its
        // constant, and a look-up could not tell them apart.
        return false;
    }
    let keys = |constants: &[(usize, u32)]| -> Vec<(usize, u32)> {
        constants
            .iter()
            .filter(|(pc, _)| varying.binary_search(pc).is_ok())
            .copied()
            .collect()
    };
    let new_keys = keys(&constants);
    // The first member's keys enter when its points start to vary.
    let first_keys = match varying == group.varying {
        true => Vec::new(),
        false => keys(&group.first),
    };
    let clash = |key: &(usize, u32)| group.taken.contains(key) || first_keys.contains(key);
    if new_keys.is_empty() || new_keys.iter().any(clash) {
        return false;
    }
    let template = match varying == group.varying {
        true => group.template.clone(),
        false => Template::analyse(filters[group.members[0]], &varying).ok(),
    };
    let Some(template) = template else {
        return false;
    };
    group.taken.extend(first_keys);
    group.taken.extend(new_keys);
    group.varying = varying;
    group.members.push(filter);
    group.template = Some(template);
    true
}
