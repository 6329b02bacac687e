//! Who may use the daemon, with real accounts: a group, a user whose primary group it
//! is, a user who has it as a supplementary group, and a user outside it (created with
//! `groupadd`/`useradd`, removed on drop). The client runs as each of them through
//! `setpriv --reuid --regid --init-groups`; the daemon decides from the kernel's record
//! of the peer (`SO_PEERCRED`, `SO_PEERGROUPS`), whatever the socket's mode.
//!
//! Without `-g`: only root; a user is refused with "permission denied", by the socket's
//! mode (0600) and, with the mode loosened on purpose (0666), by the daemon itself,
//! which logs the refusal. With `-g GROUP`: both members are served, the other user is
//! refused in the same two ways. A non-root `capstats -d` refuses to run.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use anyhow::{Context, ensure};
use capstats_tests::cmd;
use capstats_tests::daemon::rig::Rig;
use capstats_tests::daemon::{Client, Daemon, DaemonSpec, RunAs, binary};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_access";
/// Accounts of this test are named `cse2e-<pid>-<role>`; a later run removes those of
/// test processes that are gone.
const PREFIX: &str = "cse2e-";

/// A group that exists while this value does.
struct Group {
    name: String,
    gid: u32,
}

impl Group {
    fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        cmd::run(Command::new("groupadd").arg(&name))?;
        // Owned from here: a failure below removes it again.
        let mut group = Self {
            gid: 0,
            name: name.clone(),
        };
        let line = cmd::run(Command::new("getent").args(["group", &name]))?;
        let gid = line
            .split(':')
            .nth(2)
            .and_then(|gid| gid.trim().parse().ok())
            .with_context(|| format!("getent group {name} said {line:?}"))?;
        group.gid = gid;
        Ok(group)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("groupdel").arg(&self.name)) {
            eprintln!("warning: group {} was not removed: {e:#}", self.name);
        }
    }
}

/// A user without a home directory or login shell, removed on drop.
struct User {
    name: String,
    uid: u32,
    /// The primary group, for `setpriv --regid`.
    primary: String,
}

impl User {
    /// `primary`: the primary group (else `users`); `supplementary`: more groups.
    fn create(
        role: &str,
        primary: Option<&Group>,
        supplementary: &[&Group],
    ) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        let primary = primary.map_or("users", |g| g.name.as_str()).to_owned();
        let mut command = Command::new("useradd");
        command.args([
            "--no-create-home",
            "--no-user-group",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        command.args(["--gid", &primary]);
        if !supplementary.is_empty() {
            let groups: Vec<&str> = supplementary.iter().map(|g| g.name.as_str()).collect();
            command.args(["--groups", &groups.join(",")]);
        }
        cmd::run(command.arg(&name))?;
        // Owned from here: a failure below removes it again.
        let mut user = Self {
            name: name.clone(),
            uid: 0,
            primary,
        };
        let uid = cmd::run(Command::new("id").args(["-u", &name]))?
            .trim()
            .parse()
            .with_context(|| format!("id -u {name}"))?;
        user.uid = uid;
        Ok(user)
    }

    fn run_as(&self) -> RunAs {
        RunAs {
            user: self.name.clone(),
            group: self.primary.clone(),
        }
    }

    /// The groups the client will have: `id -G` run the way the client is.
    fn groups(&self) -> anyhow::Result<Vec<u32>> {
        let out = cmd::run(self.run_as().command("id".as_ref()).arg("-G"))?;
        out.split_whitespace()
            .map(|g| g.parse().context("id -G"))
            .collect()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("userdel").arg(&self.name)) {
            eprintln!("warning: user {} was not removed: {e:#}", self.name);
        }
    }
}

/// Removes users and groups of earlier runs whose test process is gone.
fn sweep_stale_accounts() {
    for (database, delete) in [("passwd", "userdel"), ("group", "groupdel")] {
        let Ok(text) = std::fs::read_to_string(format!("/etc/{database}")) else {
            continue;
        };
        for name in text.lines().filter_map(|l| l.split(':').next()) {
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = cmd::run(Command::new(delete).arg(name));
            }
        }
    }
}

/// The accounts of the test. Users drop before the group they belong to.
struct Accounts {
    primary: User,
    supplementary: User,
    outsider: User,
    group: Group,
}

impl Accounts {
    /// `tag` tells the accounts of tests running at once apart.
    fn create(tag: &str) -> anyhow::Result<Self> {
        sweep_stale_accounts();
        let group = Group::create(&format!("{tag}grp"))?;
        let primary = User::create(&format!("{tag}pri"), Some(&group), &[])?;
        let supplementary = User::create(&format!("{tag}sup"), None, &[&group])?;
        let outsider = User::create(&format!("{tag}out"), None, &[])?;
        Ok(Self {
            primary,
            supplementary,
            outsider,
            group,
        })
    }
}

fn mode(path: &std::path::Path) -> anyhow::Result<(u32, u32)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.permissions().mode() & 0o7777, meta.gid()))
}

fn loosen(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod 0666 {}", path.display()))
}

/// How often each refusal is tried: a refusal must say why every time, and a race
/// between the client's request and the daemon's answer shows only now and then.
const TRIES: usize = 100;

/// The client as `user` must be refused, [`TRIES`] times in a row: exit code 1 and
/// "permission denied" on stderr. Returns what it said.
fn refused(client: &Client, user: &User, by: &str) -> anyhow::Result<String> {
    let as_user = client.run_as(user.run_as());
    let mut said: Vec<(String, usize)> = Vec::new();
    for _ in 0..TRIES {
        let stderr = as_user.fails(&["list"])?.stderr;
        match said.iter_mut().find(|(text, _)| *text == stderr) {
            Some((_, count)) => *count += 1,
            None => said.push((stderr, 1)),
        }
    }
    ensure!(
        said.len() == 1 && said[0].0.to_lowercase().contains("permission denied"),
        "{} should be refused with \"permission denied\" ({by}); in {TRIES} tries the \
         client said (message, times): {said:?}",
        user.name
    );
    let stderr = said.remove(0).0;
    println!("{:<22} refused ({by}): {}", user.name, stderr.trim());
    Ok(stderr)
}

#[test]
fn only_root_and_the_group_may_use_the_daemon() -> anyhow::Result<()> {
    require_root(TEST);
    let accounts = Accounts::create("a")?;
    let Accounts {
        primary,
        supplementary,
        outsider,
        group,
    } = &accounts;
    // The accounts are what they should be.
    ensure!(
        primary.groups()? == vec![group.gid],
        "{}: {:?}",
        primary.name,
        primary.groups()?
    );
    ensure!(
        supplementary.groups()?.contains(&group.gid) && supplementary.groups()?[0] != group.gid,
        "{}: {:?}",
        supplementary.name,
        supplementary.groups()?
    );
    ensure!(
        !outsider.groups()?.contains(&group.gid),
        "{}: {:?}",
        outsider.name,
        outsider.groups()?
    );

    let rig = Rig::new("access")?;
    let scratch = ScratchDir::new("access")?;
    // Every account must reach the socket: the directory is 0755, the binary's too.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    let binary = binary()?;
    let others_may = |path: &std::path::Path, bits: u32| {
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & bits == bits)
    };
    ensure!(
        others_may(&binary, 0o005) && binary.ancestors().skip(1).all(|dir| others_may(dir, 0o001)),
        "the other accounts cannot run {}: it or a directory above it is closed to others",
        binary.display()
    );
    let interface = rig.interface();

    // Without -g: root only.
    let spec = DaemonSpec::new(scratch.join("root.sock"), scratch.join("root-state"));
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("root.log"))?;
    let client = daemon.client()?;
    client.ok(&["new", "s", "interface", interface, "filter", "udp"])?;
    ensure!(
        mode(&spec.socket)?.0 == 0o600,
        "socket mode {:o}",
        mode(&spec.socket)?.0
    );
    for user in [primary, supplementary, outsider] {
        refused(&client, user, "socket mode 0600")?;
    }
    loosen(&spec.socket)?;
    for user in [primary, supplementary, outsider] {
        let said = refused(&client, user, "no -g, socket mode 0666")?;
        ensure!(
            said.contains("only root may use this daemon"),
            "the daemon itself should refuse {}: {said}",
            user.name
        );
        ensure!(
            daemon
                .log()
                .contains(&format!("uid {}: permission denied", user.uid)),
            "the daemon did not log refusing uid {}:\n{}",
            user.uid,
            daemon.log()
        );
    }
    client.ok(&["show", "s"])?;
    daemon.stop()?;

    // With -g GROUP: root and the group's members.
    let spec = DaemonSpec::new(scratch.join("group.sock"), scratch.join("group-state"))
        .with_group(&group.name);
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("group.log"))?;
    let client = daemon.client()?;
    ensure!(
        mode(&spec.socket)? == (0o660, group.gid),
        "socket mode and group {:?}, expected (0o660, {})",
        mode(&spec.socket)?,
        group.gid
    );
    for (user, session) in [(primary, "by-primary"), (supplementary, "by-supplementary")] {
        let as_user = client.run_as(user.run_as());
        as_user.ok(&["new", session, "interface", interface, "filter", "udp"])?;
        as_user.ok(&["modify", session, "udp or tcp"])?;
        let shown = as_user.show(session)?;
        ensure!(shown.filter == "udp or tcp", "{shown:?}");
        ensure!(
            as_user.sessions(&["list"])?.len() == 1,
            "list as {}",
            user.name
        );
        as_user.ok(&["stop", session])?;
        println!("{:<22} served (member of {})", user.name, group.name);
    }
    refused(&client, outsider, "not in the group, socket mode 0660")?;
    loosen(&spec.socket)?;
    let said = refused(&client, outsider, "not in the group, socket mode 0666")?;
    ensure!(
        said.contains(&format!(
            "uid {} is neither root nor a member of group {} ({})",
            outsider.uid, group.name, group.gid
        )),
        "the daemon itself should refuse {}: {said}",
        outsider.name
    );
    ensure!(
        daemon.log().contains("refused client pid")
            && daemon
                .log()
                .contains(&format!("uid {}: permission denied", outsider.uid)),
        "the daemon did not log refusing uid {}:\n{}",
        outsider.uid,
        daemon.log()
    );
    // Members are still served with the socket loosened, and nobody changed anything.
    client.run_as(primary.run_as()).ok(&["list"])?;
    ensure!(
        client.sessions(&["list"])?.is_empty(),
        "sessions left behind"
    );
    daemon.stop()?;

    // A non-root daemon refuses to run.
    let mut command = rig.ns_b.command("setpriv");
    command
        .arg(format!("--reuid={}", outsider.name))
        .arg(format!("--regid={}", outsider.primary))
        .arg("--init-groups")
        .arg("--")
        .arg(&binary)
        .arg("-d")
        .arg("-s")
        .arg(scratch.join("user.sock"))
        .arg("--state-dir")
        .arg(scratch.join("user-state"));
    let outcome =
        capstats_tests::daemon::output_within(&mut command, std::time::Duration::from_secs(10))?;
    ensure!(
        outcome.code == Some(1) && outcome.stderr.contains("must run as root"),
        "capstats -d as {}: {outcome}",
        outsider.name
    );
    ensure!(
        !scratch.join("user.sock").exists(),
        "a refused daemon made a socket"
    );
    println!(
        "capstats -d as {}: {}",
        outsider.name,
        outcome.stderr.trim()
    );
    Ok(())
}

/// Runs `work` on a thread of its own that has `user`'s credentials (uid, groups as
/// `setpriv --init-groups` gives them), while the rest of the test stays root: Linux
/// keeps credentials per thread, and the raw system calls change only the calling
/// thread's (the C library's wrappers would change every thread's). What the thread
/// connects or binds is recorded by the kernel as `user`'s, as a process of that user
/// would be, and it has no capabilities left.
fn on_thread_as<T: Send + 'static>(
    user: &User,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
    let groups = user.groups()?;
    let uid = user.uid;
    let gid = *groups.first().context("the user has no group")?;
    Ok(std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's credentials, with a valid array.
        unsafe {
            ensure!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
                    && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                    && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0,
                "cannot take the credentials of uid {uid}: {}",
                std::io::Error::last_os_error()
            );
            ensure!(libc::geteuid() == uid && libc::getegid() == gid);
        }
        work()
    }))
}

/// The daemon's threads now.
fn threads(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Threads: in /proc/PID/status")
}

/// A daemon with `-g GROUP` whose socket is loosened to 0666 on purpose: strangers
/// can connect, and only the daemon's own check stands between them and it.
fn loosened_daemon(
    rig: &Rig,
    scratch: &ScratchDir,
    group: &Group,
    tag: &str,
) -> anyhow::Result<(Daemon, Client)> {
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    let spec = DaemonSpec::new(
        scratch.join(&format!("{tag}.sock")),
        scratch.join(&format!("{tag}-state")),
    )
    .with_group(&group.name);
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join(&format!("{tag}.log")))?;
    loosen(&spec.socket)?;
    let client = daemon.client()?;
    Ok((daemon, client))
}

/// Connections a stranger keeps open, or tries to: more than the daemon serves at once.
const STRANGER_CONNECTIONS: usize = 600;

/// A stranger opens [`STRANGER_CONNECTIONS`] connections and trickles a byte every
/// 0.5 s on each, reopening any the daemon closed, for 8 s (before, it held the 512
/// slots for as long as it liked: 76 s and counting). Meanwhile root and a member
/// must be served promptly, every time, and the daemon must start no thread for the
/// stranger.
#[test]
fn a_stranger_holds_no_slot() -> anyhow::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    require_root(TEST);
    let accounts = Accounts::create("t")?;
    let rig = Rig::new("accslot")?;
    let scratch = ScratchDir::new("accslot")?;
    let (daemon, client) = loosened_daemon(&rig, &scratch, &accounts.group, "slot")?;
    let pid = daemon.pid().context("the daemon runs")?;
    let threads_before = threads(pid)?;

    const ATTACK: Duration = Duration::from_secs(8);
    let attempts = std::sync::Arc::new(AtomicUsize::new(0));
    let socket = daemon.socket().to_owned();
    let stranger = on_thread_as(&accounts.outsider, {
        let attempts = std::sync::Arc::clone(&attempts);
        move || {
            let start = Instant::now();
            let mut held: Vec<Option<std::os::unix::net::UnixStream>> =
                (0..STRANGER_CONNECTIONS).map(|_| None).collect();
            // The most connections that took a byte after the daemon had had 0.5 s to
            // close them: the ones it let the stranger hold.
            let mut most_held = 0;
            let mut round = 0;
            while start.elapsed() < ATTACK {
                let mut alive = 0;
                for slot in &mut held {
                    if slot.is_none() {
                        *slot = Some(std::os::unix::net::UnixStream::connect(&socket)?);
                        attempts.fetch_add(1, Ordering::SeqCst);
                    } else if slot.as_mut().is_some_and(|s| s.write_all(b"x").is_ok()) {
                        alive += 1;
                    } else {
                        *slot = None;
                    }
                }
                if round > 0 {
                    most_held = most_held.max(alive);
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(most_held)
        }
    })?;
    while attempts.load(Ordering::SeqCst) < STRANGER_CONNECTIONS {
        ensure!(!stranger.is_finished(), "the stranger stopped early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let member = client.run_as(accounts.primary.run_as());
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    let mut most_threads = threads(pid)?;
    while !stranger.is_finished() {
        for (who, as_who) in [("root", &client), ("member", &member)] {
            let asked = Instant::now();
            as_who
                .ok(&["list"])
                .with_context(|| format!("{who}, while a stranger holds connections"))?;
            let took = asked.elapsed();
            ensure!(
                took < Duration::from_secs(2),
                "{who} waited {took:?} for a list while a stranger holds connections"
            );
            slowest = slowest.max(took);
            served += 1;
        }
        most_threads = most_threads.max(threads(pid)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let most_held = stranger.join().expect("the stranger's thread")?;
    let attempts = attempts.load(Ordering::SeqCst);
    println!(
        "a stranger made {attempts} connections over {ATTACK:?}, held at most {most_held} \
         past 0.5 s; root and a member served {served} times, the slowest in {slowest:?}; \
         daemon threads {threads_before} before, at most {most_threads} during"
    );
    ensure!(
        attempts > STRANGER_CONNECTIONS * 2,
        "the daemon should close the stranger's connections, which it reopens: {attempts} made"
    );
    ensure!(
        most_held == 0,
        "{most_held} of the stranger's connections were still open 0.5 s on"
    );
    // The members' requests run on the runtime's blocking threads while they are served.
    ensure!(
        most_threads <= threads_before + 2,
        "the daemon ran up to {most_threads} threads (from {threads_before}) for a stranger"
    );
    daemon.stop()?;
    Ok(())
}

/// A stranger connecting in a loop for 3 s (before: 35,664 log lines, 6 MB): each
/// attempt is refused and accounted for in the log, but in a few lines: the first
/// few in full, the rest in one summary line per interval.
#[test]
fn a_connect_loop_writes_few_log_lines() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    require_root(TEST);
    let accounts = Accounts::create("l")?;
    let rig = Rig::new("acclog")?;
    let scratch = ScratchDir::new("acclog")?;
    let (daemon, client) = loosened_daemon(&rig, &scratch, &accounts.group, "log")?;
    let socket = daemon.socket().to_owned();
    let stranger = on_thread_as(&accounts.outsider, move || {
        let start = Instant::now();
        let mut attempts = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            drop(std::os::unix::net::UnixStream::connect(&socket)?);
            attempts += 1;
        }
        Ok(attempts)
    })?;
    let attempts = stranger.join().expect("the stranger's thread")?;
    let uid = accounts.outsider.uid;
    let in_full = format!("uid {uid}: permission denied");
    let summary = format!(" more refused connections from uid {uid} suppressed");
    // Every attempt accounted for, once the interval's summary is written.
    let deadline = Instant::now() + Duration::from_secs(25);
    let (lines, logged, suppressed) = loop {
        let log = daemon.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&in_full) || l.contains(&summary))
            .collect();
        let logged = lines.iter().filter(|l| l.contains(&in_full)).count();
        let suppressed: usize = lines
            .iter()
            .filter_map(|l| l.split_once(&summary))
            .map(|(head, _)| head.rsplit(' ').next().unwrap_or("").parse::<usize>())
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .sum();
        if logged + suppressed >= attempts || Instant::now() > deadline {
            break (
                lines.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                logged,
                suppressed,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "a stranger connected {attempts} times in 3 s: {} log lines ({logged} in full, \
         {suppressed} counted in summaries); the first of them:\n{}",
        lines.len(),
        lines[..lines.len().min(10)].join("\n")
    );
    ensure!(
        lines.len() <= 8,
        "{} log lines for {attempts} refused connections",
        lines.len()
    );
    ensure!(
        logged + suppressed == attempts,
        "{attempts} connections, {logged} logged and {suppressed} suppressed"
    );
    ensure!(attempts > 100, "the loop made only {attempts} connections");
    // Root is still served.
    client.ok(&["list"])?;
    daemon.stop()?;
    Ok(())
}

/// A stranger's listener at the socket's path (a sticky directory anyone may create
/// files in, as /tmp), recording every request line it is sent until dropped.
struct Impostor {
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Impostor {
    fn listen(user: &User, path: &std::path::Path) -> anyhow::Result<Self> {
        use std::io::BufRead;
        use std::sync::atomic::Ordering;
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready, listening) = std::sync::mpsc::channel();
        let thread = on_thread_as(user, {
            let (requests, stop, path) = (requests.clone(), stop.clone(), path.to_owned());
            move || {
                let listener = std::os::unix::net::UnixListener::bind(&path);
                let _ = ready.send(listener.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                let listener = listener?;
                // Open to all, as an impostor wants it.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
                listener.set_nonblocking(true)?;
                while !stop.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    };
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(&stream).read_line(&mut line);
                    if !line.is_empty() {
                        requests.lock().unwrap().push(line);
                    }
                }
                Ok(())
            }
        })?;
        match listening.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("the stranger cannot listen at {}: {e}", path.display()),
            Err(_) => anyhow::bail!("the stranger's thread ended before listening"),
        }
        Ok(Self {
            requests,
            stop,
            thread: Some(thread),
        })
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops listening (its socket file stays, as a dead process's would).
    fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(ended)) => ended,
            Some(Err(_)) => anyhow::bail!("the stranger's listener panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A stranger listening at the socket's path in a sticky world-writable directory
/// (before: the daemon said "another capstats daemon (pid N) already answers", and
/// root's client sent it its request). The daemon refuses to start, naming the
/// stranger's uid; root's and a member's clients refuse to talk to it and send
/// nothing; the stranger's own client may (its uid's listener: documented). Once it
/// is gone, a daemon takes the path over (with a warning about the directory) and is
/// served as usual.
#[test]
fn only_a_root_listener_is_taken_for_the_daemon() -> anyhow::Result<()> {
    require_root(TEST);
    let accounts = Accounts::create("i")?;
    let rig = Rig::new("accimp")?;
    let scratch = ScratchDir::new("accimp")?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    let sticky = scratch.join("sticky");
    std::fs::create_dir(&sticky)?;
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777))?;
    let path = sticky.join("capstats.sock");
    let stranger = &accounts.outsider;
    let impostor = Impostor::listen(stranger, &path)?;
    ensure!(
        std::fs::symlink_metadata(&path)?.uid() == stranger.uid,
        "the stranger's socket is not its own"
    );

    // The daemon does not take the stranger for another daemon, nor its path.
    let spec = DaemonSpec::new(&path, scratch.join("state")).with_group(&accounts.group.name);
    let outcome = Daemon::expect_exit(&rig.ns_b, &spec, &scratch.join("refused.log"))?;
    ensure!(
        outcome.code == Some(1)
            && outcome
                .stderr
                .contains(&format!("uid {} (pid", stranger.uid))
            && outcome.stderr.contains("not root"),
        "capstats -d with a stranger listening on its socket: {outcome}"
    );
    println!("capstats -d: {}", outcome.stderr.trim());

    // Root's and a member's clients send it nothing.
    let root = Client::new(&path)?;
    let member = root.run_as(accounts.primary.run_as());
    for (who, client) in [("root", &root), ("member", &member)] {
        let said = client.fails(&["list"])?.stderr;
        ensure!(
            said.contains("refusing to talk to")
                && said.contains(&format!("runs as uid {}", stranger.uid)),
            "{who}'s client with a stranger listening: {said}"
        );
        println!("{who}'s client: {}", said.trim());
    }
    ensure!(
        impostor.requests().is_empty(),
        "the stranger was sent {:?}",
        impostor.requests()
    );
    // A user's client talks to a listener of its own uid.
    let _ = root.run_as(stranger.run_as()).fails(&["list"])?;
    ensure!(
        impostor.requests().len() == 1 && impostor.requests()[0].contains("list"),
        "the stranger's own client should have sent its request: {:?}",
        impostor.requests()
    );
    impostor.stop()?;

    // Gone: its socket file is stale, and a daemon takes the path.
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("daemon.log"))?;
    ensure!(std::fs::symlink_metadata(&path)?.uid() == 0);
    root.ok(&["list"])?;
    member.ok(&["list"])?;
    ensure!(
        daemon
            .log()
            .contains("warning: anyone may create files in the socket's directory"),
        "{}",
        daemon.log()
    );
    daemon.stop()?;
    Ok(())
}
