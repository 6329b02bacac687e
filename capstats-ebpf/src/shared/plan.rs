//! Which filters of a program are evaluated together: the plan of a shared program.
//!
//! Filters go, in the order given, into the first group of their shape they fit
//! (same shape; the group's code stays exact with the points where the newcomer
//! differs varying too; no two members with one constant at one varying point, so a
//! look-up names one member). A group of one is a filter evaluated alone, as before.
//! Pure: no kernel objects, so a plan can be built, printed and tested as data.

use std::collections::{HashMap, HashSet};

use crate::cbpf::Program;
use crate::translate::Count;

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
    /// What each filter counts (none given: [`Count::Stack`]). Filters of different
    /// counts are never one group.
    pub counts: Vec<Count>,
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

/// A plan built one filter at a time, so that a caller can ask whether one more
/// filter still fits a program of at most so many items (the daemon's chains).
pub struct Planner<'a> {
    filters: Vec<&'a Program>,
    counts: Vec<Count>,
    forming: Vec<Forming>,
    by_shape: HashMap<(Shape, Count), Vec<usize>>,
}

impl<'a> Planner<'a> {
    pub fn new() -> Self {
        Self {
            filters: Vec::new(),
            counts: Vec::new(),
            forming: Vec::new(),
            by_shape: HashMap::new(),
        }
    }

    /// The items so far: groups and filters alone.
    pub fn items(&self) -> usize {
        self.forming.len()
    }

    /// Adds `program` as the next filter.
    pub fn add(&mut self, program: &'a Program) {
        self.add_within(program, usize::MAX);
    }

    /// Adds `program` as the next filter if it joins a group or the items stay at most
    /// `most_items`; otherwise changes nothing and says so.
    pub fn add_within(&mut self, program: &'a Program, most_items: usize) -> bool {
        self.add_counted_within(program, Count::Stack, most_items)
    }

    /// [`Planner::add_within`] for a filter counting `count`: it joins only groups of
    /// filters counting the same.
    pub fn add_counted_within(
        &mut self,
        program: &'a Program,
        count: Count,
        most_items: usize,
    ) -> bool {
        let filter = self.filters.len();
        self.filters.push(program);
        self.counts.push(count);
        let candidates = self
            .by_shape
            .entry((Shape::of(program), count))
            .or_default();
        let joined = candidates
            .iter()
            .any(|&g| try_join(&mut self.forming[g], &self.filters, filter));
        if joined {
            return true;
        }
        if self.forming.len() >= most_items {
            self.filters.pop();
            self.counts.pop();
            return false;
        }
        candidates.push(self.forming.len());
        self.forming.push(Forming {
            members: vec![filter],
            first: comparisons(program).collect(),
            varying: Vec::new(),
            taken: HashSet::new(),
            template: None,
        });
        true
    }

    /// The plan: items in the order of their first member.
    pub fn finish(self) -> Plan {
        let items = self
            .forming
            .into_iter()
            .map(|group| match group.template {
                Some(template) if group.members.len() > 1 => Item::Group(Group {
                    members: group.members,
                    template,
                }),
                _ => Item::Single(group.members[0]),
            })
            .collect();
        Plan {
            items,
            counts: self.counts,
        }
    }
}

impl Default for Planner<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Plan {
    /// Groups `filters` (see the module's text).
    pub fn new(filters: &[&Program]) -> Plan {
        let mut planner = Planner::new();
        for program in filters {
            planner.add(program);
        }
        planner.finish()
    }

    /// [`Plan::new`] for filters counting `counts` (one each).
    pub fn new_counted(filters: &[&Program], counts: &[Count]) -> Plan {
        let mut planner = Planner::new();
        for (program, &count) in filters.iter().zip(counts) {
            planner.add_counted_within(program, count, usize::MAX);
        }
        planner.finish()
    }

    /// What filter `filter` counts.
    pub fn count(&self, filter: usize) -> Count {
        self.counts.get(filter).copied().unwrap_or_default()
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
    if varying != group.varying {
        // The code changes: analysed again (a member joining where the others already
        // differ keeps the analysis it has).
        let Ok(template) = Template::analyse(filters[group.members[0]], &varying) else {
            return false;
        };
        group.template = Some(template);
        group.varying = varying;
    }
    group.taken.extend(first_keys);
    group.taken.extend(new_keys);
    group.members.push(filter);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;

    fn compile(expressions: &[&str]) -> Vec<Filter> {
        expressions
            .iter()
            .map(|e| Filter::for_linktype(pcap::Linktype::ETHERNET, e, 0).unwrap())
            .collect()
    }

    #[test]
    fn wire_and_stack_filters_are_never_one_group() {
        let filters = compile(&["udp port 1", "udp port 2", "udp port 3", "udp port 4"]);
        let programs: Vec<&Program> = filters.iter().map(Filter::program).collect();
        let counts = [Count::Stack, Count::Wire, Count::Stack, Count::Wire];
        let plan = Plan::new_counted(&programs, &counts);
        let items: Vec<Vec<usize>> = plan
            .items
            .iter()
            .map(|item| match item {
                Item::Single(f) => vec![*f],
                Item::Group(g) => g.members.clone(),
            })
            .collect();
        assert_eq!(items, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!((0..4).map(|f| plan.count(f)).collect::<Vec<_>>(), counts);
        // Stack alone: the plan of before, filter for filter.
        assert_eq!(
            Plan::new_counted(&programs, &[Count::Stack; 4]).items,
            Plan::new(&programs).items
        );
    }

    /// The plan of `expressions` as lists of expressions: a group's members, or one.
    fn plan(expressions: &[&str]) -> Vec<Vec<String>> {
        let filters = compile(expressions);
        let programs: Vec<&Program> = filters.iter().map(Filter::program).collect();
        Plan::new(&programs)
            .items
            .iter()
            .map(|item| match item {
                Item::Single(f) => vec![expressions[*f].to_owned()],
                Item::Group(g) => g.members.iter().map(|&m| expressions[m].into()).collect(),
            })
            .collect()
    }

    #[test]
    fn one_shape_with_distinct_constants_is_one_group() {
        let expressions: Vec<String> = (0..256).map(|p| format!("udp and dst port {p}")).collect();
        let refs: Vec<&str> = expressions.iter().map(String::as_str).collect();
        assert_eq!(plan(&refs), vec![expressions.clone()]);
    }

    #[test]
    fn duplicates_go_to_another_group() {
        let got = plan(&[
            "host 10.0.0.1",
            "host 10.0.0.2",
            "host 10.0.0.1",
            "host 10.0.0.1",
        ]);
        assert_eq!(
            got,
            vec![
                vec!["host 10.0.0.1", "host 10.0.0.2"],
                vec!["host 10.0.0.1"],
                vec!["host 10.0.0.1"]
            ]
        );
    }

    #[test]
    fn shapes_apart_and_operators_apart() {
        let got = plan(&[
            "net 10.0.0.0/8",
            "net 10.1.0.0/16",
            "net 11.0.0.0/8",
            "src port 53",
            "port 53",
            "src port 54",
            "greater 100",
            "greater 200",
        ]);
        assert_eq!(
            got,
            vec![
                // The mask differs: another shape.
                vec!["net 10.0.0.0/8", "net 11.0.0.0/8"],
                vec!["net 10.1.0.0/16"],
                vec!["src port 53", "src port 54"],
                vec!["port 53"],
                // A `jge` constant does not vary within a group.
                vec!["greater 100"],
                vec!["greater 200"],
            ]
        );
    }

    #[test]
    fn filters_whose_default_path_accepts_stay_alone() {
        let got = plan(&["not port 80", "not port 443", "udp and not dst port 53"]);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        let filters = compile(&["not port 80"]);
        let program = filters[0].program();
        let varying: Vec<usize> = comparisons(program).map(|(pc, _)| pc).collect();
        assert!(matches!(
            Template::analyse(program, &varying[varying.len() - 1..]),
            Err(crate::shared::shape::NotShared::DefaultAccepts { .. })
        ));
    }

    #[test]
    fn a_point_the_members_agreed_on_cannot_start_to_vary() {
        // Two members agree on the destination; a third differing there would make it
        // vary, and a look-up of the shared destination could not tell them apart.
        let got = plan(&[
            "src host 10.0.0.1 and dst host 10.9.9.9",
            "src host 10.0.0.2 and dst host 10.9.9.9",
            "src host 10.0.0.3 and dst host 10.8.8.8",
        ]);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn host_remembers_who_left_at_the_source() {
        let filters = compile(&["host 10.0.0.1", "host 10.0.0.2"]);
        let programs: Vec<&Program> = filters.iter().map(Filter::program).collect();
        let plan = Plan::new(&programs);
        let group = plan.groups().next().expect("one group");
        // IPv4, and ARP/RARP (one code after libpcap's optimiser): a source and a
        // destination each, the source before.
        assert_eq!(group.template.varying, vec![3, 5, 9, 11]);
        assert_eq!(group.template.remembered, vec![0, 2]);
        for (i, before) in group.template.before.iter().enumerate() {
            assert!(before.len() <= 1, "point {i}: {before:?}");
        }
    }

    #[test]
    fn filters_of_thousands_of_comparisons_are_planned_in_time() {
        // Two `host A or host B or ...` of 400 hosts each, differing in every
        // constant: 1,600 points would vary, each before all the next ones on the
        // default path. Deciding that is too many to remember must take time linear
        // in the program, not cubic (it held the daemon's lock for minutes).
        let hosts = |base: u32| {
            (0..400u32)
                .map(|i| format!("host 10.{base}.{}.{}", i >> 8, i & 255))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let expressions = [hosts(1), hosts(2)];
        let refs: Vec<&str> = expressions.iter().map(String::as_str).collect();
        let filters = compile(&refs);
        let programs: Vec<&Program> = filters.iter().map(Filter::program).collect();
        let started = std::time::Instant::now();
        let plan = Plan::new(&programs);
        let took = started.elapsed();
        assert_eq!(plan.items, vec![Item::Single(0), Item::Single(1)]);
        assert!(
            took < std::time::Duration::from_secs(1),
            "planned in {took:?}"
        );
    }
}
