//! `capstats completions bash|zsh|fish`: the scripts load, complete commands, session
//! names (from `capstats __complete-sessions`, here a stand-in that needs no daemon)
//! and the words of `new` and `watch`. bash, zsh and fish must be installed (Debian:
//! apt-get install zsh fish): a missing shell fails the test, naming it.

use std::path::PathBuf;
use std::process::Command;

fn capstats(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_capstats"))
        .args(args)
        .output()
        .expect("run capstats");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A scratch directory with the scripts and a `capstats` that answers only
/// `__complete-sessions [SOCKET]` (web, and dns with the socket it was given).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("capstats-completions-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stub = dir.join("capstats");
        std::fs::write(
            &stub,
            "#!/bin/sh\n[ \"$1\" = __complete-sessions ] && { echo web; echo \"dns${2:+-$2}\"; }\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for shell in ["bash", "zsh", "fish"] {
            std::fs::write(dir.join(shell), capstats(&["completions", shell])).unwrap();
        }
        Self(dir)
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn script(&self, shell: &str) -> PathBuf {
        self.0.join(shell)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shell(name: &str, path: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install it (apt-get install {name})"));
    assert!(out.status.success(), "{name} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// What bash offers for `line` (words separated by spaces, the last one being typed).
fn bash(scratch: &Scratch, line: &str) -> Vec<String> {
    let program = format!(
        "source {}; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); _capstats_words capstats \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        scratch.script("bash").display()
    );
    let mut words: Vec<String> = shell("bash", &scratch.path(), &["-c", &program])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    words.sort();
    words
}

fn fish(scratch: &Scratch, line: &str) -> Vec<String> {
    let program = format!(
        "source {}; complete -C'{line}'",
        scratch.script("fish").display()
    );
    let mut words: Vec<String> = shell("fish", &scratch.path(), &["-c", &program])
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    words.sort();
    words
}

fn sorted(words: &[&str]) -> Vec<String> {
    let mut words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    words.sort();
    words
}

#[test]
fn bash_completes_sessions_and_words() {
    let scratch = Scratch::new("bash");
    let cases: [(&str, &[&str]); 9] = [
        ("capstats show ''", &["dns", "web"]),
        ("capstats stop w", &["web"]),
        ("capstats -s /x poll web ''", &["dns-/x", "web"]),
        ("capstats watch web ''", &["frequency"]),
        ("capstats new x hook ''", &["socket", "tc", "xdp"]),
        ("capstats new x direction ''", &["both", "in", "out"]),
        ("capstats new x packets ''", &["stack", "wire"]),
        (
            "capstats new x -i lo ''",
            &["-i", "direction", "filter", "hook", "interface", "packets"],
        ),
        // In the expression nothing is offered.
        ("capstats new x tcp ''", &[]),
    ];
    for (line, want) in cases {
        assert_eq!(bash(&scratch, line), sorted(want), "{line}");
    }
    // Commands come from clap's part.
    assert_eq!(bash(&scratch, "capstats sh"), sorted(&["show"]));
    assert!(bash(&scratch, "capstats comp").contains(&"completions".to_owned()));
}

#[test]
fn fish_completes_sessions_and_words() {
    let scratch = Scratch::new("fish");
    let cases: [(&str, &[&str]); 7] = [
        ("capstats show ", &["dns", "web"]),
        ("capstats -s /x poll web ", &["dns-/x", "web"]),
        ("capstats watch web ", &["frequency"]),
        ("capstats new x hook ", &["socket", "tc", "xdp"]),
        ("capstats new x packets ", &["stack", "wire"]),
        (
            "capstats new x interface lo ",
            &["-i", "direction", "filter", "hook", "interface", "packets"],
        ),
        ("capstats new x tcp ", &[]),
    ];
    for (line, want) in cases {
        assert_eq!(fish(&scratch, line), sorted(want), "{line}");
    }
    assert_eq!(fish(&scratch, "capstats sh"), sorted(&["show"]));
}

#[test]
fn zsh_script_parses() {
    let scratch = Scratch::new("zsh");
    let script = scratch.script("zsh");
    shell("zsh", &scratch.path(), &["-n", script.to_str().unwrap()]);
    // Loaded through compinit as an installed _capstats would be, it defines its functions.
    let program = format!(
        "autoload -U compinit && compinit -u -D && source {} && whence -w _capstats _capstats_sessions _capstats_new_words",
        script.display()
    );
    let out = shell("zsh", &scratch.path(), &["-f", "-c", &program]);
    assert_eq!(out.lines().count(), 3, "{out}");
}
