//! What the daemon trusts on disk, and what it refuses.
//!
//! - Symbolic links are never followed where the daemon writes or reads its own files:
//!   a link planted at the socket path, the state directory, the state file, its lock
//!   or the pin directory makes the daemon refuse to start, naming the path; one at the
//!   temporary file is removed, not followed. Each link points at a file elsewhere,
//!   which must stay byte for byte and mode for mode as it was.
//! - Files are created with safe modes: socket 0600 (0660 with `-g`, see
//!   `daemon_access`), state directory 0700, state file and lock 0600, pin directory
//!   and each session's 0700. A state directory of another account, or a state file
//!   others may write to, is refused.
//! - A state file written by root is checked on load: an invalid name, an unknown
//!   hook, duplicate names, impossible counts are refused with the reason and the
//!   file left as it is; a filter that no longer compiles leaves that session down,
//!   with its counters and a message, and the others counting. Never a panic.
//!
//! - The log cannot be forged: a filter spanning lines (libpcap takes a newline as a
//!   space) is logged as one line, its control characters escaped.
//!
//! (Peer credentials with a loosened socket mode: `daemon_access`.)

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use capstats_tests::daemon::rig::{self, Rig};
use capstats_tests::daemon::{Daemon, DaemonSpec, Outcome};
use capstats_tests::require_root;
use capstats_tests::scratch::ScratchDir;

const TEST: &str = "daemon_security";

/// A file that must not change: its bytes and mode, checked with [`Victim::untouched`].
struct Victim {
    path: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
}

impl Victim {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        // A valid, empty session table: if the daemon read it, it would start.
        let bytes = br#"{"version":1,"sessions":[]}"#.to_vec();
        std::fs::write(&path, &bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(Self {
            path,
            bytes,
            mode: 0o644,
        })
    }

    fn untouched(&self, after: &str) -> anyhow::Result<()> {
        let meta = std::fs::symlink_metadata(&self.path)?;
        ensure!(
            meta.is_file()
                && meta.mode() & 0o7777 == self.mode
                && std::fs::read(&self.path)? == self.bytes,
            "{} changed after {after}",
            self.path.display()
        );
        Ok(())
    }
}

fn refused(rig: &Rig, spec: &DaemonSpec, log: &Path, says: &str) -> anyhow::Result<Outcome> {
    let outcome = Daemon::expect_exit(&rig.ns_b, spec, log)?;
    ensure!(
        outcome.code == Some(1)
            && outcome.stderr.contains(says)
            && !outcome.stderr.contains("panicked"),
        "the daemon should refuse to start saying {says:?}: {outcome}"
    );
    ensure!(
        !spec.socket.exists() || spec.socket.is_symlink(),
        "a refused daemon left its socket at {}",
        spec.socket.display()
    );
    println!("{}", outcome.stderr.trim());
    Ok(outcome)
}

#[test]
fn symbolic_links_are_never_followed() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("links")?;
    let scratch = ScratchDir::new("links")?;
    let victim = Victim::create(scratch.join("victim"))?;
    let fresh = |tag: &str| {
        let state = scratch.join(&format!("{tag}-state"));
        (
            DaemonSpec::new(scratch.join(&format!("{tag}.sock")), &state),
            state,
        )
    };

    // At the socket path.
    let (spec, _) = fresh("socket");
    symlink(&victim.path, &spec.socket)?;
    refused(
        &rig,
        &spec,
        &scratch.join("socket.log"),
        &format!(
            "refusing to use {}: it is a symbolic link",
            spec.socket.display()
        ),
    )?;
    victim.untouched("a link at the socket path")?;
    ensure!(spec.socket.is_symlink(), "the link was removed or replaced");

    // The state directory itself.
    let elsewhere = scratch.join("elsewhere");
    std::fs::create_dir(&elsewhere)?;
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755))?;
    let (spec, state) = fresh("statedir");
    symlink(&elsewhere, &state)?;
    refused(
        &rig,
        &spec,
        &scratch.join("statedir.log"),
        &format!(
            "cannot use state directory {}: it is a symbolic link",
            state.display()
        ),
    )?;
    ensure!(
        std::fs::read_dir(&elsewhere)?.next().is_none()
            && std::fs::metadata(&elsewhere)?.mode() & 0o7777 == 0o755,
        "the daemon wrote to or changed the directory the link points at"
    );

    // The state file, the lock.
    for (file, what) in [("sessions.json", "state file"), (".lock", "lock")] {
        let (spec, state) = fresh(&what.replace(' ', "-"));
        std::fs::create_dir(&state)?;
        symlink(&victim.path, state.join(file))?;
        refused(
            &rig,
            &spec,
            &scratch.join(&format!("{file}.log")),
            &format!(
                "refusing to use {}: it is a symbolic link, which capstats never follows there",
                state.join(file).display()
            ),
        )?;
        victim.untouched(&format!("a link at the {what}"))?;
    }

    // The pin directory.
    let (spec, _) = fresh("pins");
    let real_pins = PathBuf::from(format!("{}-real", spec.pin_dir.display()));
    let _guards = (spec.pin_guard(), {
        let mut guarded = spec.clone();
        guarded.pin_dir = real_pins.clone();
        guarded.pin_guard()
    });
    std::fs::create_dir(&real_pins)?;
    symlink(&real_pins, &spec.pin_dir)?;
    refused(
        &rig,
        &spec,
        &scratch.join("pins.log"),
        &format!(
            "refusing to use pin directory {}: it is a symbolic link",
            spec.pin_dir.display()
        ),
    )?;
    ensure!(std::fs::read_dir(&real_pins)?.next().is_none());

    // The temporary file of a save: the link is unlinked, never written through, and
    // the table is saved.
    let (spec, state) = fresh("tmp");
    std::fs::create_dir(&state)?;
    symlink(&victim.path, state.join(".sessions.json.tmp"))?;
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("tmp.log"))?;
    daemon
        .client()?
        .ok(&["new", "t", "interface", rig.interface(), "filter", "udp"])?;
    victim.untouched("a link at the temporary file")?;
    let saved = std::fs::read_to_string(state.join("sessions.json"))?;
    // Read as JSON: the table is written compact (it was indented).
    let table: serde_json::Value = serde_json::from_str(&saved).context("the saved table")?;
    let names: Vec<&str> = table["sessions"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        names == ["t"] && !state.join(".sessions.json.tmp").exists(),
        "{saved}"
    );
    daemon.stop()?;
    victim.untouched("the daemon's shutdown")?;
    Ok(())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| path.display().to_string())?
        .mode()
        & 0o7777)
}

#[test]
fn files_are_created_with_safe_modes_and_others_files_refused() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("modes")?;
    let scratch = ScratchDir::new("modes")?;
    // The state directory exists, too open: it is closed to 0700.
    let state = scratch.join("state");
    std::fs::create_dir(&state)?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))?;
    let spec = DaemonSpec::new(scratch.join("capstats.sock"), &state);
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("a.log"))?;
    daemon
        .client()?
        .ok(&["new", "m/1", "interface", rig.interface(), "filter", "udp"])?;
    let session_pins = spec.pin_dir.join("m%2F1");
    let expected = [
        (spec.socket.clone(), 0o600),
        (state.clone(), 0o700),
        (state.join("sessions.json"), 0o600),
        (state.join(".lock"), 0o600),
        (spec.pin_dir.clone(), 0o700),
        (session_pins.clone(), 0o700),
    ];
    for (path, want) in &expected {
        let have = mode(path)?;
        ensure!(
            have == *want && std::fs::symlink_metadata(path)?.uid() == 0,
            "{}: mode {have:04o}, expected {want:04o}, owned by root",
            path.display()
        );
        println!("{:04o} {}", have, path.display());
    }
    daemon.stop()?;

    // A state directory another account owns: whoever owns it controls the table.
    let theirs = scratch.join("theirs");
    std::fs::create_dir(&theirs)?;
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534))?;
    refused(
        &rig,
        &DaemonSpec::new(scratch.join("theirs.sock"), &theirs),
        &scratch.join("theirs.log"),
        &format!(
            "cannot use state directory {}: it belongs to uid 65534, not to the daemon's uid 0",
            theirs.display()
        ),
    )?;
    ensure!(std::fs::read_dir(&theirs)?.next().is_none());

    // A state file others may write to, or another account's.
    let file = state.join("sessions.json");
    let before = std::fs::read(&file)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    refused(
        &rig,
        &spec,
        &scratch.join("open.log"),
        &format!(
            "refusing to use {}: others may write it (mode 0666)",
            file.display()
        ),
    )?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&file, Some(65534), None)?;
    refused(
        &rig,
        &spec,
        &scratch.join("owned.log"),
        &format!(
            "refusing to use {}: it belongs to uid 65534, not to the daemon's uid 0",
            file.display()
        ),
    )?;
    ensure!(
        std::fs::read(&file)? == before,
        "a refused file was changed"
    );
    std::os::unix::fs::chown(&file, Some(0), None)?;
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("b.log"))?;
    ensure!(daemon.client()?.poll()?.len() == 1);
    daemon.stop()?;
    Ok(())
}

/// A saved session as JSON, with `fields` replacing or adding fields.
fn session(name: &str, interface: &str, fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut s = serde_json::json!({
        "name": name,
        "interface": interface,
        "filter": "udp",
        "hook": "socket",
        "direction": "both",
        "created": "2026-11-26T03:00:00Z",
        "modified": "2026-11-26T03:00:00Z",
        "packets": 4,
        "bytes": 400,
        "base_packets": 4,
        "base_bytes": 400
    });
    for (key, value) in fields {
        s[*key] = value.clone();
    }
    s
}

fn table(sessions: Vec<serde_json::Value>) -> String {
    serde_json::json!({ "version": 1, "sessions": sessions }).to_string()
}

fn write_state(state: &Path, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(state)?;
    let file = state.join("sessions.json");
    std::fs::write(&file, text)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[test]
fn a_state_file_is_checked_on_load() -> anyhow::Result<()> {
    require_root(TEST);
    let rig = Rig::new("validate")?;
    let scratch = ScratchDir::new("validate")?;
    let interface = rig.interface();
    let good = session("good", interface, &[]);
    // (what, the table, what the refusal says)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an invalid name",
            table(vec![good.clone(), session("a b", interface, &[])]),
            "session name \"a b\" contains a space",
        ),
        (
            "a name with a newline",
            table(vec![session("a\nb", interface, &[])]),
            "contains a newline",
        ),
        (
            "an unknown hook",
            table(vec![session("h", interface, &[("hook", "bogus".into())])]),
            "unknown variant `bogus`",
        ),
        (
            "duplicate names",
            table(vec![good.clone(), good.clone()]),
            "session \"good\" appears twice",
        ),
        (
            "an impossible count",
            table(vec![session(
                "n",
                interface,
                &[("packets", u64::MAX.into())],
            )]),
            "packets 18446744073709551615 is more than could have been counted",
        ),
        (
            "a base above its total",
            table(vec![session("n", interface, &[("base_bytes", 401.into())])]),
            "base_bytes 401 exceeds bytes 400",
        ),
        (
            "a negative count",
            table(vec![session("n", interface, &[("packets", (-1).into())])]),
            "invalid value: integer `-1`",
        ),
        (
            "an interface path",
            table(vec![session("n", "../../etc", &[])]),
            "interface name \"../../etc\"",
        ),
        (
            "a filter with a NUL byte",
            table(vec![session(
                "n",
                interface,
                &[("filter", "udp\u{0}".into())],
            )]),
            "the filter contains a NUL byte",
        ),
        (
            "unknown fields",
            table(vec![session(
                "n",
                interface,
                &[("owner", "mallory".into())],
            )]),
            "unknown field `owner`",
        ),
        (
            "a huge number",
            r#"{"version":1e999,"sessions":[]}"#.into(),
            "not a capstats session table",
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "not a capstats session table",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, says)) in cases.iter().enumerate() {
        let state = scratch.join(&format!("state-{i}"));
        let file = write_state(&state, text)?;
        let spec = DaemonSpec::new(scratch.join(&format!("{i}.sock")), &state);
        match refused(&rig, &spec, &scratch.join(&format!("{i}.log")), says) {
            Ok(outcome) if outcome.stderr.contains("left as it is") => {}
            Ok(outcome) => failures.push(format!("{what}: not said to be left: {outcome}")),
            Err(e) => failures.push(format!("{what}: {e:#}")),
        }
        if std::fs::read_to_string(&file)? != *text {
            failures.push(format!("{what}: the file was changed"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    // A filter that no longer compiles (written by an older libpcap, say): that session
    // is restored down, with its counters and the reason; the others count.
    let state = scratch.join("state-filter");
    write_state(
        &state,
        &table(vec![
            good,
            session("bad", interface, &[("filter", "tcp port".into())]),
            session("gone", "nosuch0", &[]),
        ]),
    )?;
    let spec = DaemonSpec::new(scratch.join("filter.sock"), &state);
    let daemon = Daemon::start(&rig.ns_b, &spec, &scratch.join("filter.log"))?;
    let client = daemon.client()?;
    let log = daemon.log();
    ensure!(
        log.contains("session \"bad\" restored down:") && log.contains("syntax error"),
        "{log}"
    );
    ensure!(log.contains("session \"gone\" restored down:"), "{log}");
    let frame = rig::udp_a_to_b(53, 20);
    rig.sender_a()?.send_n(&frame, 2)?;
    let good = client.settle(
        "good",
        6,
        Duration::from_secs(10),
        Duration::from_millis(100),
    )?;
    ensure!(
        good.up && good.bytes == Some(400 + 2 * frame.len() as u64),
        "{good:?}"
    );
    for name in ["bad", "gone"] {
        let s = client.show(name)?;
        ensure!(
            !s.up && s.packets == Some(4) && s.bytes == Some(400),
            "{name} should be down with its counters: {s:?}"
        );
    }
    // Mended with `modify`, it counts.
    client.ok(&["modify", "bad", "udp"])?;
    ensure!(client.show("bad")?.up);
    println!(
        "restored down: {}",
        log.lines()
            .filter(|l| l.contains("restored down"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    ensure!(!daemon.log().contains("panicked"), "{}", daemon.log());
    daemon.stop()?;
    Ok(())
}

#[test]
fn a_filter_cannot_forge_a_log_line() -> anyhow::Result<()> {
    require_root(TEST);
    let setup = capstats_tests::daemon::rig::Setup::start("forge")?;
    // libpcap takes newlines and carriage returns as spaces; what follows must still
    // be an expression, so the "forged line" here is a harmless one. (Escape
    // sequences, which libpcap refuses, are escaped too: the daemon's unit test.)
    let filter = "udp or\ntcp port 80\r";
    setup.client.ok(&[
        "new",
        "f",
        "interface",
        setup.rig.interface(),
        "filter",
        filter,
    ])?;
    ensure!(
        setup.client.show("f")?.filter == filter,
        "the filter is kept as given"
    );
    let log = setup.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("new session \"f\""))
        .with_context(|| format!("no log line for the session:\n{log}"))?;
    ensure!(
        line.ends_with("udp or\\ntcp port 80\\r"),
        "the filter should be logged escaped, on one line: {line:?}"
    );
    ensure!(
        log.lines()
            .all(|l| l.starts_with("20") && l.contains(" capstats: ")),
        "a log line without a timestamp:\n{log}"
    );
    println!("{line}");
    Ok(())
}
