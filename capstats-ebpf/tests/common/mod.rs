//! Test material: the shared corpus, read once, and the root check. Each test binary
//! uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The corpus: `$CAPSTATS_CORPUS`, or `../shared/corpus` beside the workspace.
pub fn corpus_dir() -> PathBuf {
    let dir = capstats_testkit::corpus::dir().unwrap();
    assert!(
        dir.join("filters_ethernet_valid.txt").is_file(),
        "the test corpus is missing at {} (set CAPSTATS_CORPUS)",
        dir.display()
    );
    dir
}

/// Kernel tests need root; they fail, loudly, without it.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs and must run as root (sudo cargo test)"
    );
}

/// Non-empty lines of a text file.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The corpus's valid Ethernet expressions compiled as for a capture file, in order;
/// those that need a live interface (inbound/outbound/ifindex) are left out
/// (corpus_differential checks that libpcap matches nothing with them in files).
pub fn file_filters(corpus: &Path) -> Vec<capstats_ebpf::filter::Filter> {
    use capstats_ebpf::filter::{Filter, FilterError};
    lines(&corpus.join("filters_ethernet_valid.txt"))
        .iter()
        .filter_map(
            |e| match Filter::for_linktype(pcap::Linktype::ETHERNET, e, 0) {
                Ok(filter) => Some(filter),
                Err(FilterError::NeedsInterface { .. }) => None,
                Err(err) => panic!("libpcap must compile {e:?}: {err}"),
            },
        )
        .collect()
}

/// A loaded program run on frames with `BPF_PROG_RUN`, as its type takes them.
pub enum Runner {
    Tc(aya::programs::SchedClassifier),
    Xdp(aya::programs::Xdp),
}

impl Runner {
    pub fn new(program: &capstats_ebpf::program::LoadedProgram) -> Self {
        match program.hook() {
            capstats_ebpf::translate::Hook::Xdp => Runner::Xdp(program.xdp().unwrap()),
            _ => Runner::Tc(program.sched_classifier().unwrap()),
        }
    }

    /// The program's return value, or `None` when the harness refuses the frame.
    pub fn run(&self, frame: &[u8]) -> Option<u32> {
        use aya::programs::{TestRun, TestRunOptions};
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        match self {
            Runner::Tc(p) => p.test_run(options),
            Runner::Xdp(p) => p.test_run(options),
        }
        .ok()
        .map(|r| r.return_value)
    }
}

pub struct CaptureRecords {
    pub name: String,
    pub records: Vec<Vec<u8>>,
}

/// Every record of every capture under `pcap/` and `pcapng/`, as libpcap reads them
/// (records longer than the snapshot length cut to it). A file libpcap cannot finish
/// reading contributes the records before the damage, as for tcpdump.
pub fn read_all_captures(corpus: &Path) -> Vec<CaptureRecords> {
    let mut paths = Vec::new();
    for top in ["pcap", "pcapng"] {
        for dir in std::fs::read_dir(corpus.join(top)).expect("corpus capture directory") {
            let dir = dir.unwrap().path();
            for file in std::fs::read_dir(&dir).unwrap() {
                paths.push(file.unwrap().path());
            }
        }
    }
    paths.sort();
    assert_eq!(paths.len(), 499, "the corpus should hold 499 captures");
    paths
        .iter()
        .map(|path| {
            let mut capture = pcap::Capture::from_file(path)
                .unwrap_or_else(|e| panic!("libpcap cannot open {}: {e}", path.display()));
            assert_eq!(
                capture.get_datalink(),
                pcap::Linktype::ETHERNET,
                "{} is not an Ethernet capture",
                path.display()
            );
            let mut records = Vec::new();
            while let Ok(packet) = capture.next_packet() {
                records.push(packet.data.to_vec());
            }
            CaptureRecords {
                name: path
                    .strip_prefix(corpus)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
                records,
            }
        })
        .collect()
}

/// libpcap's verdict function for `expression` compiled for Ethernet as libpcap makes
/// it, metadata loads and all.
pub fn libpcap_savefile_program(expression: &str) -> impl Fn(&[u8]) -> bool {
    let filter = capstats_ebpf::filter::Filter::libpcap_for_linktype(
        pcap::Linktype::ETHERNET,
        expression,
        0,
    )
    .unwrap_or_else(|e| panic!("libpcap must compile {expression:?}: {e}"));
    move |record| filter.libpcap_matches(record)
}
