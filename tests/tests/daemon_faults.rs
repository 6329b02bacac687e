//! Faults around the daemon, each with a clear message and nothing lost:
//!
//! - bpffs not mounted: in a private mount namespace where /sys/fs/bpf is unmounted,
//!   the daemon pins on the bpffs of the namespace it was started from; where none is
//!   reachable, it mounts one, counts, and says its pins die with it; where it cannot
//!   be mounted, and where the pin directory is on another file system, it refuses to
//!   start, saying why, and leaves no socket behind.
//! - the state file unwritable (replaced by a directory, on a read-only mount) while
//!   the daemon runs: the change is made and the client is told it was not saved; the
//!   previous table stays as it was; the next save after the fault writes everything.
//!   A daemon that cannot save at shutdown exits 1 saying so. A full disk (a small
//!   tmpfs as the state directory, filled up): the same. A corrupt state file
//!   stops the daemon from starting, untouched, and the sessions come back once the
//!   file is.
//! - the socket's directory missing: made, mode 0755; a directory anyone may write to
//!   is refused.
//! - out of resources: a daemon short of file descriptors refuses `new` naming
//!   RLIMIT_NOFILE and its value, and keeps serving; programs over the kernel's size
//!   and complexity limits are refused naming BPF_COMPLEXITY_LIMIT_INSNS.
//!
//! (A second daemon: `daemon_restart`.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_common::protocol::Session;
use capstats_tests::cmd;
use capstats_tests::daemon::counts;
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{
    Client, Daemon, DaemonSpec, UNMOUNT_BPFFS, alone_in_private_mounts, in_private_mounts,
};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_faults";
const ARRIVAL: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(100);

fn wrapped(spec: DaemonSpec, wrapper: Vec<String>) -> DaemonSpec {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    spec.wrapped(&wrapper)
}

fn names(sessions: &[Session]) -> Vec<String> {
    sessions.iter().map(|s| s.name.clone()).collect()
}

#[test]
fn bpffs_not_mounted_is_mounted_or_named() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("bpffs")?;
    let scratch = ScratchDir::new("bpffs")?;

    // Unmounted in the daemon's own mount namespace, but mounted in the one it was
    // started from: the daemon pins there, where its pins outlive it.
    let spec = wrapped(
        DaemonSpec::new(scratch.join("o.sock"), scratch.join("o-state")),
        in_private_mounts(UNMOUNT_BPFFS),
    );
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("o.log"))?;
    let client = daemon.client()?;
    client.ok(&["new", "u", "interface", rig.interface(), "filter", "udp"])?;
    ensure!(
        spec.pin_dir.join("u").join("counters").exists()
            && client.show("u")?.survives_daemon == Some(true)
            && !daemon.log().contains("mounted bpffs"),
        "the daemon should pin on the bpffs of the namespace it was started from:\n{}",
        daemon.log()
    );
    println!(
        "bpffs unmounted here, mounted where started: {}",
        first_line(&daemon.log(), "pinning in")
    );
    daemon.stop()?;

    // Unmounted everywhere it can reach: it mounts bpffs, in its own mount namespace,
    // counts, and says its pins die with it.
    let spec = wrapped(
        DaemonSpec::new(scratch.join("a.sock"), scratch.join("a-state")),
        alone_in_private_mounts(UNMOUNT_BPFFS),
    );
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("a.log"))?;
    let client = daemon.client()?;
    ensure!(
        daemon.log().contains("mounted bpffs at /sys/fs/bpf"),
        "the daemon should say it mounted bpffs:\n{}",
        daemon.log()
    );
    client.ok(&["new", "u", "interface", rig.interface(), "filter", "udp"])?;
    let frame = rig::udp_a_to_b(53, 20);
    rig.sender_a()?.send_n(&frame, 7)?;
    let counted = client.settle("u", 7, ARRIVAL, QUIET)?;
    ensure!(
        counts(&counted) == (7, 7 * frame.len() as u64) && counted.survives_daemon == Some(false),
        "{counted:?}"
    );
    // Its pins are on the bpffs it mounted, not on the host's.
    ensure!(
        !spec.pin_dir.exists(),
        "{} appeared on the host's bpffs",
        spec.pin_dir.display()
    );
    println!("bpffs unmounted: {}", first_line(&daemon.log(), "bpffs"));
    daemon.kill()?;

    // Cannot be mounted: /sys/fs is hidden under an empty tmpfs, so no /sys/fs/bpf.
    let spec = wrapped(
        DaemonSpec::new(scratch.join("b.sock"), scratch.join("b-state")),
        alone_in_private_mounts(&format!(
            "{UNMOUNT_BPFFS}\nmount -t tmpfs -o ro none /sys/fs"
        )),
    );
    let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join("b.log"))?;
    ensure!(
        outcome.code == Some(1)
            && outcome.stderr.contains(&format!(
                "cannot mount bpffs at /sys/fs/bpf (needed for {})",
                spec.pin_dir.display()
            )),
        "{outcome}"
    );
    ensure!(!spec.socket.exists(), "a refused daemon left its socket");
    println!("bpffs cannot be mounted: {}", outcome.stderr.trim());

    // A pin directory on another file system.
    let mut spec = DaemonSpec::new(scratch.join("c.sock"), scratch.join("c-state"));
    spec.pin_dir = scratch.join("not-bpffs");
    let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join("c.log"))?;
    ensure!(
        outcome.code == Some(1)
            && outcome.stderr.contains(&format!(
                "pin directory {} is not on a bpffs; mount one there or choose another with --pin-dir",
                spec.pin_dir.display()
            )),
        "{outcome}"
    );
    ensure!(!spec.socket.exists(), "a refused daemon left its socket");
    println!("pin directory not on bpffs: {}", outcome.stderr.trim());
    Ok(())
}

fn first_line<'a>(log: &'a str, containing: &str) -> &'a str {
    log.lines().find(|l| l.contains(containing)).unwrap_or("")
}

/// `mount -o remount,bind,MODE DIR` in the daemon's mount namespace.
fn remount(daemon: &Daemon, dir: &Path, mode: &str) -> anyhow::Result<()> {
    let pid = daemon.pid().context("the daemon runs")?;
    cmd::run(Command::new("nsenter").args([
        &format!("--mount=/proc/{pid}/ns/mnt"),
        "--",
        "mount",
        "-o",
        &format!("remount,bind,{mode}"),
        dir.to_str().context("UTF-8 path")?,
    ]))
    .map(drop)
}

/// The session names in the state file.
fn saved_names(state_file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(state_file)
        .with_context(|| format!("reading {}", state_file.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    Ok(json["sessions"]
        .as_array()
        .context("no sessions array")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect())
}

/// The client must fail saying the change was made but not saved, and why.
fn not_saved(client: &Client, args: &[&str], why: &str) -> anyhow::Result<()> {
    let outcome = client.fails(args)?;
    ensure!(
        outcome
            .stderr
            .contains("the change was made, but the session table could not be saved")
            && outcome.stderr.contains(why),
        "`{}` should say it was not saved because {why:?}: {outcome}",
        args.join(" ")
    );
    println!("{:<28} -> {}", args.join(" "), outcome.stderr.trim());
    Ok(())
}

#[test]
fn an_unwritable_or_corrupt_state_file_loses_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("statefault")?;
    let scratch = ScratchDir::new("statefault")?;
    let state_dir = scratch.join("state");
    std::fs::create_dir(&state_dir)?;
    // The state directory is a mount point of its own in the daemon's mount namespace,
    // so that the test can make it read-only under the running daemon.
    let dir = state_dir.to_str().context("UTF-8 path")?;
    let spec = wrapped(
        DaemonSpec::new(scratch.join("capstats.sock"), &state_dir),
        in_private_mounts(&format!("mount --bind {dir} {dir}")),
    );
    let state_file = state_dir.join("sessions.json");
    let tmp = state_dir.join(".sessions.json.tmp");
    let interface = rig.interface();
    let frame = rig::udp_a_to_b(53, 20);
    let sender = rig.sender_a()?;

    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("first.log"))?;
    let client = daemon.client()?;
    for name in ["a", "b"] {
        client.ok(&["new", name, "interface", interface, "filter", "udp"])?;
    }
    sender.send_n(&frame, 5)?;
    client.settle("a", 5, ARRIVAL, QUIET)?;
    let five = (5, 5 * frame.len() as u64);

    // The state file replaced by a directory: `new` counts, and says it is not saved.
    std::fs::remove_file(&state_file)?;
    std::fs::create_dir(&state_file)?;
    not_saved(
        &client,
        &["new", "c", "interface", interface, "filter", "udp"],
        "it is a directory",
    )?;
    ensure!(
        names(&client.poll()?) == ["a", "b", "c"],
        "the change stands"
    );
    ensure!(
        state_file.is_dir() && std::fs::read_dir(&state_file)?.next().is_none(),
        "the directory in the way was touched"
    );
    ensure!(!tmp.exists(), "a failed save left {}", tmp.display());
    // Cleared: the next change saves the whole table.
    std::fs::remove_dir(&state_file)?;
    client.ok(&["modify", "a", "udp port 53"])?;
    ensure!(saved_names(&state_file)? == ["a", "b", "c"]);

    // A read-only state directory: `stop` stops, says it is not saved, the file is as
    // it was.
    let before = std::fs::read(&state_file)?;
    remount(&daemon, &state_dir, "ro")?;
    not_saved(&client, &["stop", "b"], "Read-only file system")?;
    ensure!(
        std::fs::read(&state_file)? == before,
        "a failed save changed {}",
        state_file.display()
    );
    ensure!(names(&client.poll()?) == ["a", "c"]);
    // Reads still work, and the counters are the kernel's, unharmed.
    ensure!(
        counts(&client.show("a")?) == five,
        "a: {:?}",
        client.show("a")?
    );
    remount(&daemon, &state_dir, "rw")?;
    client.ok(&["new", "d", "interface", interface, "filter", "tcp"])?;
    ensure!(saved_names(&state_file)? == ["a", "c", "d"]);

    // Read-only at shutdown: the daemon exits 1, saying the table was not saved.
    client.ok(&["modify", "d", "tcp port 80"])?;
    let saved = std::fs::read(&state_file)?;
    remount(&daemon, &state_dir, "ro")?;
    let error = daemon
        .stop()
        .err()
        .context("a daemon that could not save its table at shutdown should exit 1")?;
    let error = format!("{error:#}");
    ensure!(
        error.contains("exit status: 1")
            && error.contains("stopped, but the session table could not be saved")
            && error.contains("Read-only file system"),
        "{error}"
    );
    println!(
        "shutdown on a read-only state directory: {}",
        first_line(&error, "could not be saved").trim()
    );
    ensure!(std::fs::read(&state_file)? == saved);

    // A corrupt state file: the daemon refuses to start, and leaves it.
    let good = std::fs::read(&state_file)?;
    let corrupt = b"{\"version\":1,\"sessions\":[{\"name\":\"a\",";
    std::fs::write(&state_file, corrupt)?;
    let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join("corrupt.log"))?;
    ensure!(
        outcome.code == Some(1)
            && outcome.stderr.contains(&format!(
                "state file {} is not a capstats session table",
                state_file.display()
            ))
            && outcome.stderr.contains("left as it is"),
        "{outcome}"
    );
    ensure!(
        std::fs::read(&state_file)? == corrupt,
        "the file was touched"
    );
    ensure!(!spec.socket.exists(), "a refused daemon left its socket");
    println!("corrupt state file: {}", outcome.stderr.trim());

    // Put back, the table comes back whole, counters included.
    std::fs::write(&state_file, &good)?;
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("second.log"))?;
    let back = client.poll()?;
    ensure!(names(&back) == ["a", "c", "d"], "{back:?}");
    let a = back.iter().find(|s| s.name == "a").context("a")?;
    ensure!(
        counts(a) == five && a.filter == "udp port 53",
        "a after the restore: {a:?}"
    );
    daemon.stop()?;
    Ok(())
}

#[test]
fn a_missing_socket_directory_is_made_and_an_open_one_refused() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("sockdir")?;
    let scratch = ScratchDir::new("sockdir")?;
    let socket = scratch.join("run/capstats/capstats.sock");
    let spec = DaemonSpec::new(&socket, scratch.join("state"));
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("a.log"))?;
    for dir in [scratch.join("run"), scratch.join("run/capstats")] {
        let meta = std::fs::metadata(&dir)?;
        ensure!(
            meta.is_dir() && meta.mode() & 0o7777 == 0o755 && meta.uid() == 0,
            "{}: mode {:o}, uid {}",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    let mode = std::fs::metadata(&socket)?.mode() & 0o7777;
    ensure!(mode == 0o600, "socket mode {mode:o}");
    daemon.client()?.ok(&["list"])?;
    daemon.stop()?;
    ensure!(!socket.exists(), "the stopped daemon left its socket");

    // A directory anyone may write to, without the sticky bit: anyone could replace
    // the socket. Refused; with the sticky bit (as /tmp) it is fine.
    let open = scratch.join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
    let spec = DaemonSpec::new(open.join("capstats.sock"), scratch.join("state"));
    let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join("b.log"))?;
    ensure!(
        outcome.code == Some(1)
            && outcome.stderr.contains(&format!(
                "refusing to listen in {}: anyone may write to it (mode 0777, not sticky)",
                open.display()
            )),
        "{outcome}"
    );
    ensure!(!spec.socket.exists(), "a refused daemon made its socket");
    println!("open socket directory: {}", outcome.stderr.trim());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777))?;
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("c.log"))?;
    daemon.stop()?;
    Ok(())
}

#[test]
fn a_daemon_short_of_file_descriptors_says_which_limit() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("nofile")?;
    let scratch = ScratchDir::new("nofile")?;
    // A soft limit below the hard one is raised to it, before sessions are restored.
    let raised = DaemonSpec::new(scratch.join("raised.sock"), scratch.join("raised-state"))
        .wrapped(&["prlimit", "--nofile=64:2048", "--"]);
    let daemon = Daemon::start(&rig.ns_b, &raised, &scratch.join("raised.log"))?;
    let limits = std::fs::read_to_string(format!(
        "/proc/{}/limits",
        daemon.pid().context("the daemon runs")?
    ))?;
    ensure!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "2048").count() == 2),
        "the soft limit should be raised to the hard one:\n{limits}"
    );
    ensure!(
        daemon
            .log()
            .contains("open files: up to 2048 (RLIMIT_NOFILE)"),
        "{}",
        daemon.log()
    );
    daemon.stop()?;
    const LIMIT: u32 = 96;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), scratch.join("state")).wrapped(&[
        "prlimit",
        &format!("--nofile={LIMIT}:{LIMIT}"),
        "--",
    ]);
    let _pins = spec.pin_guard();
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    let client = daemon.client()?;
    ensure!(
        daemon
            .log()
            .contains(&format!("open files: up to {LIMIT} (RLIMIT_NOFILE)")),
        "{}",
        daemon.log()
    );
    let interface = rig.interface();
    let mut created = Vec::new();
    let refusal = loop {
        ensure!(
            created.len() < LIMIT as usize,
            "{} sessions created under a limit of {LIMIT} descriptors and none refused",
            created.len()
        );
        let name = format!("s{}", created.len());
        let outcome = client.run(&["new", &name, "interface", interface, "filter", "udp"])?;
        if outcome.code != Some(0) {
            break outcome;
        }
        created.push(name);
    };
    ensure!(
        refusal.code == Some(1)
            && refusal.stderr.contains(&format!(
                "may have {LIMIT} (RLIMIT_NOFILE); a session needs several"
            ))
            && refusal.stderr.contains("raise the daemon's limit"),
        "after {} sessions: {refusal}",
        created.len()
    );
    ensure!(!created.is_empty(), "no session at all under {LIMIT}");
    println!(
        "{LIMIT} descriptors: {} sessions, then {}",
        created.len(),
        refusal.stderr.trim()
    );
    // Nothing else changed, everything still counts, and room made is room to use.
    let frame = rig::udp_a_to_b(53, 20);
    rig.sender_a()?.send_n(&frame, 3)?;
    client.settle(&created[0], 3, ARRIVAL, QUIET)?;
    let polled = client.poll()?;
    created.sort();
    ensure!(names(&polled) == created, "{:?}", names(&polled));
    ensure!(
        polled
            .iter()
            .all(|s| s.up && counts(s) == (3, 3 * frame.len() as u64)),
        "{polled:?}"
    );
    client.ok(&["stop", &created[0]])?;
    client.ok(&["new", "again", "interface", interface, "filter", "udp"])?;
    ensure!(daemon.log().contains("cannot create session"));
    daemon.stop()?;
    Ok(())
}

#[test]
fn programs_over_the_kernels_limits_are_refused_naming_the_limit() -> anyhow::Result<()> {
    use capstats_ebpf::insn::build::{alu64, mov64};
    use capstats_ebpf::insn::{AluOp, Insn, JmpOp, Operand, Reg, Target, Width};
    use capstats_ebpf::program::{KERNEL_MAX_INSNS, LoadedProgram};
    use capstats_ebpf::translate::Hook;
    require_root(TEST);

    // One instruction too many: refused before the verifier runs.
    let mut long = vec![mov64(Reg::R0, Operand::Imm(0)); KERNEL_MAX_INSNS];
    long.push(Insn::Exit);
    let error = LoadedProgram::load(Hook::Socket, "too_long", &long)
        .err()
        .context("a program of 1,000,001 instructions loaded")?
        .to_string();
    ensure!(
        error.contains(&format!(
            "the program has {} instructions; the kernel takes at most {KERNEL_MAX_INSNS} \
             (BPF_COMPLEXITY_LIMIT_INSNS)",
            KERNEL_MAX_INSNS + 1
        )),
        "{error}"
    );
    println!("too long: {error}");

    // Short, but the verifier walks a 2,000,000-round loop and gives up.
    let looping = [
        mov64(Reg::R1, Operand::Imm(0)),
        alu64(AluOp::Add, Reg::R1, Operand::Imm(1)),
        Insn::Branch {
            width: Width::W64,
            op: JmpOp::Lt,
            dst: Reg::R1,
            src: Operand::Imm(2_000_000),
            target: Target::Offset(-2),
        },
        mov64(Reg::R0, Operand::Imm(0)),
        Insn::Exit,
    ];
    let error = LoadedProgram::load(Hook::Socket, "too_complex", &looping)
        .err()
        .context("a 2,000,000-round loop passed the verifier")?
        .to_string();
    ensure!(
        error.contains("the filter is too complex")
            && error.contains("BPF_COMPLEXITY_LIMIT_INSNS")
            && error.contains("BPF program is too large"),
        "{error}"
    );
    println!("too complex: {}", error.lines().next().unwrap_or(""));

    // Memory is not tried live: a BPF allocation over the memory cgroup's limit may
    // call the cgroup's OOM killer, which would pick the daemon (and the test's own
    // cgroup is not ours to limit). The words for it, and for the descriptor limit a
    // program load can also meet:
    let hint =
        |errno| capstats_ebpf::program::limit_hint(&std::io::Error::from_raw_os_error(errno), None);
    let memory = hint(libc::ENOMEM);
    ensure!(
        (memory.contains("memory.max of /sys/fs/cgroup/")
            || memory.contains("memory.limit_in_bytes of /sys/fs/cgroup/memory/"))
            && memory.contains("RLIMIT_MEMLOCK"),
        "{memory}"
    );
    let fds = hint(libc::EMFILE);
    ensure!(fds.contains("(RLIMIT_NOFILE)"), "{fds}");
    println!("ENOMEM:{memory}\nEMFILE:{fds}");
    Ok(())
}

#[test]
fn a_full_disk_loses_nothing() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("diskfull")?;
    let scratch = ScratchDir::new("diskfull")?;
    let state_dir = scratch.join("state");
    std::fs::create_dir(&state_dir)?;
    // A 64 KiB tmpfs as the state directory, in the daemon's mount namespace only.
    let dir = state_dir.to_str().context("UTF-8 path")?;
    let spec = wrapped(
        DaemonSpec::new(scratch.join("capstats.sock"), &state_dir),
        in_private_mounts(&format!("mount -t tmpfs -o size=64k,mode=0700 none {dir}")),
    );
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    let client = daemon.client()?;
    let interface = rig.interface();
    client.ok(&["new", "a", "interface", interface, "filter", "udp"])?;
    // The daemon's view of its state directory: the tmpfs.
    let pid = daemon.pid().context("the daemon runs")?;
    let seen = Path::new(&format!("/proc/{pid}/root")).join(state_dir.strip_prefix("/")?);
    let state_file = seen.join("sessions.json");
    ensure!(
        saved_names(&state_file)? == ["a"],
        "the tmpfs is not the daemon's"
    );
    // Fill it.
    let filler = seen.join("filler");
    let mut file = std::fs::File::create(&filler)?;
    let block = vec![0u8; 4096];
    loop {
        match std::io::Write::write_all(&mut file, &block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    drop(file);
    let before = std::fs::read(&state_file)?;
    not_saved(
        &client,
        &["new", "b", "interface", interface, "filter", "tcp"],
        "No space left on device",
    )?;
    ensure!(
        std::fs::read(&state_file)? == before,
        "a failed save changed the table"
    );
    ensure!(
        !seen.join(".sessions.json.tmp").exists(),
        "a failed save left its temporary file"
    );
    ensure!(names(&client.poll()?) == ["a", "b"]);
    std::fs::remove_file(&filler)?;
    client.ok(&["modify", "b", "tcp port 80"])?;
    ensure!(saved_names(&state_file)? == ["a", "b"]);
    daemon.stop()?;
    Ok(())
}
