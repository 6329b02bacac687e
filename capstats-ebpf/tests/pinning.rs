//! Counter maps pinned on bpffs outlive their creator and keep their counts: the
//! ground for counting through daemon restarts.

mod common;

use std::path::Path;

use capstats_ebpf::counters::{CounterError, CounterMap};
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::{LoadedProgram, MapBinding};
use capstats_ebpf::translate::{CounterSlot, Hook, translate};

fn bpffs() -> &'static Path {
    let root = Path::new("/sys/fs/bpf");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf")
                && l.split(' ').nth(2) == Some("bpf")),
        "bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf; cargo xtask test does)"
    );
    root
}

#[test]
fn a_pinned_counter_map_keeps_its_counts_after_its_creator_drops_it() {
    common::require_root();
    let path = bpffs().join(format!("capstats-test-pin-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let frame = [0u8; 60];
    {
        let map = CounterMap::create("capstats_pin", 1).unwrap();
        let filter = Filter::for_linktype(pcap::Linktype::ETHERNET, "", 0).unwrap();
        let slot = CounterSlot { map: 0, slot: 0 };
        let insns = translate(filter.program(), Hook::TcIngress, slot).unwrap();
        let program = LoadedProgram::load_with(
            Hook::TcIngress,
            "capstats_pin",
            &insns,
            &MapBinding::counters([&map]),
        )
        .unwrap();
        let runner = program.sched_classifier().unwrap();
        for _ in 0..3 {
            aya::programs::TestRun::test_run(
                &runner,
                aya::programs::TestRunOptions {
                    data_in: Some(&frame),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        map.pin(&path).unwrap();
        let err = map.pin(&path).unwrap_err();
        assert!(
            matches!(err, CounterError::Pin { .. }),
            "pinning twice at one path fails: {err}"
        );
    }
    // Program and map fds are gone; the pin holds the map.
    let reopened = CounterMap::open_pinned(&path).unwrap();
    let counter = reopened.read(0).unwrap();
    assert_eq!((counter.packets, counter.bytes), (3, 180));
    std::fs::remove_file(&path).unwrap();

    let err = CounterMap::open_pinned(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
