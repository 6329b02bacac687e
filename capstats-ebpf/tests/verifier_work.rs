//! The verifier checks each filter of a program once: its work for a program of the
//! same filter four times is about four times its work for one. A program holds every
//! session of an interface and hook and is verified again at each new/modify/stop, so
//! work that grew with the product of the filters' paths (as it did while one filter's
//! scratch words and packet pointer ranges stayed live into the next: two `geneve and
//! geneve` filters on TC took 285,584 instructions, one 60,971) would limit the
//! sessions an interface can hold, and hold the daemon's lock while it runs.

mod common;

use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::{Filter, FilterError};
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{CounterSlot, Hook, translate_all};

/// Copies of each filter in the larger program.
const COPIES: usize = 4;
/// How far from linear one expression may be: protochain's loop on the socket hook
/// is the worst at ~1.5.
const WORST_RATIO: u64 = 2;

#[test]
fn verifier_work_grows_linearly_with_the_filters_socket() {
    linear(Hook::Socket);
}

#[test]
fn verifier_work_grows_linearly_with_the_filters_tc() {
    linear(Hook::TcIngress);
}

#[test]
fn verifier_work_grows_linearly_with_the_filters_xdp() {
    linear(Hook::Xdp);
}

fn linear(hook: Hook) {
    common::require_root();
    let corpus = common::corpus_dir();
    let map = CounterMap::create("work", 1).unwrap();
    let slot = CounterSlot { map: 0, slot: 0 };
    let maps = MapBinding::counters([&map]);
    // Socket filters' code loads as SCHED_CLS in tests; it is verified the same.
    let loaded_as = if hook == Hook::Xdp {
        Hook::Xdp
    } else {
        Hook::TcIngress
    };
    let verified = |filter: &Filter, copies: usize| -> u64 {
        let insns = translate_all(&vec![(filter.program(), slot); copies], hook).unwrap();
        let program = LoadedProgram::load_with(loaded_as, "work", &insns, &maps)
            .unwrap_or_else(|e| panic!("{hook}: load {copies} filters: {e}"));
        u64::from(program.verified_insns())
    };
    let (mut one_total, mut many_total, mut expressions) = (0u64, 0u64, 0);
    let mut superlinear = Vec::new();
    for expression in common::lines(&corpus.join("filters_ethernet_valid.txt")) {
        let filter = match Filter::for_linktype(pcap::Linktype::ETHERNET, &expression, 0) {
            Ok(filter) => filter,
            Err(FilterError::NeedsInterface { .. }) => continue,
            Err(e) => panic!("libpcap must compile {expression:?}: {e}"),
        };
        if hook == Hook::Xdp
            && capstats_ebpf::translate::translate(filter.program(), hook, slot).is_err()
        {
            continue;
        }
        let (one, many) = (verified(&filter, 1), verified(&filter, COPIES));
        assert!(
            one > 0,
            "{hook}: the kernel reports no verified instructions"
        );
        if many > WORST_RATIO * COPIES as u64 * one {
            superlinear.push(format!(
                "{expression:?}: {one} for one, {many} for {COPIES}"
            ));
        }
        one_total += one;
        many_total += many;
        expressions += 1;
    }
    println!(
        "{hook}: {expressions} expressions, verified instructions: {one_total} for one copy \
         each, {many_total} for {COPIES} ({:.2}x)",
        many_total as f64 / one_total as f64
    );
    assert!(
        expressions >= 380,
        "{hook}: only {expressions} expressions ran"
    );
    assert!(
        superlinear.is_empty(),
        "{hook}: {} expressions cost the verifier more than {WORST_RATIO}x linear:\n{}",
        superlinear.len(),
        superlinear.join("\n")
    );
    assert!(
        many_total * 10 <= one_total * (COPIES as u64 * 10 + 5),
        "{hook}: {COPIES} copies of each filter cost {many_total}, one {one_total}: \
         more than {COPIES}.5x"
    );
}

/// Past the verifier's limit on pending branches, the refusal names it: the first path
/// it follows runs through every filter and leaves each filter's other branches
/// pending, so a program of a few thousand filters is refused however simple they are.
#[test]
fn too_many_filters_in_one_program_are_refused_naming_the_limit() {
    common::require_root();
    let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, "tcp port 80", 0).unwrap();
    let map = CounterMap::create("work", 1).unwrap();
    let slot = CounterSlot { map: 0, slot: 0 };
    let maps = MapBinding::counters([&map]);
    let insns = translate_all(&vec![(filter.program(), slot); 2048], Hook::TcIngress).unwrap();
    let error = LoadedProgram::load_with(Hook::TcIngress, "work", &insns, &maps)
        .expect_err("2,048 filters in one program exceed the verifier's pending branches");
    let message = error.to_string();
    let first_line = message.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("BPF_COMPLEXITY_LIMIT_JMP_SEQ")
            && first_line.contains("too many filters"),
        "the refusal does not name the limit: {first_line}"
    );
}
