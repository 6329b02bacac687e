//! Chained programs, as the daemon runs the tc and XDP sessions of an interface: the
//! filters in programs of at most 63, the first calling the next through a prog array
//! (`bpf_tail_call`), and so on. Every filter must count exactly what libpcap matches,
//! whichever program of the chain holds it, when every record goes through the first
//! program alone (`BPF_PROG_RUN` runs tail calls too). A chain of the kernel's most
//! programs (34) loads and reaches its last program, where one program with nearly as
//! many filters is refused by the verifier.

mod common;

use capstats_ebpf::chain::{
    CHAIN_MOST_SESSIONS, CHAIN_PROGRAMS, CHAIN_SESSIONS, ProgArray, chunk_binding, translate_chunk,
};
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadError, LoadedProgram, MapBinding};
use capstats_ebpf::testrun::harness_max_frame;
use capstats_ebpf::translate::{CounterSlot, Hook, neutral_return, translate_all};

/// Filters in the chain of the corpus test: four programs, the last one part full.
const CORPUS_FILTERS: usize = 200;

#[test]
fn each_filter_of_a_chain_counts_what_libpcap_matches_tc() {
    chained(Hook::TcIngress);
}

#[test]
fn each_filter_of_a_chain_counts_what_libpcap_matches_xdp() {
    chained(Hook::Xdp);
}

/// A chain: its array and its programs, program `k` holding the filters of chunk `k`.
struct Chain {
    array: ProgArray,
    programs: Vec<LoadedProgram>,
}

fn load_chain(hook: Hook, filters: &[&Filter], maps: &[CounterMap]) -> Chain {
    let array = ProgArray::create("test_chain").unwrap();
    let pairs: Vec<_> = filters.iter().zip(maps).collect();
    let mut programs = Vec::new();
    for (k, chunk) in pairs.chunks(CHAIN_SESSIONS).enumerate() {
        let programs_k: Vec<_> = chunk.iter().map(|(f, _)| f.program()).collect();
        let insns = translate_chunk(&programs_k, hook, k).unwrap();
        let maps = chunk_binding(chunk.iter().map(|(_, m)| *m), &array);
        let program = LoadedProgram::load_with(hook, "test_chain", &insns, &maps)
            .unwrap_or_else(|e| panic!("{hook}: load program {k} of the chain: {e}"));
        if k > 0 {
            array.set(k as u32, &program).unwrap();
        }
        programs.push(program);
    }
    Chain { array, programs }
}

fn chained(hook: Hook) {
    common::require_root();
    let corpus = common::corpus_dir();
    let captures = common::read_all_captures(&corpus);
    let records: Vec<&[u8]> = captures
        .iter()
        .flat_map(|c| c.records.iter().map(Vec::as_slice))
        .collect();
    let filters: Vec<Filter> = common::file_filters(&corpus)
        .into_iter()
        .take(CORPUS_FILTERS)
        .collect();
    assert_eq!(filters.len(), CORPUS_FILTERS);
    let maps: Vec<CounterMap> = (0..filters.len())
        .map(|i| CounterMap::create(&format!("chained{i}"), 1).unwrap())
        .collect();
    let chain = load_chain(hook, &filters.iter().collect::<Vec<_>>(), &maps);
    assert_eq!(chain.programs.len(), 4);
    let head = common::Runner::new(&chain.programs[0]);
    let max_frame = harness_max_frame(hook).expect("probe the test harness");

    let mut want = vec![(0u64, 0u64); filters.len()];
    let (mut runs, mut refused) = (0u64, 0u64);
    for record in &records {
        if record.len() < 14 || record.len() > max_frame {
            refused += 1;
            continue;
        }
        match head.run(record) {
            Some(returned) => assert_eq!(returned, neutral_return(hook) as u32),
            None => {
                refused += 1;
                continue;
            }
        }
        runs += 1;
        for (filter, want) in filters.iter().zip(&mut want) {
            if filter.libpcap_matches(record) {
                want.0 += 1;
                want.1 += record.len() as u64;
            }
        }
    }
    let mut wrong = Vec::new();
    for (i, ((filter, map), want)) in filters.iter().zip(&maps).zip(&want).enumerate() {
        let got = map.read(0).unwrap();
        if (got.packets, got.bytes) != *want {
            wrong.push(format!(
                "filter {i} (program {}) {:?}: counted packets={} bytes={}, libpcap packets={} \
                 bytes={}",
                i / CHAIN_SESSIONS,
                filter.expression(),
                got.packets,
                got.bytes,
                want.0,
                want.1
            ));
        }
    }
    eprintln!(
        "{hook}: {} filters in {} chained programs, {runs} records run, {refused} left out",
        filters.len(),
        chain.programs.len()
    );
    assert!(
        wrong.is_empty(),
        "{hook}: {} filters miscounted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Filters of every program of the chain matched something: the calls happened.
    for k in 0..chain.programs.len() {
        let start = k * CHAIN_SESSIONS;
        let end = (start + CHAIN_SESSIONS).min(want.len());
        assert!(
            want[start..end].iter().any(|w| w.0 > 0),
            "no filter of program {k} matched a record"
        );
    }
    assert!(runs > 1000, "{runs} records run");
}

/// Ethernet, IPv4, UDP to `port`: 42 bytes.
fn udp_frame(port: u16) -> Vec<u8> {
    let mut frame = vec![0u8; 42];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45; // IPv4, 20-byte header
    frame[16..18].copy_from_slice(&28u16.to_be_bytes()); // total length
    frame[22] = 64; // TTL
    frame[23] = 17; // UDP
    frame[26..30].copy_from_slice(&[192, 0, 2, 1]);
    frame[30..34].copy_from_slice(&[192, 0, 2, 2]);
    frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
    frame[36..38].copy_from_slice(&port.to_be_bytes());
    frame[38..40].copy_from_slice(&8u16.to_be_bytes());
    frame
}

/// `udp port N` for N in 1..=count: a typical filter each, every one different.
fn port_filters(count: usize) -> Vec<Filter> {
    (1..=count)
        .map(|port| {
            Filter::for_linktype(pcap::Linktype::ETHERNET, &format!("udp port {port}"), 0).unwrap()
        })
        .collect()
}

/// The longest chain the kernel runs: 34 programs of 63 filters. A frame for the last
/// filter is counted by it alone (33 tail calls), one for the first by the first.
#[test]
fn a_chain_of_the_most_programs_loads_and_reaches_its_end() {
    common::require_root();
    for hook in [Hook::TcIngress, Hook::Xdp] {
        let filters = port_filters(CHAIN_MOST_SESSIONS);
        let maps: Vec<CounterMap> = (0..filters.len())
            .map(|i| CounterMap::create(&format!("longest{i}"), 1).unwrap())
            .collect();
        let chain = load_chain(hook, &filters.iter().collect::<Vec<_>>(), &maps);
        assert_eq!(chain.programs.len(), CHAIN_PROGRAMS);
        let head = common::Runner::new(&chain.programs[0]);
        for port in [1, CHAIN_MOST_SESSIONS - 1, CHAIN_MOST_SESSIONS] {
            let frame = udp_frame(port as u16);
            assert_eq!(head.run(&frame), Some(neutral_return(hook) as u32));
        }
        let counted: Vec<usize> = maps
            .iter()
            .enumerate()
            .filter(|(_, m)| m.read(0).unwrap().packets > 0)
            .map(|(i, m)| {
                assert_eq!(m.read(0).unwrap().packets, 1, "{hook}: filter {i}");
                i
            })
            .collect();
        assert_eq!(
            counted,
            [0, CHAIN_MOST_SESSIONS - 2, CHAIN_MOST_SESSIONS - 1],
            "{hook}"
        );
    }
}

/// What the chain is for: one program of 2,000 typical filters is more than the
/// verifier takes.
#[test]
fn one_program_of_two_thousand_filters_is_refused() {
    common::require_root();
    let filters = port_filters(2000);
    // One map for all: the verifier refuses the branches, not the maps.
    let map = CounterMap::create("single", 1).unwrap();
    let slot = CounterSlot { map: 0, slot: 0 };
    let counted: Vec<_> = filters.iter().map(|f| (f.program(), slot)).collect();
    let insns = translate_all(&counted, Hook::TcIngress).unwrap();
    match LoadedProgram::load_with(
        Hook::TcIngress,
        "test_single",
        &insns,
        &MapBinding::counters([&map]),
    ) {
        Err(LoadError::Verifier { .. }) => {}
        Err(e) => panic!("refused, but not by the verifier: {e}"),
        Ok(_) => panic!("one program of 2,000 filters loaded: a chain is not needed"),
    }
}

/// Emptying a chain's last entry takes effect when `clear` returns, though the kernel
/// waits for a grace period after it (left to a thread): records run right after reach
/// the programs before it only, and the last program's filters, which libpcap says
/// match some of them, count nothing.
#[test]
fn a_cleared_entry_is_empty_when_clear_returns() {
    common::require_root();
    let hook = Hook::TcIngress;
    let corpus = common::corpus_dir();
    let captures = common::read_all_captures(&corpus);
    let filters: Vec<Filter> = common::file_filters(&corpus)
        .into_iter()
        .take(CORPUS_FILTERS)
        .collect();
    let maps: Vec<CounterMap> = (0..filters.len())
        .map(|i| CounterMap::create(&format!("cleared{i}"), 1).unwrap())
        .collect();
    let chain = load_chain(hook, &filters.iter().collect::<Vec<_>>(), &maps);
    let last = chain.programs.len() - 1;
    assert!(!chain.array.is_empty_at(last as u32).unwrap());
    chain.array.clear(last as u32).unwrap();
    assert!(
        chain.array.is_empty_at(last as u32).unwrap(),
        "entry {last} still holds its program when clear returns"
    );
    let head = common::Runner::new(&chain.programs[0]);
    let max_frame = harness_max_frame(hook).expect("probe the test harness");
    let cut = last * CHAIN_SESSIONS;
    let mut matched_in_last = 0u64;
    for record in captures.iter().flat_map(|c| c.records.iter()) {
        if record.len() < 14 || record.len() > max_frame || head.run(record).is_none() {
            continue;
        }
        matched_in_last += filters[cut..]
            .iter()
            .filter(|f| f.libpcap_matches(record))
            .count() as u64;
    }
    assert!(
        matched_in_last > 0,
        "no record matches a filter of the last program: the test shows nothing"
    );
    for (i, map) in maps.iter().enumerate() {
        let got = map.read(0).unwrap().packets;
        if i >= cut {
            assert_eq!(got, 0, "filter {i}, in the cleared program {last}, counted");
        }
    }
    assert!(
        maps[..cut].iter().any(|m| m.read(0).unwrap().packets > 0),
        "the programs before the cleared one count"
    );
}
