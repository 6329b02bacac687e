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
    fn create() -> anyhow::Result<Self> {
        sweep_stale_accounts();
        let group = Group::create("grp")?;
        let primary = User::create("pri", Some(&group), &[])?;
        let supplementary = User::create("sup", None, &[&group])?;
        let outsider = User::create("out", None, &[])?;
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
    let accounts = Accounts::create()?;
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
