//! Sessions on links as they are: raw-IP links (tun), `interface any`, and interfaces
//! renamed or moved to another namespace under running sessions, each held to tcpdump
//! on the same interfaces.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use capstats_common::protocol::Session;
use capstats_tests::daemon::rig::Setup;
use capstats_tests::frame::Ipv4;
use capstats_tests::link::Tun;
use capstats_tests::require_root;
use capstats_tests::tcpdump::{Recorded, Tcpdump};

const TEST: &str = "daemon_links";
/// How long packets may take to be counted after they were written.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a count must stand still to be final.
const QUIET: Duration = Duration::from_millis(100);

fn counts(session: &Session) -> (u64, u64) {
    (session.packets.unwrap_or(0), session.bytes.unwrap_or(0))
}

fn recorded(r: &Recorded) -> (u64, u64) {
    (
        r.lengths.len() as u64,
        r.lengths.iter().map(|&l| u64::from(l)).sum(),
    )
}

/// XDP on a raw-IP link reads the IP header at offset 0, as tcpdump's program for
/// `LINKTYPE_RAW` does: every hook counts what tcpdump records on the tun device.
#[test]
fn every_hook_counts_what_tcpdump_sees_on_a_tun_device() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = Setup::start("links-tun")?;
    let ns = &setup.rig.ns_b;
    let tun = Tun::create(ns, "tun0")?;
    let from = Ipv4Addr::new(10, 9, 0, 9);
    let other = Ipv4Addr::new(10, 9, 0, 7);
    let to = Ipv4Addr::new(10, 9, 0, 2);
    let expressions = [("udp", "udp"), ("host", "ip host 10.9.0.9"), ("all", "")];
    let dir = tempfile_dir()?;
    let mut dumps = Vec::new();
    for (tag, expression) in expressions {
        dumps.push(Tcpdump::start(
            ns,
            "tun0",
            expression,
            &dir.join(&format!("{tag}.pcap")),
        )?);
    }
    let hooks: [(&str, &[&str]); 3] = [
        ("xdp", &["hook", "xdp"]),
        ("sock", &["hook", "socket"]),
        ("tc", &["hook", "tc", "direction", "in"]),
    ];
    for (hook, words) in hooks {
        for (tag, expression) in expressions {
            let name = format!("{hook}-{tag}");
            let mut args = vec!["new", &name, "interface", "tun0"];
            args.extend_from_slice(words);
            args.extend(["filter", expression]);
            setup.client.ok(&args)?;
        }
    }
    for seq in 0..10u16 {
        tun.send(&Ipv4::new(from, to).udp(40000, 53, &vec![7; 20 + usize::from(seq)]))?;
    }
    for seq in 0..5u16 {
        tun.send(&Ipv4::new(other, to).icmp_echo(false, 1, seq, &[1; 30]))?;
    }
    let mut oracle = Vec::new();
    for ((tag, _), dump) in expressions.iter().zip(dumps) {
        // tcpdump's ring is read after the sessions settle: give it the same time.
        std::thread::sleep(Duration::from_millis(300));
        oracle.push((*tag, recorded(&dump.stop()?)));
    }
    let expected = [("udp", 10), ("host", 10), ("all", 15)];
    for ((tag, want), (_, got)) in expected.iter().zip(&oracle) {
        ensure!(
            got.0 == *want,
            "tcpdump {tag}: {got:?}, expected {want} packets"
        );
    }
    let mut failures = Vec::new();
    for (hook, _) in hooks {
        for (tag, want) in &oracle {
            let name = format!("{hook}-{tag}");
            let session = setup.client.settle(&name, want.0, ARRIVAL, QUIET);
            let got = session.as_ref().map(counts).unwrap_or_default();
            println!("{name:>10}: {got:?}, tcpdump {want:?}");
            if got != *want {
                failures.push(format!("{name}: {got:?}, tcpdump {want:?}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "counts differ from tcpdump: {failures:?}"
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<capstats_tests::scratch::ScratchDir> {
    capstats_tests::scratch::ScratchDir::new("links-dumps")
}
