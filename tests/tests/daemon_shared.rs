//! Many sessions of one shape through the daemon: on every hook they share one
//! evaluation, in one program, and each counts exactly its own frames, also while
//! sessions come and go under traffic.
//!
//! One rig, one daemon in B. On each hook (socket, tc in, xdp) [`PORTS`] sessions
//! `udp dst port P`, more than a program held before shared evaluation (63 on tc and
//! xdp, 32 on the socket hook), beside sessions that stress the grouping: duplicates
//! of one port (a second group), `port P` (source or destination) and an equivalent
//! `udp and dst port P`. Each port gets frames of its own length; the oracle is the
//! frames written. The kernel is asked how many programs run: the prog arrays of the
//! tc and XDP chains hold no second program, and B has one packet socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_common::protocol::Session;
use capstats_tests::daemon::Client;
use capstats_tests::daemon::rig::{self, Setup};
use capstats_tests::joined;
use capstats_tests::require_root;

const TEST: &str = "daemon_shared";
const ARRIVAL: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(100);
/// Sessions `udp dst port P` per hook.
const PORTS: u16 = 100;
const BASE: u16 = 9000;
/// Frames the stream writes at the least (it goes on until the changes are made).
const STREAM: u64 = 4_000;

type Count = (u64, u64);

/// The hooks and the words that put a session there.
const HOOKS: [(&str, &[&str]); 3] = [
    ("sock", &["hook", "socket"]),
    ("tc", &["hook", "tc", "direction", "in"]),
    ("xdp", &["hook", "xdp"]),
];

/// The sessions of one hook: name, filter, and the ports whose frames it counts.
fn sessions(hook: &str) -> Vec<(String, String, Vec<u16>)> {
    let mut out: Vec<(String, String, Vec<u16>)> = (0..PORTS)
        .map(|i| {
            let port = BASE + i;
            (
                format!("{hook}-{i:03}"),
                format!("udp dst port {port}"),
                vec![port],
            )
        })
        .collect();
    for copy in 0..3 {
        out.push((
            format!("{hook}-dup{copy}"),
            format!("udp dst port {}", BASE + 7),
            vec![BASE + 7],
        ));
    }
    out.push((
        format!("{hook}-either"),
        format!("port {}", BASE + 9),
        vec![BASE + 9],
    ));
    out.push((
        format!("{hook}-same"),
        format!("udp and dst port {}", BASE + 11),
        vec![BASE + 11],
    ));
    out
}

fn poll(client: &Client) -> anyhow::Result<BTreeMap<String, Session>> {
    Ok(client
        .poll()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect())
}

/// What each session must have counted: `sent[p]` frames to port `p`.
fn check(
    polled: &BTreeMap<String, Session>,
    expected: &BTreeMap<String, Vec<u16>>,
    sent: &BTreeMap<u16, u64>,
    frames: &BTreeMap<u16, Vec<u8>>,
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for (name, ports) in expected {
        let session = polled
            .get(name)
            .with_context(|| format!("session {name} is missing from poll"))?;
        let got: Count = (session.packets.unwrap_or(0), session.bytes.unwrap_or(0));
        let want = ports.iter().fold((0, 0), |(p, b), port| {
            let n = sent.get(port).copied().unwrap_or(0);
            (p + n, b + n * frames[port].len() as u64)
        });
        if got != want {
            wrong.push(format!("{name}: counted {got:?}, expected {want:?}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} sessions miscounted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}

/// How many programs the prog array pinned at `path` holds (`bpftool map dump`).
fn chained_programs(path: &std::path::Path) -> anyhow::Result<usize> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(entries.as_array().map_or(0, Vec::len))
}

#[test]
fn sessions_of_one_shape_share_one_program_on_every_hook() -> anyhow::Result<()> {
    require_root(TEST);
    let Setup {
        client,
        daemon,
        spec,
        pins: _pins,
        rig,
        scratch: _scratch,
    } = Setup::start("shared")?;
    let interface = rig.interface().to_owned();
    client.ok(&["new", "all", "interface", &interface, "filter", ""])?;
    let mut expected: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (hook, words) in HOOKS {
        for (name, filter, ports) in sessions(hook) {
            let mut args = vec!["new", name.as_str(), "interface", interface.as_str()];
            args.extend(words);
            args.extend(["filter", filter.as_str()]);
            client.ok(&args)?;
            expected.insert(name, ports);
        }
    }

    // One program per hook: nothing in the chains' prog arrays, one packet socket.
    let tc_chain = spec.pin_dir.join("%tc").join(&interface).join("in-chain");
    let xdp_chain = spec.pin_dir.join("%xdp").join(&interface).join("chain");
    for chain in [&tc_chain, &xdp_chain] {
        ensure!(
            chained_programs(chain)? == 0,
            "{} holds chained programs: the sessions did not share one",
            chain.display()
        );
    }
    let packet_sockets = rig
        .ns_b
        .command_keeping_mounts("cat")
        .arg("/proc/net/packet")
        .output()?;
    // Not counted: the compile helpers' kept handles, which receive nothing (hooked for
    // a protocol no frame has).
    let deaf = format!("{:04x}", capstats_ebpf::sys::packet::NO_FRAME_PROTOCOL);
    let sockets = String::from_utf8_lossy(&packet_sockets.stdout)
        .lines()
        .skip(1)
        // sk RefCnt Type Proto ...
        .filter(|line| line.split_whitespace().nth(3) != Some(deaf.as_str()))
        .count();
    ensure!(
        sockets == 1,
        "B has {sockets} packet sockets that receive; one holds every socket session:\n{}",
        String::from_utf8_lossy(&packet_sockets.stdout)
    );

    let ports: Vec<u16> = (0..PORTS).map(|i| BASE + i).collect();
    let frames: BTreeMap<u16, Vec<u8>> = ports
        .iter()
        .map(|&p| (p, rig::udp_a_to_b(p, usize::from(p % 50))))
        .collect();
    let sender = rig.sender_a()?;
    let mut sent: BTreeMap<u16, u64> = BTreeMap::new();
    for (&port, frame) in &frames {
        sender.send(frame)?;
        *sent.entry(port).or_default() += 1;
    }
    let mut written = u64::from(PORTS);
    client.settle("all", written, ARRIVAL, QUIET)?;
    check(&poll(&client)?, &expected, &sent, &frames)?;

    // Under a stream over every port: on each hook one session stops, one moves to
    // another port, a new one takes the stopped one's port in the group, and a new
    // duplicate of a port in it goes elsewhere.
    let progress = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let stream = scope.spawn(|| {
            let frames =
                (0u64..).map(|k| frames[&ports[(k % u64::from(PORTS)) as usize]].as_slice());
            let frames = frames.take_while(|_| {
                progress.load(Ordering::SeqCst) < STREAM || !done.load(Ordering::SeqCst)
            });
            sender.send_paced_counting(frames, 3_000, &progress)
        });
        let result = (|| -> anyhow::Result<()> {
            while progress.load(Ordering::SeqCst) < 300 {
                std::thread::sleep(Duration::from_millis(5));
            }
            for (hook, words) in HOOKS {
                client.ok(&["stop", &format!("{hook}-020")])?;
                client.ok(&[
                    "modify",
                    &format!("{hook}-030"),
                    &format!("udp dst port {}", BASE + PORTS + 1),
                ])?;
                for (name, port) in [("late", BASE + 20), ("late-dup", BASE + 41)] {
                    let name = format!("{hook}-{name}");
                    let filter = format!("udp dst port {port}");
                    let mut args = vec!["new", name.as_str(), "interface", interface.as_str()];
                    args.extend(words);
                    args.extend(["filter", filter.as_str()]);
                    client.ok(&args)?;
                }
            }
            // The stream runs until told (below): the changes were all made under it,
            // however long they took; it goes on a little after them.
            let after = progress.load(Ordering::SeqCst);
            let deadline = std::time::Instant::now() + ARRIVAL;
            while progress.load(Ordering::SeqCst) < after + 300 {
                ensure!(
                    std::time::Instant::now() < deadline,
                    "the stream stopped while the changes were made"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })();
        done.store(true, Ordering::SeqCst);
        joined(stream)?;
        result
    })?;
    let streamed = progress.load(Ordering::SeqCst);
    written += streamed;
    for (i, &port) in ports.iter().enumerate() {
        let share =
            streamed / u64::from(PORTS) + u64::from((i as u64) < streamed % u64::from(PORTS));
        *sent.entry(port).or_default() += share;
    }
    client.settle("all", written, ARRIVAL, QUIET)?;
    let polled = poll(&client)?;
    // Sessions changed under traffic count a part of their frames; the others all.
    let mut steady = expected.clone();
    for (hook, _) in HOOKS {
        steady.remove(&format!("{hook}-020"));
        steady.remove(&format!("{hook}-030"));
        ensure!(
            !polled.contains_key(&format!("{hook}-020")),
            "{hook}-020 is polled after stop"
        );
        for (name, port) in [("late", BASE + 20), ("late-dup", BASE + 41)] {
            let got = polled
                .get(&format!("{hook}-{name}"))
                .map(|s| s.packets.unwrap_or(0))
                .context("a session added under traffic is missing")?;
            ensure!(
                got > 0 && got <= sent[&port],
                "{hook}-{name} counted {got} of {} frames to port {port}",
                sent[&port]
            );
        }
    }
    check(&polled, &steady, &sent, &frames)?;

    // After the changes, every session exact on a last round of one frame per port.
    let before = polled;
    for frame in frames.values() {
        sender.send(frame)?;
    }
    written += u64::from(PORTS);
    client.settle("all", written, ARRIVAL, QUIET)?;
    let after = poll(&client)?;
    let mut wrong = Vec::new();
    for (name, session) in &after {
        if name == "all" {
            continue;
        }
        let old = before.get(name).and_then(|s| s.packets).unwrap_or(0);
        let now = session.packets.unwrap_or(0);
        // The session "X-030" now counts port BASE+PORTS+1, which no frame carries.
        let want = u64::from(!name.ends_with("-030"));
        if now - old != want {
            wrong.push(format!(
                "{name}: {} frames in the last round, expected {want}",
                now - old
            ));
        }
    }
    ensure!(wrong.is_empty(), "after the changes:\n{}", wrong.join("\n"));
    drop(daemon);
    Ok(())
}
