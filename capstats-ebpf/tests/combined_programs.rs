//! Many filters in one program, as the daemon runs the sessions of an interface: each
//! filter must count exactly what it counts alone, that is what libpcap matches.
//!
//! The 409 valid expressions of the corpus go into programs of 64 filters each, every
//! filter counting into a map of its own through a reference to it, and every
//! record of the corpus goes through each program once (`BPF_PROG_RUN`). Each filter's
//! map must then hold libpcap's packets and bytes for it. Records no test run takes
//! (under 14 bytes, beyond the harness's frame size, or an IPv4/IPv6 header cut short,
//! which this kernel's harness refuses) are left out on both sides and counted; the
//! one-filter differential (`corpus_differential`) replays those through a device.

mod common;

use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::testrun::harness_max_frame;
use capstats_ebpf::translate::{CounterSlot, Hook, translate_all};

/// Filters per program.
const PER_PROGRAM: usize = 64;

#[test]
fn each_filter_of_a_combined_program_counts_what_libpcap_matches_socket() {
    combined(Hook::Socket);
}

#[test]
fn each_filter_of_a_combined_program_counts_what_libpcap_matches_tc() {
    combined(Hook::TcIngress);
}

#[test]
fn each_filter_of_a_combined_program_counts_what_libpcap_matches_xdp() {
    combined(Hook::Xdp);
}

fn combined(hook: Hook) {
    common::require_root();
    let corpus = common::corpus_dir();
    let captures = common::read_all_captures(&corpus);
    let records: Vec<&[u8]> = captures
        .iter()
        .flat_map(|c| c.records.iter().map(Vec::as_slice))
        .collect();
    let filters: Vec<Filter> = common::file_filters(&corpus);
    assert!(filters.len() >= 400, "{} filters", filters.len());
    let max_frame = harness_max_frame(hook).expect("probe the test harness");

    let (mut programs, mut refused_runs, mut matches) = (0, 0u64, 0u64);
    let mut wrong = Vec::new();
    for chunk in filters.chunks(PER_PROGRAM) {
        let maps: Vec<CounterMap> = (0..chunk.len())
            .map(|i| CounterMap::create(&format!("combined{i}"), 1).unwrap())
            .collect();
        let slots: Vec<_> = (0u32..)
            .zip(chunk)
            .map(|(map, f)| (f.program(), CounterSlot { map, slot: 0 }))
            .collect();
        let insns = translate_all(&slots, hook).unwrap();
        // Socket filters' test runs start at L3: their code runs as SCHED_CLS.
        let loaded_as = if hook == Hook::Xdp {
            Hook::Xdp
        } else {
            Hook::TcIngress
        };
        let program =
            LoadedProgram::load_with(loaded_as, "combined", &insns, &MapBinding::counters(&maps))
                .unwrap_or_else(|e| panic!("{hook}: load {} filters: {e}", chunk.len()));
        let runner = common::Runner::new(&program);
        programs += 1;
        let mut want = vec![(0u64, 0u64); chunk.len()];
        for record in &records {
            if record.len() < 14 || record.len() > max_frame || runner.run(record).is_none() {
                refused_runs += 1;
                continue;
            }
            for (filter, want) in chunk.iter().zip(&mut want) {
                if filter.libpcap_matches(record) {
                    want.0 += 1;
                    want.1 += record.len() as u64;
                    matches += 1;
                }
            }
        }
        for ((filter, map), want) in chunk.iter().zip(&maps).zip(&want) {
            let got = map.read(0).unwrap();
            if (got.packets, got.bytes) != *want {
                wrong.push(format!(
                    "{:?}: counted packets={} bytes={}, libpcap packets={} bytes={}",
                    filter.expression(),
                    got.packets,
                    got.bytes,
                    want.0,
                    want.1
                ));
            }
        }
    }
    eprintln!(
        "{hook}: {} filters in {programs} programs over {} records: {matches} matches counted \
         per filter; {refused_runs} program runs on records no test run takes",
        filters.len(),
        records.len()
    );
    assert!(
        wrong.is_empty(),
        "{hook}: {} filters miscounted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The records left out are few (a few dozen per program).
    assert!(
        refused_runs <= programs as u64 * 200,
        "{refused_runs} runs refused"
    );
}
