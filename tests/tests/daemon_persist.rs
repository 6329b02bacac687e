//! What the daemon keeps across its own death, however it is started and whatever it
//! finds at start (issue 12):
//!
//! - started with `ip netns exec` (a mount namespace of its own, whose bpffs would die
//!   with it), killed with `kill -9` in the middle of a stream and started again the
//!   same way: nothing counted is lost, counts never go back, tc and xdp count through
//!   the gap exactly; where no bpffs outlives the daemon, it says so (log, `show`,
//!   `--json`, `poll --prometheus`);
//! - a start short of file descriptors cannot reopen the pins: it fails and leaves
//!   them, and the next start continues from the kernel's counts;
//! - a second daemon on the same pin directory is refused, naming the first, and the
//!   first's pins stay;
//! - a FIFO at the state file's or its lock's path is refused at once;
//! - the state file is checked as requests are (interface names, hook and direction),
//!   and a daemon always reads the counts it wrote, even at the limit.
//! - a change is on disk before it is answered (the table fsynced, renamed, its
//!   directory fsynced; seen with strace), and after `kill -9` every answered change
//!   is back.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::Session;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{Client, Daemon, DaemonSpec, UNMOUNT_BPFFS, alone_in_private_mounts};
use capstats_tests::joined;
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_persist";
const ARRIVAL: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(150);
/// i64::MAX: where the daemon's counts stop.
const MAX_COUNT: u64 = i64::MAX as u64;

fn find<'s>(sessions: &'s [Session], name: &str) -> anyhow::Result<&'s Session> {
    sessions
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no session {name} in {sessions:?}"))
}

/// Waits until `progress` reaches `at`.
fn wait_for(progress: &AtomicU64, at: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + ARRIVAL * 3;
    loop {
        let now = progress.load(Ordering::SeqCst);
        if now >= at {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("the stream reached frame {now}, not {at}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One session per hook, counting the stream.
const HOOKS: [(&str, &[&str]); 4] = [
    ("tc-in", &["hook", "tc", "direction", "in"]),
    ("tc-both", &["hook", "tc", "direction", "both"]),
    ("xdp", &["hook", "xdp"]),
    ("sock", &["hook", "socket"]),
];

fn new_sessions(client: &Client, interface: &str) -> anyhow::Result<()> {
    for (name, hook) in HOOKS {
        let mut args = vec!["new", name, "interface", interface];
        args.extend_from_slice(hook);
        args.extend(["filter", "udp port 7000"]);
        client.ok(&args)?;
    }
    Ok(())
}

#[test]
fn under_ip_netns_exec_kill_9_mid_stream_loses_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    const FRAMES: u64 = 3_000;
    const PPS: u32 = 1_000;
    let rig = Rig::new("netns-exec")?;
    let scratch = ScratchDir::new("netns-exec")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"))
        .keeping_pins(true)
        .under_ip_netns_exec();
    // Its pins land on the test's bpffs (the namespace the daemon was started from).
    let _pins = spec.pin_guard();
    let client = spec.client()?;
    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    new_sessions(&client, rig.interface())?;
    let frame = rig::udp_a_to_b(7000, 30);
    let len = frame.len() as u64;
    let sender = rig.sender_a()?;
    let progress = AtomicU64::new(0);
    let (at_kill, killed_at, after_restart, (restarted_at, answered_at), second) =
        std::thread::scope(|scope| -> anyhow::Result<_> {
            let stream = scope.spawn(|| {
                sender.send_paced_counting((0..FRAMES).map(|_| frame.as_slice()), PPS, &progress)
            });
            let run = || -> anyhow::Result<_> {
                wait_for(&progress, FRAMES / 3)?;
                let at_kill = client.poll()?;
                let killed_at = progress.load(Ordering::SeqCst);
                first.kill()?;
                wait_for(&progress, FRAMES / 2)?;
                let restarted_at = progress.load(Ordering::SeqCst);
                let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
                let after_restart = client.poll()?;
                let answered_at = progress.load(Ordering::SeqCst);
                Ok((
                    at_kill,
                    killed_at,
                    after_restart,
                    (restarted_at, answered_at),
                    second,
                ))
            };
            let outcome = run();
            let streamed = joined(stream);
            let outcome = outcome?;
            streamed?;
            Ok(outcome)
        })?;
    let written = progress.load(Ordering::SeqCst);
    ensure!(written == FRAMES, "the stream wrote {written} frames");
    for (name, _) in HOOKS {
        let before = counts(find(&at_kill, name)?);
        let after = counts(find(&after_restart, name)?);
        ensure!(
            after >= before,
            "{name} went back across the restart: {before:?} -> {after:?}; second log:\n{}",
            second.log()
        );
    }
    // tc and XDP counted through the gap: every frame, exactly.
    for name in ["tc-in", "tc-both", "xdp"] {
        let session = client.settle(name, FRAMES, ARRIVAL, QUIET)?;
        ensure!(
            counts(&session) == (FRAMES, FRAMES * len) && session.up,
            "{name}: {session:?}, expected {FRAMES} frames; second log:\n{}",
            second.log()
        );
    }
    // The socket session counts only while a daemon runs, and loses nothing it counted.
    let sock = counts(&client.show("sock")?);
    let sock_at_kill = counts(find(&at_kill, "sock")?);
    ensure!(
        sock.0 >= sock_at_kill.0 + (FRAMES - answered_at) && sock.0 <= FRAMES,
        "sock: {sock:?} (had {sock_at_kill:?} at the kill, the new daemon answered at frame \
         {answered_at})"
    );
    for session in client.poll()? {
        ensure!(
            session.survives_daemon == Some(true),
            "under ip netns exec, the pins should outlive the daemon: {session:?}\n{}",
            second.log()
        );
    }
    ensure!(
        spec.pin_dir.join("tc-in").join("counters").exists(),
        "the pins are not on the bpffs of the namespace the daemon was started from \
         ({}); its log:\n{}",
        spec.pin_dir.display(),
        second.log()
    );
    println!(
        "ip netns exec: {FRAMES} frames at {PPS}/s, killed at frame {killed_at}, restarted at \
         frame {restarted_at} (answering at {answered_at}): tc and xdp counted {FRAMES}, socket \
         {} (none went back)",
        sock.0
    );
    second.stop()?;
    Ok(())
}

#[test]
fn a_daemon_whose_pins_die_with_it_says_so() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("mortal")?;
    let scratch = ScratchDir::new("mortal")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"))
        .wrapped(&alone_in_private_mounts(UNMOUNT_BPFFS));
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    let client = daemon.client()?;
    client.ok(&[
        "new",
        "t",
        "interface",
        rig.interface(),
        "hook",
        "tc",
        "filter",
        "udp",
    ])?;
    let log = daemon.log();
    ensure!(
        log.contains("WARNING") && log.contains("which dies with it"),
        "the daemon did not warn that its pins die with it:\n{log}"
    );
    let session = client.show("t")?;
    ensure!(
        session.survives_daemon == Some(false),
        "--json show: {session:?}"
    );
    let shown = client.ok(&["show", "t"])?;
    ensure!(
        shown.contains("survives:") && shown.contains("dies with the daemon"),
        "show:\n{shown}"
    );
    let metrics = client.ok(&["poll", "--prometheus"])?;
    ensure!(
        metrics.lines().any(
            |l| l.starts_with("capstats_session_survives_daemon{session=\"t\"")
                && l.ends_with(" 0")
        ),
        "poll --prometheus:\n{metrics}"
    );
    ensure!(
        !spec.pin_dir.exists(),
        "the pins are on the test's bpffs, which outlives the daemon"
    );
    println!(
        "no durable bpffs: {}",
        log.lines().find(|l| l.contains("WARNING")).unwrap_or("")
    );
    // The outer unshare ignores SIGTERM: SIGKILL takes it and the daemon.
    daemon.kill()?;
    Ok(())
}

/// The pinned counter map of a session is there.
fn pinned(spec: &DaemonSpec, name: &str) -> bool {
    spec.pin_dir.join(name).join("counters").exists()
}

#[test]
fn a_start_that_cannot_reopen_its_pins_leaves_them() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("nofile")?;
    let scratch = ScratchDir::new("nofile")?;
    let spec =
        DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state")).keeping_pins(true);
    let _pins = spec.pin_guard();
    let client = spec.client()?;
    let frame = rig::udp_a_to_b(7000, 30);
    let len = frame.len() as u64;
    let sender = rig.sender_a()?;

    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    new_sessions(&client, rig.interface())?;
    sender.send_n(&frame, 10)?;
    client.settle("sock", 10, ARRIVAL, QUIET)?;
    // Killed: the table says 0 for every session; the kernel has 10, then tc and xdp
    // count 10 more while no daemon runs.
    first.kill()?;
    sender.send_n(&frame, 10)?;
    std::thread::sleep(QUIET);

    let mut refused = Vec::new();
    let mut started_at = None;
    for limit in 8..=64u32 {
        let nofile = format!("--nofile={limit}:{limit}");
        let short = spec.clone().wrapped(&["prlimit", &nofile, "--"]);
        let log = scratch.join(&format!("limit-{limit}.log"));
        match Daemon::start(&rig.ns_b, &short, &log) {
            Err(_) => {
                let text = std::fs::read_to_string(&log)?;
                for (name, _) in HOOKS {
                    ensure!(
                        pinned(&spec, name),
                        "a start with {limit} descriptors removed the pinned counters of \
                         {name}:\n{text}"
                    );
                }
                let why = text.lines().last().unwrap_or("").to_owned();
                println!("RLIMIT_NOFILE {limit}: {why}");
                refused.push((limit, text));
            }
            // It runs: enough descriptors. Done with short starts.
            Ok(daemon) => {
                daemon.kill()?;
                started_at = Some(limit);
                break;
            }
        }
    }
    let reopen = refused
        .iter()
        .find(|(_, log)| log.contains("cannot reopen its pinned counters"));
    ensure!(
        reopen.is_some(),
        "no start short of descriptors got as far as reopening the pins (refused at {:?}, \
         started at {started_at:?})",
        refused.iter().map(|(l, _)| l).collect::<Vec<_>>()
    );
    let (limit, log) = reopen.context("checked above")?;
    ensure!(
        log.contains("left in place"),
        "the refusal should say the pins are left in place:\n{log}"
    );

    let normal = Daemon::start(&rig.ns_b, &spec, &scratch.join("normal.log"))?;
    for name in ["tc-in", "tc-both", "xdp"] {
        let session = client.show(name)?;
        ensure!(
            counts(&session) == (20, 20 * len),
            "{name} after the short starts: {session:?}; log:\n{}",
            normal.log()
        );
    }
    let sock = client.show("sock")?;
    ensure!(counts(&sock) == (10, 10 * len), "sock: {sock:?}");
    println!(
        "RLIMIT_NOFILE: starts refused at {} limits (reopening the pins at {limit}), first \
         start at {started_at:?}; every pin left, counts 20/20/20/10 kept",
        refused.len()
    );
    normal.stop()?;
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_pin_directory_is_refused() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("pinlock")?;
    let scratch = ScratchDir::new("pinlock")?;
    let spec = DaemonSpec::new(scratch.join("a.sock"), scratch.join("a-state")).keeping_pins(true);
    let _pins = spec.pin_guard();
    let client = spec.client()?;
    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("a.log"))?;
    client.ok(&[
        "new",
        "t",
        "interface",
        rig.interface(),
        "hook",
        "tc",
        "filter",
        "udp",
    ])?;
    let frame = rig::udp_a_to_b(7000, 30);
    rig.sender_a()?.send_n(&frame, 5)?;
    client.settle("t", 5, ARRIVAL, QUIET)?;

    let mut other = DaemonSpec::new(scratch.join("b.sock"), scratch.join("b-state"));
    other.pin_dir = spec.pin_dir.clone();
    let outcome = Daemon::expect_exit(&rig.ns_b, &other, &scratch.join("b.log"))?;
    let pid = first.pid().context("the first daemon runs")?;
    ensure!(
        outcome.code == Some(1)
            && outcome
                .stderr
                .contains(&format!("another capstats daemon (pid {pid}: \""))
            && outcome.stderr.contains(&format!(
                "uses the pin directory {}",
                spec.pin_dir.display()
            )),
        "{outcome}"
    );
    ensure!(!other.socket.exists(), "the refused daemon left its socket");
    ensure!(
        pinned(&spec, "t"),
        "the refused daemon removed the first one's pins"
    );
    // The first daemon's pins are whole: counts carry on across its restart.
    first.kill()?;
    rig.sender_a()?.send_n(&frame, 5)?;
    let again = Daemon::start(&rig.ns_b, &spec, &scratch.join("a2.log"))?;
    let t = client.settle("t", 10, ARRIVAL, QUIET)?;
    ensure!(counts(&t) == (10, 10 * frame.len() as u64), "{t:?}");
    println!(
        "second daemon on the same pin directory: {}",
        outcome.stderr.lines().last().unwrap_or("")
    );
    again.stop()?;
    Ok(())
}

/// Writes `text` as the state file, mode 0600, in a state directory of mode 0700.
fn write_state(state_dir: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
    let path = state_dir.join("sessions.json");
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[test]
fn a_fifo_at_the_state_files_path_is_refused_at_once() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("fifo")?;
    let scratch = ScratchDir::new("fifo")?;
    for file in ["sessions.json", ".lock"] {
        let spec = DaemonSpec::new(
            scratch.join(&format!("{file}.sock")),
            scratch.join(&format!("{file}-state")),
        );
        let _pins = spec.pin_guard();
        std::fs::create_dir_all(&spec.state_dir)?;
        std::fs::set_permissions(&spec.state_dir, std::fs::Permissions::from_mode(0o700))?;
        let fifo = spec.state_dir.join(file);
        capstats_tests::cmd::run(std::process::Command::new("mkfifo").arg(&fifo))?;
        let started = Instant::now();
        let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join(&format!("{file}.log")))
            .with_context(|| format!("a FIFO at {}", fifo.display()))?;
        let took = started.elapsed();
        ensure!(
            outcome.code == Some(1) && outcome.stderr.contains("it is not a regular file"),
            "a FIFO at {file}: {outcome}"
        );
        ensure!(
            std::fs::symlink_metadata(&fifo)?.file_type().is_fifo(),
            "the FIFO at {file} was not left as it was"
        );
        println!(
            "FIFO at {file}: refused in {took:.0?}: {}",
            outcome.stderr.trim()
        );
    }
    Ok(())
}

/// A state file of one session.
fn table(interface: &str, hook: &str, direction: &str, packets: u64) -> String {
    format!(
        r#"{{"version":1,"sessions":[{{"name":"s","interface":"{interface}","filter":"udp","hook":"{hook}","direction":"{direction}","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z","packets":{packets},"bytes":{packets}}}]}}"#
    )
}

#[test]
fn the_state_file_is_checked_as_requests_are() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("statecheck")?;
    let scratch = ScratchDir::new("statecheck")?;
    for (case, text, why) in [
        (
            "alias",
            table("vb:junk", "socket", "both", 0),
            "interface names cannot contain ':'",
        ),
        (
            "direction",
            table(rig.interface(), "socket", "in", 0),
            "the socket hook counts both directions",
        ),
        (
            "xdp-out",
            table(rig.interface(), "xdp", "out", 0),
            "XDP sees received frames only",
        ),
        (
            "over",
            table(rig.interface(), "socket", "both", MAX_COUNT + 1),
            "more than could have been counted",
        ),
    ] {
        let spec = DaemonSpec::new(
            scratch.join(&format!("{case}.sock")),
            scratch.join(&format!("{case}-state")),
        );
        let _pins = spec.pin_guard();
        write_state(&spec.state_dir, &text)?;
        let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join(&format!("{case}.log")))?;
        ensure!(
            outcome.code == Some(1)
                && outcome.stderr.contains("left as it is")
                && outcome.stderr.contains(why),
            "{case}: {outcome}"
        );
        ensure!(
            std::fs::read_to_string(spec.state_dir.join("sessions.json"))? == text,
            "{case}: the state file was changed"
        );
        println!("{case}: {}", outcome.stderr.trim());
    }
    Ok(())
}

#[test]
fn a_daemon_reads_the_counts_it_wrote_even_at_the_limit() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("maxcount")?;
    let scratch = ScratchDir::new("maxcount")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins = spec.pin_guard();
    let client = spec.client()?;
    let near = MAX_COUNT - 5;
    write_state(
        &spec.state_dir,
        &table(rig.interface(), "socket", "both", near),
    )?;
    let first = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    let frame = rig::udp_a_to_b(7000, 30);
    rig.sender_a()?.send_n(&frame, 20)?;
    let s = client.settle("s", MAX_COUNT, ARRIVAL, QUIET)?;
    ensure!(counts(&s) == (MAX_COUNT, MAX_COUNT), "at the limit: {s:?}");
    first.stop()?;
    // The table it saved, at the limit, is one it reads.
    let second = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
    let s = client.show("s")?;
    ensure!(
        counts(&s) == (MAX_COUNT, MAX_COUNT),
        "after the restart: {s:?}"
    );
    rig.sender_a()?.send_n(&frame, 3)?;
    std::thread::sleep(QUIET);
    ensure!(
        counts(&client.show("s")?) == (MAX_COUNT, MAX_COUNT),
        "counts stay at the limit"
    );
    println!("packets {near} + 20 frames: {MAX_COUNT}, saved and read back");
    second.stop()?;
    Ok(())
}

/// What strace saw the daemon do, one call a line, in order.
struct Trace(Vec<String>);

impl Trace {
    /// The index of the first line from `from` on with every one of `parts`.
    fn find(&self, from: usize, parts: &[&str]) -> Option<usize> {
        (from..self.0.len()).find(|&i| parts.iter().all(|p| self.0[i].contains(p)))
    }
}

/// A change is answered only once it is on disk (issue 12: what was answered OK
/// survives `kill -9`, and a crash of the machine too): between one change's answer
/// and the next's, the new table is written to the temporary file and fsynced, renamed
/// over the table, and the state directory fsynced, in that order, before the answer
/// is written. Watched with strace on the running daemon (`-y` names each fd's file).
/// Then killed with `kill -9`, the daemon comes back with every change.
#[test]
fn a_change_is_on_disk_before_it_is_answered() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("durable")?;
    let scratch = ScratchDir::new("durable")?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state"));
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    let client = daemon.client()?;
    let interface = rig.interface();
    let pid = daemon.pid().context("the daemon runs")?;
    let trace_file = scratch.join("strace.txt");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "65536", "-o"])
        .arg(&trace_file)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,write,writev,sendmsg,sendto",
            "-p",
            &pid.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting strace (the test needs it: apt-get install strace)")?;
    let stop_strace = |strace: &mut std::process::Child| {
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
        strace.wait()
    };
    // Attached once it sees the daemon answer a `list`.
    let deadline = Instant::now() + ARRIVAL;
    loop {
        client.ok(&["list"])?;
        if std::fs::read_to_string(&trace_file).is_ok_and(|t| t.contains("\\\"ok\\\"")) {
            break;
        }
        if Instant::now() > deadline {
            let _ = stop_strace(&mut strace);
            bail!("strace did not attach to the daemon (pid {pid}) within {ARRIVAL:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tc = ["hook", "tc"];
    let xdp = ["hook", "xdp"];
    let changes: [Vec<&str>; 5] = [
        vec!["new", "d1", "interface", interface, "filter", "udp"],
        [
            &["new", "d2", "interface", interface][..],
            &tc,
            &["filter", "tcp"],
        ]
        .concat(),
        vec!["modify", "d1", "udp port 53"],
        vec!["stop", "d2"],
        [
            &["new", "d3", "interface", interface][..],
            &xdp,
            &["filter", "icmp"],
        ]
        .concat(),
    ];
    let result = changes
        .iter()
        .try_for_each(|args| client.ok(args).map(drop));
    stop_strace(&mut strace)?;
    result?;
    let trace = Trace(
        std::fs::read_to_string(&trace_file)?
            .lines()
            .map(str::to_owned)
            .collect(),
    );
    let state = spec.state_dir.display().to_string();
    let tmp = format!("{state}/.sessions.json.tmp");
    let table = format!("{state}/sessions.json");
    // Each change's answer: the session, by name, in a write to the client.
    let mut from = trace
        .find(0, &["\\\"ok\\\""])
        .context("no answer to `list` traced")?;
    for (args, name) in changes.iter().zip(["d1", "d2", "d1", "d2", "d3"]) {
        let shown = args.join(" ");
        let answer = trace
            .find(
                from + 1,
                &["\\\"ok\\\"", &format!("\\\"name\\\":\\\"{name}\\\"")],
            )
            .with_context(|| format!("`{shown}`: no answer traced"))?;
        let step = |from: usize, what: &str, parts: &[&str]| -> anyhow::Result<usize> {
            trace
                .find(from, parts)
                .filter(|&i| i < answer)
                .with_context(|| {
                    format!(
                        "`{shown}` was answered (trace line {}) before {what}; traced since \
                         the previous answer:\n{}",
                        answer + 1,
                        trace.0[from..=answer].join("\n")
                    )
                })
        };
        let written = step(
            from,
            "the new table was written",
            &["write", &format!("<{tmp}>")],
        )?;
        let synced = step(
            written,
            "the new table was fsynced",
            &["fsync(", &format!("<{tmp}>")],
        )?;
        let renamed = step(
            synced,
            "it was renamed over the table",
            &["rename", &format!("\"{tmp}\", "), &format!("\"{table}\"")],
        )?;
        step(
            renamed,
            "the state directory was fsynced",
            &["fsync(", &format!("<{state}>")],
        )?;
        from = answer;
    }
    println!("{} changes, each on disk before its answer", changes.len());
    // And what is on disk is every change: after `kill -9`, the table is back as the
    // answers left it.
    daemon.kill()?;
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("again.log"))?;
    let back: Vec<(String, String, String)> = client
        .poll()?
        .into_iter()
        .map(|s| (s.name, s.hook.as_str().to_owned(), s.filter))
        .collect();
    let want = [("d1", "socket", "udp port 53"), ("d3", "xdp", "icmp")]
        .map(|(n, h, f)| (n.to_owned(), h.to_owned(), f.to_owned()));
    ensure!(back == want, "after kill -9: {back:?}, expected {want:?}");
    daemon.stop()?;
    Ok(())
}
