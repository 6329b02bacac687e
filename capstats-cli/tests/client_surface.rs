//! The client's own checks and output forms, without a daemon: a `modify` without an
//! expression, `--json` errors, `capstats version`.

use std::process::{Command, Output};

fn capstats(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstats"))
        .args(args)
        .env_remove("CAPSTATS_SOCKET")
        .output()
        .expect("run capstats")
}

const NO_DAEMON: &str = "/nonexistent/capstats.sock";

#[test]
fn modify_without_an_expression_is_refused_before_asking_the_daemon() {
    for args in [
        vec!["-s", NO_DAEMON, "modify", "web"],
        vec!["-s", NO_DAEMON, "modify", "web", ""],
        vec!["-s", NO_DAEMON, "modify", "web", "filter", "  "],
    ] {
        let out = capstats(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("needs a filter expression")
                && stderr.contains("capstats new NAME \"\""),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("cannot connect"), "{stderr}");
    }
}

/// The one line on stdout of a failed `--json` command: `{"error":{"kind","message"}}`.
fn json_error(args: &[&str]) -> (String, String) {
    let out = capstats(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 1, "{stdout}");
    let error = value["error"].as_object().expect("an error object");
    assert_eq!(error.len(), 2, "{stdout}");
    assert!(
        stdout.starts_with(r#"{"error":{"kind":""#),
        "kind first: {stdout}"
    );
    (
        error["kind"].as_str().unwrap().to_owned(),
        error["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn json_errors_are_one_object_on_stdout() {
    let cases: [(&[&str], &str, &str); 8] = [
        // After the expression, --json is still the option.
        (
            &["-s", NO_DAEMON, "new", "x", "udp", "--json"],
            "connection",
            "cannot connect",
        ),
        (
            &["--json", "-s", NO_DAEMON, "list"],
            "connection",
            "cannot connect to the capstats daemon at /nonexistent/capstats.sock",
        ),
        (
            &["-s", NO_DAEMON, "show", "web", "--json"],
            "connection",
            "cannot connect",
        ),
        (
            &["--json", "-s", NO_DAEMON, "modify", "web"],
            "invalid_filter",
            "needs a filter expression",
        ),
        (
            &["--json", "-s", NO_DAEMON, "watch", "web", "frequency", "0"],
            "usage",
            "frequency must be a positive number of seconds, not 0",
        ),
        (
            &["--json", "-s", NO_DAEMON, "new", "x", "hook", "ebpf", "udp"],
            "usage",
            "unknown hook \"ebpf\"",
        ),
        // Refused by clap itself.
        (
            &["--json", "frobnicate"],
            "usage",
            "unrecognized subcommand 'frobnicate'",
        ),
        (
            &["--json", "test", "/nonexistent.pcap", "udp"],
            "other",
            "cannot open capture file /nonexistent.pcap",
        ),
    ];
    for (args, kind, says) in cases {
        let (got, message) = json_error(args);
        assert_eq!(got, kind, "{args:?}: {message}");
        assert!(message.contains(says), "{args:?}: {message}");
    }
}

#[test]
fn version_names_libpcap_and_the_kernel_features() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for args in [["version"], ["--version"]] {
        let out = capstats(&args);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.starts_with(&format!("capstats {}\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(text.contains("libpcap:  libpcap version 1."), "{text}");
        assert!(text.contains(release.trim()), "{text}");
        for field in ["bpf jit:", "tc hook:", "xdp:", "btf:", "bpffs:"] {
            assert!(text.contains(field), "{field}: {text}");
        }
    }
    let out = capstats(&["--json", "version"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap();
    let want = match jit.trim() {
        "0" => "off",
        "1" => "on",
        _ => "on (debug)",
    };
    assert_eq!(value["bpf_jit"], want, "{value}");
    assert_eq!(
        value["btf"],
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "{value}"
    );
    assert_eq!(value["kernel"], release.trim());
}

#[test]
#[cfg_attr(
    not(feature = "kernel-tests"),
    ignore = "runs `capstats test` as root: `cargo xtask test` runs it"
)]
fn test_json_keys_follow_the_session_order() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "capstats test loads a program: run this test as root"
    );
    let file = capstats_testkit::corpus::file("pcap/libpcap-filter/dhcp-rfc3004.pcap").unwrap();
    let out = capstats(&["--json", "test", file.to_str().unwrap(), "udp"]);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let keys: Vec<&str> = line
        .split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].starts_with(':'))
        .map(|w| w[0])
        .collect();
    assert_eq!(
        keys,
        [
            "file",
            "filter",
            "records",
            "packets",
            "bytes",
            "not_runnable"
        ],
        "{line}"
    );
}

#[test]
fn the_man_page_renders_without_warnings_and_holds_the_semantics() {
    let out = capstats(&["__man-page"]);
    assert!(out.status.success(), "{out:?}");
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(
        roff.contains(".TH capstats 8 "),
        "{}",
        &roff[..200.min(roff.len())]
    );
    let dir = std::env::temp_dir().join(format!("capstats-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("capstats.8");
    std::fs::write(&page, &roff).unwrap();
    let rendered = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("man (apt-get install man-db groff-base)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && stderr.is_empty(),
        "man: {stderr}"
    );
    // Bold and underline are overstruck (`X\bX`, `_\bX`) when not on a terminal.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "COMMANDS",
        "SESSION COMMANDS",
        "HOOKS",
        "WHAT IS COUNTED",
        "FILES",
        "SIGNALS",
        "EXIT STATUS",
    ] {
        assert!(
            text.lines().any(|l| l == section),
            "no section {section}:\n{text}"
        );
    }
    // Every option and command of the definition (from --help) is on the page.
    let help = String::from_utf8(capstats(&["--help"]).stdout).unwrap();
    for word in help.split_whitespace() {
        let word = word.trim_end_matches(',');
        if word.starts_with("--") && word.len() > 2 {
            assert!(text.contains(word), "{word} is not on the page");
        }
    }
    for command in [
        "version",
        "completions",
        "new",
        "modify",
        "stop",
        "list",
        "show",
        "poll",
        "watch",
        "test",
    ] {
        assert!(text.contains(&format!("capstats {command}")), "{command}");
    }
    for file in [
        "/var/run/capstats",
        "/var/lib/capstats",
        "/sys/fs/bpf/capstats",
    ] {
        assert!(text.contains(file), "{file}");
    }
}
