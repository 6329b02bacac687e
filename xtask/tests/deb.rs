//! `cargo xtask deb`: the package, extracted with `dpkg-deb -x` into a scratch root,
//! holds a binary that runs (`--version`, `test` on a corpus capture), a unit that
//! `systemd-analyze verify` accepts and whose paths are in the package, the group the
//! unit names, capstats(8) where `man` finds it, and the completion scripts where the
//! shells look. Packages the `capstats` binary of this profile, which must be built
//! first (`cargo build -p capstats-cli`); needs root (for `capstats test`), dpkg-dev,
//! man-db and systemd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: Output) -> String {
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn corpus_file() -> PathBuf {
    capstats_testkit::corpus::file("pcap/libpcap-filter/dhcp-rfc3004.pcap").unwrap()
}

#[test]
fn the_package_installs_what_it_says_where_it_says() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: the packaged binary's `capstats test` loads a program"
    );
    let xtask = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let binary = xtask.with_file_name("capstats");
    assert!(
        binary.is_file(),
        "no capstats at {}: build it first (cargo build -p capstats-cli)",
        binary.display()
    );
    let scratch =
        Scratch(std::env::temp_dir().join(format!("capstats-deb-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(&scratch.0).unwrap();
    run(Command::new(&xtask)
        .args(["deb", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&scratch.0));
    let version = env!("CARGO_PKG_VERSION");
    let deb = scratch.0.join(format!("capstats-bpf_{version}_amd64.deb"));
    assert!(deb.is_file(), "no {}", deb.display());

    // The control fields that decide how it lives beside Zeek's capstats.
    let field = |name: &str| {
        text(run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "capstats-bpf");
    assert_eq!(field("Conflicts"), "capstats");
    assert_eq!(field("Replaces"), "capstats");
    assert!(
        field("Depends").contains("libpcap0.8"),
        "{}",
        field("Depends")
    );

    let root = scratch.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    // The unit: what it starts is in the package, and systemd accepts it.
    let unit_path = root.join("usr/lib/systemd/system/capstats.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit");
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=")
        .split_whitespace()
        .collect();
    let packaged = root.join(exec[0].trim_start_matches('/'));
    assert_eq!(exec[0], "/usr/bin/capstats");
    assert!(
        packaged.is_file(),
        "ExecStart {} is not in the package",
        exec[0]
    );
    let after = |flag: &str| {
        exec.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_owned())
            .unwrap_or_else(|| panic!("ExecStart has no {flag}: {exec:?}"))
    };
    // The group the daemon serves is the one sysusers.d creates.
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/capstats.conf")).unwrap();
    let group = after("-g");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["g", group.as_str()])),
        "sysusers.d does not create group {group}: {sysusers}"
    );
    let verified = scratch.0.join("capstats.service");
    std::fs::write(
        &verified,
        unit.replace(
            "ExecStart=/usr/bin/capstats",
            &format!("ExecStart={}", packaged.display()),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&verified)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // The binary runs from the package.
    let shown = text(run(Command::new(&packaged).arg("--version")));
    assert!(
        shown.starts_with(&format!("capstats {version}\n")),
        "{shown}"
    );
    assert!(shown.contains("libpcap version 1."), "{shown}");
    let file = corpus_file();
    let counted = text(run(Command::new(&packaged)
        .arg("test")
        .arg(&file)
        .arg("udp")));
    let expected = text(run(Command::new(&binary).arg("test").arg(&file).arg("udp")));
    assert!(counted.starts_with("packets="), "{counted}");
    assert_eq!(counted, expected);

    // man finds the page in the package, and the page names the unit's paths.
    let man_dir = root.join("usr/share/man");
    let found = text(run(Command::new("man")
        .args(["-w", "capstats"])
        .env("MANPATH", &man_dir)));
    assert_eq!(
        Path::new(found.trim()),
        man_dir.join("man8/capstats.8.gz"),
        "man -w capstats"
    );
    let page = text(run(Command::new("man")
        .arg("-l")
        .arg(man_dir.join("man8/capstats.8.gz"))
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8")));
    let page: String = {
        let mut plain = String::new();
        for c in page.chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        plain
    };
    for flag in ["--state-dir", "--pin-dir"] {
        let path = after(flag);
        assert!(
            page.contains(&path),
            "{flag} {path} of the unit is not in capstats(8)"
        );
    }

    // Completions where bash-completion, zsh and fish look for them.
    for (path, says) in [
        (
            "usr/share/bash-completion/completions/capstats",
            "complete -F _capstats_words",
        ),
        (
            "usr/share/zsh/vendor-completions/_capstats",
            "#compdef capstats",
        ),
        (
            "usr/share/fish/vendor_completions.d/capstats.fish",
            "complete -c capstats",
        ),
    ] {
        let script =
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(script.contains(says), "{path} lacks {says:?}");
    }
}
