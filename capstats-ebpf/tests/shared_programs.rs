//! Shared evaluation (`capstats_ebpf::shared`): filters of one shape run once per
//! packet for all of them, each still counting exactly what libpcap matches with its
//! own expression.
//!
//! Three sets of filters, every corpus record through each (`BPF_PROG_RUN`), every
//! filter's counter map compared with libpcap's packets and bytes: the corpus's
//! expressions, all in one program as sessions of one interface (121 of them share a
//! shape with another; the rest checks that nothing else changed), a set made to
//! stress merging (one shape with equal, overlapping and nested constants, duplicates,
//! `port` beside `src port`/`dst port`, shapes differing only in an operator, constants
//! taken from the corpus's own packets so that they match), and sessions added and
//! removed in random order between batches of records, as the daemon regenerates a
//! program while its sessions' maps keep counting.

mod common;

use std::collections::BTreeSet;

use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::maps::{CounterTable, dispatch_entries};
use capstats_ebpf::shared::{SharedProgram, presence};
use capstats_ebpf::testrun::harness_max_frame;
use capstats_ebpf::translate::{Hook, Placement};

struct Records {
    all: Vec<Vec<u8>>,
}

impl Records {
    fn load() -> Self {
        let corpus = common::corpus_dir();
        let all = common::read_all_captures(&corpus)
            .into_iter()
            .flat_map(|c| c.records)
            .collect();
        Self { all }
    }
}

/// The kernel's count of each filter: one shared program of `filters`, every record
/// of `records` through it. Also what libpcap counts for each, over the records the
/// harness ran, and how many filters the plan grouped.
struct Counted {
    got: Vec<(u64, u64)>,
    want: Vec<(u64, u64)>,
    grouped: usize,
    groups: usize,
}

fn run_shared(
    hook: Hook,
    filters: &[&Filter],
    maps: &[&CounterMap],
    records: &[Vec<u8>],
) -> (Vec<(u64, u64)>, usize, usize) {
    let counted: Vec<_> = filters
        .iter()
        .zip(maps)
        .map(|(f, m)| (f.program(), *m))
        .collect();
    let shared = SharedProgram::build("shared", &counted, hook, None)
        .unwrap_or_else(|e| panic!("{hook}: build {} filters: {e}", filters.len()));
    // Socket filters' test runs start at L3: their code runs as SCHED_CLS.
    let loaded_as = if hook == Hook::Xdp {
        Hook::Xdp
    } else {
        Hook::TcIngress
    };
    let program = LoadedProgram::load_with(loaded_as, "shared", &shared.insns, &shared.binding())
        .unwrap_or_else(|e| panic!("{hook}: load {} filters: {e}", filters.len()));
    let runner = common::Runner::new(&program);
    let max_frame = harness_max_frame(hook).expect("probe the test harness");
    let mut want = vec![(0u64, 0u64); filters.len()];
    for record in records {
        if record.len() < 14 || record.len() > max_frame || runner.run(record).is_none() {
            continue;
        }
        for (filter, want) in filters.iter().zip(&mut want) {
            if filter.libpcap_matches(record) {
                want.0 += 1;
                want.1 += record.len() as u64;
            }
        }
    }
    let groups = shared.plan.groups().count();
    (want, shared.plan.grouped(), groups)
}

fn count(hook: Hook, filters: &[&Filter], records: &[Vec<u8>]) -> Counted {
    let maps: Vec<CounterMap> = (0..filters.len())
        .map(|i| CounterMap::create(&format!("shared{i}"), 1).unwrap())
        .collect();
    let map_refs: Vec<&CounterMap> = maps.iter().collect();
    let (want, grouped, groups) = run_shared(hook, filters, &map_refs, records);
    let got = maps
        .iter()
        .map(|m| {
            let c = m.read(0).unwrap();
            (c.packets, c.bytes)
        })
        .collect();
    Counted {
        got,
        want,
        grouped,
        groups,
    }
}

fn assert_exact(hook: Hook, filters: &[&Filter], got: &[(u64, u64)], want: &[(u64, u64)]) {
    let wrong: Vec<String> = filters
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (got, want))| got != want)
        .map(|(f, (got, want))| {
            format!(
                "{:?}: counted packets={} bytes={}, libpcap packets={} bytes={}",
                f.expression(),
                got.0,
                got.1,
                want.0,
                want.1
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{hook}: {} of {} filters miscounted:\n{}",
        wrong.len(),
        filters.len(),
        wrong.join("\n")
    );
}

fn corpus(hook: Hook) {
    common::require_root();
    let records = Records::load();
    let filters = common::file_filters(&common::corpus_dir());
    assert!(filters.len() >= 400, "{} filters", filters.len());
    // All of them in one program, as sessions of one interface.
    let all: Vec<&Filter> = filters.iter().collect();
    let counted = count(hook, &all, &records.all);
    assert_exact(hook, &all, &counted.got, &counted.want);
    let matches: u64 = counted.want.iter().map(|w| w.0).sum();
    eprintln!(
        "{hook}: {} corpus filters in one shared program: {matches} matches exact, {} \
         filters evaluated in {} groups",
        filters.len(),
        counted.grouped,
        counted.groups
    );
    assert!(
        matches > 100_000,
        "{matches} matches: the records did not run"
    );
}

#[test]
fn corpus_expressions_in_shared_programs_count_what_libpcap_matches_socket() {
    corpus(Hook::Socket);
}

#[test]
fn corpus_expressions_in_shared_programs_count_what_libpcap_matches_tc() {
    corpus(Hook::TcIngress);
}

#[test]
fn corpus_expressions_in_shared_programs_count_what_libpcap_matches_xdp() {
    corpus(Hook::Xdp);
}

/// Values seen in the corpus's untagged IPv4 packets, so that the stress set matches.
#[derive(Default)]
struct Seen {
    ports: BTreeSet<u16>,
    hosts: BTreeSet<[u8; 4]>,
    vlans: BTreeSet<u16>,
    lengths: BTreeSet<usize>,
}

fn seen(records: &[Vec<u8>]) -> Seen {
    let mut seen = Seen::default();
    for r in records {
        seen.lengths.insert(r.len());
        if r.len() >= 18 && r[12..14] == [0x81, 0x00] {
            seen.vlans
                .insert(u16::from_be_bytes([r[14], r[15]]) & 0xfff);
        }
        if r.len() < 38 || r[12..14] != [0x08, 0x00] {
            continue;
        }
        seen.hosts.insert(r[26..30].try_into().unwrap());
        seen.hosts.insert(r[30..34].try_into().unwrap());
        let ihl = usize::from(r[14] & 0xf) * 4;
        if matches!(r[23], 6 | 17) && r.len() >= 14 + ihl + 4 {
            let at = 14 + ihl;
            seen.ports.insert(u16::from_be_bytes([r[at], r[at + 1]]));
            seen.ports
                .insert(u16::from_be_bytes([r[at + 2], r[at + 3]]));
        }
    }
    seen
}

/// The UDP destination ports and IPv4 addresses of the corpus's untagged packets, the
/// most frequent first (ties by value).
fn most_common(records: &[Vec<u8>]) -> (Vec<u16>, Vec<[u8; 4]>) {
    use std::collections::BTreeMap;
    let mut ports: BTreeMap<u16, u64> = BTreeMap::new();
    let mut hosts: BTreeMap<[u8; 4], u64> = BTreeMap::new();
    for r in records {
        if r.len() < 38 || r[12..14] != [0x08, 0x00] {
            continue;
        }
        *hosts.entry(r[26..30].try_into().unwrap()).or_default() += 1;
        *hosts.entry(r[30..34].try_into().unwrap()).or_default() += 1;
        let ihl = usize::from(r[14] & 0xf) * 4;
        if r[23] == 17 && r.len() >= 14 + ihl + 4 {
            let at = 14 + ihl + 2;
            *ports
                .entry(u16::from_be_bytes([r[at], r[at + 1]]))
                .or_default() += 1;
        }
    }
    fn by_count<K: Copy + Ord>(counts: BTreeMap<K, u64>) -> Vec<K> {
        let mut all: Vec<(K, u64)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().map(|(k, _)| k).collect()
    }
    (by_count(ports), by_count(hosts))
}

/// A small deterministic generator (xorshift), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn ip(a: &[u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Expressions made to stress merging, with constants from `seen` (and a few that
/// match nothing), in a shuffled order with duplicates.
fn stress_expressions(seen: &Seen, rng: &mut Rng) -> Vec<String> {
    let ports: Vec<u16> = seen.ports.iter().copied().take(60).collect();
    let hosts: Vec<[u8; 4]> = seen.hosts.iter().copied().take(60).collect();
    let vlans: Vec<u16> = seen.vlans.iter().copied().take(12).collect();
    let lengths: Vec<usize> = seen.lengths.iter().copied().step_by(37).take(10).collect();
    let mut out = Vec::new();
    for p in &ports {
        out.push(format!("udp and dst port {p}"));
        out.push(format!("tcp dst port {p}"));
        out.push(format!("port {p}"));
    }
    for p in ports.iter().step_by(3) {
        out.push(format!("src port {p}"));
        out.push(format!("dst port {p}"));
        out.push(format!("udp port {p}"));
    }
    for h in &hosts {
        out.push(format!("host {}", ip(h)));
        out.push(format!("net {}.{}.{}.0/24", h[0], h[1], h[2]));
        out.push(format!("src net {}.{}.0.0/16 and udp", h[0], h[1]));
    }
    for h in hosts.iter().step_by(4) {
        out.push(format!("src host {}", ip(h)));
        out.push(format!("dst host {}", ip(h)));
        out.push(format!("net {}.0.0.0/8", h[0]));
        out.push(format!("net {}.{}.0.0/16", h[0], h[1]));
        out.push(format!("ip host {} and udp", ip(h)));
    }
    // Nested and overlapping nets, the example among them.
    out.extend(
        [
            "net 10.0.0.0/8",
            "net 10.1.0.0/16",
            "net 10.1.2.0/24",
            "net 10.0.0.0/16",
        ]
        .map(String::from),
    );
    for v in &vlans {
        out.push(format!("vlan {v}"));
        out.push(format!("vlan {v} and udp"));
    }
    for n in &lengths {
        out.push(format!("greater {n}"));
        out.push(format!("less {n}"));
        out.push(format!("len >= {n}"));
    }
    // Constants nothing in the corpus carries.
    for p in [1u16, 7, 9, 65535] {
        out.push(format!("udp and dst port {p}"));
    }
    out.push("host 192.0.2.77".into());
    // Duplicates, more than once.
    for _ in 0..30 {
        let again = rng.pick(&out).clone();
        out.push(again);
    }
    out.push("port 53".into());
    out.push("port 53".into());
    out.push("port 53".into());
    // Shuffled: a group's first member is any of them.
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

fn compile(expressions: &[String]) -> Vec<Filter> {
    expressions
        .iter()
        .map(|e| {
            Filter::for_linktype(pcap::Linktype::ETHERNET, e, 0)
                .unwrap_or_else(|err| panic!("libpcap must compile {e:?}: {err}"))
        })
        .collect()
}

fn stress(hook: Hook) {
    common::require_root();
    let records = Records::load();
    let seen = seen(&records.all);
    assert!(
        seen.ports.len() >= 60 && seen.hosts.len() >= 60,
        "corpus values"
    );
    for seed in [0x5eed_0001u64, 0x5eed_0002] {
        let mut rng = Rng(seed);
        let filters = compile(&stress_expressions(&seen, &mut rng));
        let refs: Vec<&Filter> = filters.iter().collect();
        let counted = count(hook, &refs, &records.all);
        assert_exact(hook, &refs, &counted.got, &counted.want);
        let matches: u64 = counted.want.iter().map(|w| w.0).sum();
        eprintln!(
            "{hook} seed {seed:#x}: {} filters in one shared program, {} in {} groups: \
             {matches} matches exact",
            refs.len(),
            counted.grouped,
            counted.groups
        );
        // The set is made of a few shapes: most filters must share their evaluation,
        // or this test would check nothing new.
        assert!(
            counted.grouped * 10 >= refs.len() * 8,
            "only {} of {} filters grouped",
            counted.grouped,
            refs.len()
        );
        assert!(
            matches > 50_000,
            "{matches} matches: the constants did not match"
        );
    }
}

#[test]
fn merging_stress_set_counts_what_libpcap_matches_socket() {
    stress(Hook::Socket);
}

#[test]
fn merging_stress_set_counts_what_libpcap_matches_tc() {
    stress(Hook::TcIngress);
}

#[test]
fn merging_stress_set_counts_what_libpcap_matches_xdp() {
    stress(Hook::Xdp);
}

/// Sessions come and go between batches of records: each batch runs through a program
/// generated for the sessions present then, counting into maps that outlive it. Each
/// session must hold libpcap's count over the batches it was present for.
fn churn(hook: Hook) {
    common::require_root();
    let records = Records::load();
    let seen = seen(&records.all);
    let mut rng = Rng(0xc0ffee);
    let pool_expressions = stress_expressions(&seen, &mut rng);
    let pool = compile(&pool_expressions);
    let maps: Vec<CounterMap> = (0..pool.len())
        .map(|i| CounterMap::create(&format!("churn{i}"), 1).unwrap())
        .collect();
    let mut present: Vec<bool> = (0..pool.len()).map(|_| rng.below(2) == 0).collect();
    let mut want = vec![(0u64, 0u64); pool.len()];
    let batches = 8;
    let per_batch = records.all.len().div_ceil(batches);
    for batch in records.all.chunks(per_batch) {
        let live: Vec<usize> = (0..pool.len()).filter(|&i| present[i]).collect();
        let filters: Vec<&Filter> = live.iter().map(|&i| &pool[i]).collect();
        let live_maps: Vec<&CounterMap> = live.iter().map(|&i| &maps[i]).collect();
        let (batch_want, _, _) = run_shared(hook, &filters, &live_maps, batch);
        for (&i, w) in live.iter().zip(batch_want) {
            want[i].0 += w.0;
            want[i].1 += w.1;
        }
        // A third of the sessions change their presence.
        for p in present.iter_mut() {
            if rng.below(3) == 0 {
                *p = !*p;
            }
        }
    }
    let got: Vec<(u64, u64)> = maps
        .iter()
        .map(|m| {
            let c = m.read(0).unwrap();
            (c.packets, c.bytes)
        })
        .collect();
    let refs: Vec<&Filter> = pool.iter().collect();
    assert_exact(hook, &refs, &got, &want);
    let matches: u64 = want.iter().map(|w| w.0).sum();
    assert!(matches > 10_000, "{matches} matches");
    eprintln!(
        "{hook}: {} sessions coming and going over {batches} batches: {matches} matches exact",
        pool.len()
    );
}

#[test]
fn sessions_coming_and_going_count_what_libpcap_matches_socket() {
    churn(Hook::Socket);
}

#[test]
fn sessions_coming_and_going_count_what_libpcap_matches_tc() {
    churn(Hook::TcIngress);
}

#[test]
fn sessions_coming_and_going_count_what_libpcap_matches_xdp() {
    churn(Hook::Xdp);
}

/// Changes made in the maps alone (`SharedProgram::update_in_place`): members of two
/// groups join, leave and change their constants between batches of records while
/// one loaded program keeps running; a change the code must follow (none here but
/// the fallback) rebuilds it. Each session must hold libpcap's count over the batches
/// it was present for, with the filter it had then, and most changes must have been
/// made in place.
fn in_place(hook: Hook) {
    common::require_root();
    let records = Records::load();
    let mut rng = Rng(0x1a_91ace);
    let (ports, hosts) = most_common(&records.all);
    let (ports, hosts) = (&ports[..80], &hosts[..40]);
    // Sessions 0..40: ports 0..40 (40..80 spare, for changes); then 40 hosts. The first
    // of each group stays, so that the groups keep their order.
    let mut expressions: Vec<String> = ports[..40]
        .iter()
        .map(|p| format!("udp and dst port {p}"))
        .chain(hosts.iter().map(|h| format!("host {}", ip(h))))
        .collect();
    let mut filters = compile(&expressions);
    let anchors = [0, 40];
    let maps: Vec<CounterMap> = (0..filters.len())
        .map(|i| CounterMap::create(&format!("inplace{i}"), 1).unwrap())
        .collect();
    let mut present: Vec<bool> = (0..filters.len())
        .map(|i| anchors.contains(&i) || rng.below(3) > 0)
        .collect();
    let mut want = vec![(0u64, 0u64); filters.len()];
    let loaded_as = if hook == Hook::Xdp {
        Hook::Xdp
    } else {
        Hook::TcIngress
    };
    let max_frame = harness_max_frame(hook).expect("probe the test harness");
    let (mut program, mut loaded, mut runner) = (None::<SharedProgram>, None, None);
    let (mut in_place, mut rebuilt) = (0, 0);
    let batches = 10;
    for batch in records.all.chunks(records.all.len().div_ceil(batches)) {
        let live: Vec<usize> = (0..filters.len()).filter(|&i| present[i]).collect();
        let counted: Vec<_> = live
            .iter()
            .map(|&i| (filters[i].program(), &maps[i]))
            .collect();
        let entries: Vec<u32> = live.iter().map(|&i| i as u32).collect();
        let changed_in_place = match program.as_mut() {
            Some(p) => p.update_in_place(&counted, &entries).unwrap(),
            None => false,
        };
        if changed_in_place {
            in_place += 1;
        } else {
            let p = SharedProgram::build_at("inplace", &counted, &entries, Placement::on(hook))
                .unwrap();
            let l = LoadedProgram::load_with(loaded_as, "inplace", &p.insns, &p.binding()).unwrap();
            runner = Some(common::Runner::new(&l));
            (program, loaded) = (Some(p), Some(l));
            rebuilt += 1;
        }
        let runner = runner.as_ref().unwrap();
        for record in batch {
            if record.len() < 14 || record.len() > max_frame || runner.run(record).is_none() {
                continue;
            }
            for &i in &live {
                if filters[i].libpcap_matches(record) {
                    want[i].0 += 1;
                    want[i].1 += record.len() as u64;
                }
            }
        }
        // Some leave or come back; some ports move to a spare one.
        for i in 0..filters.len() {
            if anchors.contains(&i) {
                continue;
            }
            match rng.below(6) {
                0 => present[i] = !present[i],
                1 if i < 40 => {
                    let used: BTreeSet<&String> = expressions.iter().collect();
                    let spare = ports[40..]
                        .iter()
                        .map(|p| format!("udp and dst port {p}"))
                        .find(|e| !used.contains(e));
                    if let Some(spare) = spare {
                        filters[i] = compile(std::slice::from_ref(&spare)).remove(0);
                        expressions[i] = spare;
                    }
                }
                _ => {}
            }
        }
    }
    drop(loaded);
    let got: Vec<(u64, u64)> = maps
        .iter()
        .map(|m| {
            let c = m.read(0).unwrap();
            (c.packets, c.bytes)
        })
        .collect();
    // Sessions are compared with the sum over their filters: name them by index.
    let wrong: Vec<String> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| format!("session {i}: counted {g:?}, libpcap {w:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{hook}: miscounted:\n{}",
        wrong.join("\n")
    );
    let matches: u64 = want.iter().map(|w| w.0).sum();
    eprintln!(
        "{hook}: {} sessions over {batches} batches: {in_place} changes in the maps alone, \
         {rebuilt} programs built; {matches} matches exact",
        filters.len()
    );
    assert!(
        in_place >= batches / 2,
        "only {in_place} of {batches} changes were made in place"
    );
    assert!(matches > 1_000, "{matches} matches");
}

#[test]
fn changes_in_the_maps_alone_count_what_libpcap_matches_socket() {
    in_place(Hook::Socket);
}

#[test]
fn changes_in_the_maps_alone_count_what_libpcap_matches_tc() {
    in_place(Hook::TcIngress);
}

#[test]
fn changes_in_the_maps_alone_count_what_libpcap_matches_xdp() {
    in_place(Hook::Xdp);
}

/// An Ethernet/IPv4/UDP frame to `port`.
fn udp_frame(port: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend([0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0]);
    f.extend([192, 0, 2, 10, 198, 51, 100, 1]);
    f.extend(53000u16.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend([0, 26, 0, 0]);
    f.extend([0; 18]);
    f
}

/// A group keeps its code while its members come and go, down to one member and to
/// none of those it was built with: every such change is made in the maps alone
/// (before, a group left with one member was a filter alone, new code), and each
/// member counts what it matches while it is there.
#[test]
fn a_group_keeps_its_code_while_its_members_come_and_go() {
    common::require_root();
    let expressions: Vec<String> = (1000..1003)
        .map(|p| format!("udp and dst port {p}"))
        .collect();
    let filters = compile(&expressions);
    let maps: Vec<CounterMap> = (0..3)
        .map(|i| CounterMap::create(&format!("keep{i}"), 1).unwrap())
        .collect();
    let (a, b, c) = (
        (filters[0].program(), &maps[0]),
        (filters[1].program(), &maps[1]),
        (filters[2].program(), &maps[2]),
    );
    let mut program =
        SharedProgram::build_at("keep", &[a, b], &[0, 1], Placement::on(Hook::TcIngress)).unwrap();
    assert_eq!(program.plan.groups().count(), 1, "one group of two");
    let loaded =
        LoadedProgram::load_with(Hook::TcIngress, "keep", &program.insns, &program.binding())
            .unwrap();
    let loaded_insns = program.insns.len();
    let runner = common::Runner::new(&loaded);
    let offer = |ports: &[u16]| {
        for &p in ports {
            runner
                .run(&udp_frame(p))
                .expect("the harness runs the frame");
        }
    };
    offer(&[1000, 1001, 1002]);
    // b leaves: a alone in the group.
    assert!(
        program.update_in_place(&[a], &[0]).unwrap(),
        "b leaves in place"
    );
    offer(&[1000, 1001, 1002]);
    // c comes, a leaves: the group holds none of those it was built with.
    assert!(
        program.update_in_place(&[a, c], &[0, 2]).unwrap(),
        "c comes in place"
    );
    assert!(
        program.update_in_place(&[c], &[2]).unwrap(),
        "a leaves in place"
    );
    offer(&[1000, 1001, 1002, 1002]);
    // b comes back at the entry a had, with its own map.
    assert!(
        program.update_in_place(&[b, c], &[0, 2]).unwrap(),
        "b at a's entry"
    );
    offer(&[1000, 1001]);
    let got: Vec<u64> = maps.iter().map(|m| m.read(0).unwrap().packets).collect();
    assert_eq!(got, vec![2, 2, 2], "a, b, c counted");
    assert_eq!(
        program.insns.len(),
        loaded_insns,
        "the code it was built with"
    );
}

/// The presence filter says "maybe" for every key the dispatch map holds, and, once
/// members leave, "no" for the keys that left (none of which shares a bit with a key
/// still there): their packets then cost no look-up.
#[test]
fn the_presence_filter_follows_the_dispatch_maps_keys() {
    common::require_root();
    let expressions: Vec<String> = (2000..2064)
        .map(|p| format!("udp and dst port {p}"))
        .collect();
    let filters = compile(&expressions);
    let maps: Vec<CounterMap> = (0..expressions.len())
        .map(|i| CounterMap::create(&format!("pres{i}"), 1).unwrap())
        .collect();
    let counted: Vec<_> = filters.iter().map(|f| f.program()).zip(&maps).collect();
    let entries: Vec<u32> = (0..counted.len() as u32).collect();
    let mut program =
        SharedProgram::build_at("pres", &counted, &entries, Placement::on(Hook::TcIngress))
            .unwrap();
    let programs: Vec<_> = filters.iter().map(|f| f.program()).collect();
    let keys = dispatch_entries(&program.plan, &programs, |f| f as u32);
    assert!(
        (0..expressions.len() as u32).all(|e| keys.iter().any(|&(_, entry)| entry == e)),
        "each member has keys: {keys:?}"
    );
    let presence = |program: &SharedProgram, key: u64| {
        let (dispatch, _) = program.maps.as_ref().expect("a shared program has maps");
        dispatch.presence().may_hold(key)
    };
    for (key, _) in &keys {
        assert!(
            presence(&program, key.to_u64()),
            "{key:?} is in the dispatch map"
        );
    }
    assert!(
        program
            .update_in_place(&counted[..1], &entries[..1])
            .unwrap()
    );
    let (staying, leaving): (Vec<_>, Vec<_>) = keys.iter().partition(|&&(_, entry)| entry == 0);
    let kept: BTreeSet<u32> = staying
        .iter()
        .map(|(key, _)| presence::bit(key.to_u64()))
        .collect();
    for (key, _) in &staying {
        assert!(
            presence(&program, key.to_u64()),
            "the member left keeps {key:?}"
        );
    }
    for (key, entry) in leaving {
        let shares = kept.contains(&presence::bit(key.to_u64()));
        assert_eq!(
            presence(&program, key.to_u64()),
            shares,
            "entry {entry}'s key {key:?} after it left"
        );
    }
}

/// A counter table's entries hold their new maps as soon as `set` returns, though the
/// kernel's own update waits for an RCU grace period after it (the wait is left to a
/// thread of its own): dispatch keys that lead there go in next, and must find them.
#[test]
fn the_counter_table_holds_its_new_maps_when_set_returns() {
    common::require_root();
    let maps: Vec<CounterMap> = (0..8)
        .map(|i| CounterMap::create(&format!("table{i}"), 1).unwrap())
        .collect();
    let table = CounterTable::create("table", &maps[0], 16).unwrap();
    let holds = |entries: &[(u32, &CounterMap)]| {
        for &(entry, map) in entries {
            assert_eq!(
                table.map_id_at(entry).unwrap(),
                Some(map.id()),
                "entry {entry} holds counter map {}",
                map.name()
            );
        }
    };
    let first: Vec<(u32, &CounterMap)> = (0..6).map(|i| (i as u32 * 2, &maps[i])).collect();
    table.set(&first).unwrap();
    holds(&first);
    assert_eq!(
        table.map_id_at(1).unwrap(),
        None,
        "an entry never set is empty"
    );
    // Entries repointed (a stopped session's entry taken by a newcomer), with the last
    // one of the batch holding its map already.
    let second = [(2, &maps[6]), (4, &maps[7]), (10, &maps[5])];
    table.set(&second).unwrap();
    holds(&second);
    holds(&[(0, &maps[0]), (6, &maps[3]), (8, &maps[4])]);
}
