//! Who goes where: which program of an interface's hook counts each session, and at
//! which entry of its counter table. Pure: it reads what the programs count now and
//! the sessions wanted, and touches no kernel object, so it is tested without one.
//!
//! A session stays in its program for life, at its entry: that is what makes every
//! packet meet each session's filter exactly once while programs are replaced one by
//! one. A new session goes into the first program where it joins a group of filters
//! evaluated together, else the first where there is room for it alone, else into a
//! new program at the end; in a chain, a program of many sessions is not made again
//! for a newcomer of another shape while the chain may grow
//! ([`REPLANNED_MEMBERS`]).

use capstats_ebpf::cbpf::Program;
use capstats_ebpf::chain::{CHAIN_ITEMS, CHAIN_PROGRAMS};
use capstats_ebpf::shared::plan::Planner;
use capstats_ebpf::shared::{Joins, SharedProgram};
use capstats_ebpf::translate::Count;

use super::{FastMap, FastSet};

/// Groups and filters alone per socket. A socket filter is charged to the socket's
/// option memory (`net.core.optmem_max`, 128 KiB by default), twice while a new filter
/// replaces the old, so one socket cannot hold the program of hundreds of filters
/// evaluated in turn (a group's members cost its program nothing).
pub const SESSIONS_PER_SOCKET: usize = 32;

/// A session as the layout sees it: its name, its filter and what it counts.
pub type Wanted<'a> = (&'a str, &'a Program, Count);

/// A program as it is laid out now: its sessions in order, their counter table
/// entries, and the shared program it was built as.
#[derive(Clone, Copy)]
pub struct Laid<'o> {
    pub members: &'o [String],
    pub entries: &'o [u32],
    pub shared: &'o SharedProgram,
}

/// The sessions of `wanted` by name.
fn by_name<'a>(wanted: &[Wanted<'a>]) -> FastMap<&'a str, Wanted<'a>> {
    wanted.iter().map(|&w| (w.0, w)).collect()
}

/// Sessions a program of a chain may count for a newcomer that joins none of its
/// groups to be planned into it. Its code changes then, and a program is made again
/// at a cost per member (4,096 sessions of one shape: about 45 ms per direction,
/// planned, translated, loaded and its maps filled), while another program of the
/// chain costs a packet one tail call. Sockets have no such limit: another socket
/// costs every packet far more (`SESSIONS_PER_SOCKET`).
pub const REPLANNED_MEMBERS: usize = 256;

/// Who goes where, given the programs `old`: every session of `wanted` that is in one
/// stays there, in its place (a program may be left with none); a new session goes
/// into the first program where it joins a group, else the first where there is room
/// for it alone (at most `most_items` groups and filters alone, see
/// `capstats_ebpf::shared`), else into a new program at the end. One list of members
/// per program, `old`'s first.
pub fn plan(old: &[Laid<'_>], wanted: &[Wanted<'_>], most_items: usize) -> Vec<Vec<String>> {
    plan_within(old, wanted, most_items, None)
}

/// [`plan`], where the hook may have up to `most_programs` programs (`Some` for a
/// chain): a newcomer that joins no group is not planned into a program of more than
/// [`REPLANNED_MEMBERS`] sessions while another program may be added.
fn plan_within(
    old: &[Laid<'_>],
    wanted: &[Wanted<'_>],
    most_items: usize,
    most_programs: Option<usize>,
) -> Vec<Vec<String>> {
    let by_name = by_name(wanted);
    let mut plan: Vec<Place<'_, '_>> = old.iter().map(|laid| Place::of(laid, &by_name)).collect();
    let placed: FastSet<&str> = old
        .iter()
        .flat_map(|laid| laid.members.iter().map(String::as_str))
        .filter(|m| by_name.contains_key(m))
        .collect();
    // Programs made in this change: planned from their sessions.
    let mut fresh: Vec<(Vec<String>, Planner<'_>)> = Vec::new();
    for &(name, program, count) in wanted {
        if placed.contains(name) {
            continue;
        }
        // A group as it is, or a program made again anyway: its code costs nothing.
        if let Some(i) = plan
            .iter_mut()
            .position(|place| place.takes_as_is(program, count, most_items))
        {
            plan[i].members.push(name.to_owned());
            continue;
        }
        if let Some(i) = fresh
            .iter_mut()
            .position(|(_, planner)| planner.add_counted_within(program, count, most_items))
        {
            fresh[i].0.push(name.to_owned());
            continue;
        }
        // Where no program may be added, any with room.
        let may_add = most_programs.is_some_and(|most| plan.len() + fresh.len() < most);
        let replanned =
            |place: &Place<'_, '_>| !may_add || place.members.len() <= REPLANNED_MEMBERS;
        if let Some(i) = plan
            .iter_mut()
            .position(|place| replanned(place) && place.add(program, count, most_items))
        {
            plan[i].members.push(name.to_owned());
            continue;
        }
        let mut planner = Planner::new();
        planner.add_counted_within(program, count, usize::MAX);
        fresh.push((vec![name.to_owned()], planner));
    }
    plan.into_iter()
        .map(|p| p.members)
        .chain(fresh.into_iter().map(|(members, _)| members))
        .collect()
}

/// More sessions than a chain can count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{sessions} sessions are more than one interface's {hook} hook can count: at most \
     {CHAIN_PROGRAMS} chained programs of {CHAIN_ITEMS} filters or groups of filters that \
     differ only in their constants (the kernel allows 33 tail calls); filters of one \
     shape, such as `udp port P` for many P, take one place together"
)]
pub struct TooMany {
    pub sessions: usize,
    pub hook: &'static str,
}

/// [`plan`] for a chain: chunks of at most [`CHAIN_ITEMS`] groups and filters alone,
/// those emptied at the end left out (an emptied chunk in the middle stays, passing
/// packets on), at most [`CHAIN_PROGRAMS`] chunks. `hook` names the hook in the error.
pub fn chain(
    old: &[Laid<'_>],
    wanted: &[Wanted<'_>],
    hook: &'static str,
) -> Result<Vec<Vec<String>>, TooMany> {
    let mut plan = plan_within(old, wanted, CHAIN_ITEMS, Some(CHAIN_PROGRAMS));
    while plan.last().is_some_and(Vec::is_empty) {
        plan.pop();
    }
    if plan.len() > CHAIN_PROGRAMS {
        return Err(TooMany {
            sessions: wanted.len(),
            hook,
        });
    }
    Ok(plan)
}

/// Counter table entries for `members`: a session keeps the one it had in `old` (its
/// members and their entries); a new one takes the lowest entry no other member has.
pub fn entries(old: Option<(&[String], &[u32])>, members: &[String]) -> Vec<u32> {
    let had: FastMap<&str, u32> = old
        .map(|(members, entries)| {
            members
                .iter()
                .map(String::as_str)
                .zip(entries.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let mut taken: FastSet<u32> = members
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

/// One program of [`plan`]: the sessions it keeps and gains, and whether a newcomer
/// fits.
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
    fn of(old: &Laid<'o>, wanted: &FastMap<&str, Wanted<'a>>) -> Self {
        let mut joins = old.shared.joins();
        let mut in_place = true;
        let mut members = Vec::with_capacity(old.members.len());
        let mut filters = Vec::with_capacity(old.members.len());
        let mut modified = Vec::new();
        for (member, &entry) in old.members.iter().zip(old.entries) {
            let Some(&(_, program, count)) = wanted.get(member.as_str()) else {
                in_place = in_place && joins.stop(entry);
                continue;
            };
            if old.shared.filter_at(entry) != Some(program) {
                // Modified: it leaves its group and joins one with its new filter,
                // once every leaver's keys are free (as the change is made).
                in_place = in_place && joins.stop(entry);
                modified.push((program, count));
            }
            members.push(member.clone());
            filters.push((program, count));
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

    /// Whether `program`, counting `count`, fits without the program being planned
    /// again for it: it joins a group as it is, or the program is planned again anyway
    /// and has room for it. If so it is taken.
    fn takes_as_is(&mut self, program: &'a Program, count: Count, most_items: usize) -> bool {
        let fits = match &mut self.fit {
            Fit::InPlace(joins) => joins.join(program, count).is_some(),
            Fit::Planned(planner) => planner.add_counted_within(program, count, most_items),
        };
        if fits {
            self.filters.push((program, count));
        }
        fits
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

#[cfg(test)]
mod tests {
    use super::*;

    use capstats_ebpf::cbpf::RawInsn;

    fn program(raw: &[(u16, u8, u8, u32)]) -> Program {
        let raw: Vec<RawInsn> = raw
            .iter()
            .map(|&(c, jt, jf, k)| RawInsn::new(c, jt, jf, k))
            .collect();
        Program::new(&raw).unwrap()
    }

    /// `udp dst port P` (IPv4, no options): one shape for every P.
    fn udp_port(port: u32) -> Program {
        program(&[
            (0x28, 0, 0, 12),
            (0x15, 0, 5, 0x0800),
            (0x30, 0, 0, 23),
            (0x15, 0, 3, 17),
            (0x28, 0, 0, 36),
            (0x15, 0, 1, port),
            (0x06, 0, 0, 262144),
            (0x06, 0, 0, 0),
        ])
    }

    /// A filter no group can take: nothing in it compares with a constant, and each
    /// `n` returns another length.
    fn alone(n: u32) -> Program {
        program(&[(0x28, 0, 0, 12), (0x06, 0, 0, 1000 + n)])
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn wanted<'a>(names: &'a [String], programs: &'a [Program]) -> Vec<Wanted<'a>> {
        names
            .iter()
            .zip(programs)
            .map(|(n, p)| (n.as_str(), p, Count::Stack))
            .collect()
    }

    /// With no programs yet, sessions of one shape share one program however many
    /// there are, and filters alone fill programs of `most_items`, in order.
    #[test]
    fn new_sessions_fill_programs_in_order() {
        let ports: Vec<Program> = (0..100).map(|p| udp_port(1000 + p)).collect();
        let port_names = names("p", 100);
        assert_eq!(
            plan(&[], &wanted(&port_names, &ports), 3),
            vec![port_names.clone()],
            "one group of 100"
        );
        let singles: Vec<Program> = (0..7).map(alone).collect();
        let single_names = names("s", 7);
        assert_eq!(
            plan(&[], &wanted(&single_names, &singles), 3),
            vec![
                single_names[0..3].to_vec(),
                single_names[3..6].to_vec(),
                single_names[6..].to_vec()
            ]
        );
    }

    /// Filters of one shape that count differently are not one group: `packets wire`
    /// and `packets stack` sessions take a place each.
    #[test]
    fn counts_are_grouped_apart() {
        let (a, b, other) = (udp_port(53), udp_port(123), alone(0));
        let wanted = [
            ("a", &a, Count::Stack),
            ("b", &b, Count::Wire),
            ("other", &other, Count::Stack),
        ];
        assert_eq!(plan(&[], &wanted, 2), vec![vec!["a", "b"], vec!["other"]]);
        assert_eq!(plan(&[], &wanted, 3), vec![vec!["a", "b", "other"]]);
        let same = [
            ("a", &a, Count::Stack),
            ("b", &b, Count::Stack),
            ("other", &other, Count::Stack),
        ];
        assert_eq!(plan(&[], &same, 2), vec![vec!["a", "b", "other"]]);
    }

    /// A chain of more programs than the kernel's tail calls reach is refused, naming
    /// the sessions and the hook.
    #[test]
    fn a_chain_has_at_most_its_programs() {
        let n = CHAIN_PROGRAMS * CHAIN_ITEMS + 1;
        let programs: Vec<Program> = (0..n as u32).map(alone).collect();
        let session_names = names("s", n);
        let wanted = wanted(&session_names, &programs);
        let error = chain(&[], &wanted, "tc ingress").unwrap_err();
        assert_eq!(
            error,
            TooMany {
                sessions: n,
                hook: "tc ingress"
            }
        );
        assert!(error.to_string().starts_with(&format!(
            "{n} sessions are more than one interface's tc ingress hook can count"
        )));
        let fits = chain(&[], &wanted[..n - 1], "tc ingress").unwrap();
        assert_eq!(fits.len(), CHAIN_PROGRAMS);
        assert!(fits.iter().all(|chunk| chunk.len() == CHAIN_ITEMS));
    }

    /// A session keeps its entry; a newcomer takes the lowest free one.
    #[test]
    fn entries_are_kept_for_life() {
        assert_eq!(entries(None, &names("s", 3)), [0, 1, 2]);
        let old_members = ["b".to_owned(), "d".to_owned()];
        let members: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(
            entries(Some((&old_members, &[3, 0])), &members),
            [1, 3, 2, 0]
        );
    }
}
