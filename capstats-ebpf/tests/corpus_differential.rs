//! The whole corpus, kernel against libpcap: every valid Ethernet expression of
//! `filters_ethernet_valid.txt` over every record of every capture under `pcap*/`.
//!
//! For each expression, libpcap compiles one program; `pcap_offline_filter` gives
//! libpcap's verdict on each record, and the same program, translated to eBPF and run by
//! the kernel (`BPF_PROG_RUN`), gives the kernel's — read from its per-CPU counter map,
//! which must also add up to libpcap's totals. On both sides a record's length is its
//! captured length.
//!
//! Records the test harness refuses (longer than a page, or a cut-short IPv4/IPv6
//! header) go through the same program on a TC egress hook (see `replay`).
//!
//! Two legitimate differences, each checked rather than skipped:
//! - A record shorter than an Ethernet header (14 bytes) reaches no eBPF program: no
//!   Ethernet device delivers one, and no kernel path takes one. Counted and reported.
//! - libpcap 1.10 compiles `inbound`, `outbound` and `ifindex N` for a capture file
//!   into loads of socket metadata that a file does not record; its interpreter then
//!   matches nothing. capstats refuses such expressions for capture files, as newer
//!   libpcap does; the test checks that libpcap indeed matches no record with them.

mod common;

use std::sync::Mutex;

use capstats_ebpf::filter::{Filter, FilterError};
use capstats_ebpf::testrun::{KernelFilter, Verdict, harness_max_frame};
use capstats_ebpf::translate::Hook;

/// TC's code (direct packet access, `bpf_skb_load_bytes` past the linear part).
#[test]
fn kernel_equals_libpcap_on_every_expression_and_record_tc() {
    differential(Hook::TcIngress);
}

/// The socket filter's code (a stack copy of the first bytes, `bpf_skb_load_bytes`
/// past it), run as SCHED_CLS so that it sees frames from L2.
#[test]
fn kernel_equals_libpcap_on_every_expression_and_record_socket() {
    differential(Hook::Socket);
}

/// XDP's code (direct packet access, `bpf_xdp_load_bytes` across buffers).
#[test]
fn kernel_equals_libpcap_on_every_expression_and_record_xdp() {
    differential(Hook::Xdp);
}

fn differential(hook: Hook) {
    common::require_root();
    let corpus = common::corpus_dir();
    let captures = common::read_all_captures(&corpus);
    let expressions = common::lines(&corpus.join("filters_ethernet_valid.txt"));
    assert_eq!(
        expressions.len(),
        409,
        "filters_ethernet_valid.txt should hold 409 expressions"
    );
    let records: usize = captures.iter().map(|c| c.records.len()).sum();
    let max_frame = harness_max_frame(hook).expect("probe the test harness");

    let mismatches = Mutex::new(Vec::<String>::new());
    let not_runnable = Mutex::new(0u64);
    let compared = Mutex::new(0u64);
    let matched = Mutex::new(0u64);
    let next = Mutex::new(0usize);
    let refused = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next - 1
                    };
                    let Some(expression) = expressions.get(index) else { break };
                    let filter = match Filter::for_linktype(pcap::Linktype::ETHERNET, expression, 0) {
                        Ok(filter) => filter,
                        Err(FilterError::NeedsInterface { .. }) => {
                            libpcap_matches_nothing(expression, &captures);
                            refused.lock().unwrap().push(expression.clone());
                            continue;
                        }
                        Err(e) => panic!("libpcap must compile {expression:?}: {e}"),
                    };
                    let mut kernel = KernelFilter::load_for(filter.program(), hook)
                        .unwrap_or_else(|e| panic!("load the program for {expression:?}: {e}"));
                    let start = kernel.counter().unwrap();
                    let (mut want_packets, mut want_bytes) = (0u64, 0u64);
                    let (mut skipped, mut runs, mut hits) = (0u64, 0u64, 0u64);
                    let mut bad = Vec::new();
                    for capture in &captures {
                        for (n, record) in capture.records.iter().enumerate() {
                            let libpcap = filter.libpcap_matches(record);
                            let verdict = kernel.run(record).unwrap_or_else(|e| {
                                panic!("run {expression:?} on {} record {}: {e}", capture.name, n + 1)
                            });
                            let kernel_match = match verdict {
                                Verdict::NotRunnable => {
                                    // XDP: frames beyond a page and its frags reach no XDP
                                    // program (the TC runs replay them instead).
                                    assert!(
                                        record.len() < 14 || (hook == Hook::Xdp && record.len() > max_frame),
                                        "a {}-byte record was refused by the harness",
                                        record.len()
                                    );
                                    skipped += 1;
                                    continue;
                                }
                                Verdict::Match => true,
                                Verdict::NoMatch => false,
                            };
                            runs += 1;
                            if libpcap {
                                hits += 1;
                                want_packets += 1;
                                want_bytes += record.len() as u64;
                            }
                            if kernel_match != libpcap && bad.len() < 5 {
                                bad.push(format!(
                                    "{expression:?} on {} record {} ({} bytes): kernel {kernel_match}, libpcap {libpcap}",
                                    capture.name,
                                    n + 1,
                                    record.len()
                                ));
                            }
                        }
                    }
                    let end = kernel.counter().unwrap();
                    let (got_packets, got_bytes) = (end.packets - start.packets, end.bytes - start.bytes);
                    if (got_packets, got_bytes) != (want_packets, want_bytes) {
                        bad.push(format!(
                            "{expression:?}: counter map packets={got_packets} bytes={got_bytes}, \
                             libpcap packets={want_packets} bytes={want_bytes}"
                        ));
                    }
                    mismatches.lock().unwrap().extend(bad);
                    *not_runnable.lock().unwrap() += skipped;
                    *compared.lock().unwrap() += runs;
                    *matched.lock().unwrap() += hits;
                }
            });
        }
    });

    let mismatches = mismatches.into_inner().unwrap();
    let compared = compared.into_inner().unwrap();
    let not_runnable = not_runnable.into_inner().unwrap();
    let refused = refused.into_inner().unwrap();
    eprintln!(
        "{hook}: {} expressions x {} captures ({records} records): {compared} verdicts compared, {} matches, \
         {not_runnable} runs of records not runnable (under 14 bytes; for XDP also over {max_frame}); refused for capture files: {refused:?}",
        expressions.len(),
        captures.len(),
        matched.into_inner().unwrap(),
    );
    assert!(
        mismatches.is_empty(),
        "{} disagreements, first ones:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    let tested = (expressions.len() - refused.len()) * records;
    assert_eq!(compared + not_runnable, tested as u64);
    assert!(
        refused.len() <= 3,
        "only inbound/outbound/ifindex may be refused: {refused:?}"
    );
}

/// An expression refused for capture files must be one libpcap's interpreter matches
/// nothing with: refusing it loses no count.
fn libpcap_matches_nothing(expression: &str, captures: &[common::CaptureRecords]) {
    let libpcap = common::libpcap_savefile_program(expression);
    for capture in captures {
        for (n, record) in capture.records.iter().enumerate() {
            assert!(
                !libpcap(record),
                "capstats refuses {expression:?} for capture files, but libpcap matches {} record {}",
                capture.name,
                n + 1
            );
        }
    }
}
