//! Shell completions and the man page, both generated from the command line's
//! definition ([`crate::Cli`]).
//!
//! clap_complete knows the options and commands. Two things it cannot know are added by
//! hand to each script: session names, which only the daemon has (the scripts run
//! `capstats __complete-sessions [SOCKET]`), and the words of `new` (`interface IF`,
//! `-i IF`, `hook socket|tc|xdp`, `direction in|out|both`, `packets stack|wire`, before the expression) and
//! `watch` (`frequency SECONDS`), which `capstats` parses itself.

use std::path::PathBuf;

use capstats_common::protocol::{Command, Reply};

/// `capstats __complete-sessions [SOCKET]`: for the completion scripts.
pub const SESSIONS_ARG: &str = "__complete-sessions";
/// `capstats __man-page`: capstats(8) in roff, for `cargo xtask man`.
pub const MAN_ARG: &str = "__man-page";

/// `capstats completions SHELL`.
pub fn print(shell: &str) -> anyhow::Result<()> {
    print!("{}", script(shell));
    Ok(())
}

/// The completion script for `shell` (bash, zsh or fish).
pub fn script(shell: &str) -> String {
    let generator = match shell {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        _ => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(
        generator,
        &mut crate::Cli::definition(),
        "capstats",
        &mut out,
    );
    let generated = String::from_utf8_lossy(&out).into_owned();
    match shell {
        "bash" => format!("{generated}\n{BASH}"),
        "zsh" => zsh(&generated),
        _ => format!("{generated}\n{FISH}"),
    }
}

/// After clap's `_capstats`: a function in front of it for session names and the
/// words of `new` and `watch`.
const BASH: &str = r#"# capstats: session names from the daemon, and the words capstats parses itself.
_capstats_sessions() {
    local socket="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -s|--socket) socket="${COMP_WORDS[i+1]}" ;;
            --socket=*) socket="${COMP_WORDS[i]#--socket=}" ;;
        esac
    done
    capstats __complete-sessions ${socket:+"$socket"} 2>/dev/null
}

_capstats_words() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local i w cmd="" skip=0
    local -a after=()
    # The command is the first word that is neither an option nor an option's value;
    # `after` holds the words after it (options and their values left out).
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if ((skip)); then skip=0; continue; fi
        case "$w" in
            -s|--socket|-g|--group|--state-dir|--pin-dir|--metrics|--idle-timeout) skip=1; continue ;;
            -i) if [[ "$cmd" == new ]]; then after+=("$w"); fi; continue ;;
            -*) continue ;;
        esac
        if [[ -z "$cmd" ]]; then cmd="$w"; else after+=("$w"); fi
    done
    if [[ -n "$cmd" && "$cur" != -* || "$cmd" == new && "$cur" == -i ]]; then
        case "$cmd,${#after[@]}" in
            show,0|stop,0|modify,0|watch,0|poll,*)
                COMPREPLY=($(compgen -W "$(_capstats_sessions)" -- "$cur")); return ;;
            watch,1)
                COMPREPLY=($(compgen -W "frequency" -- "$cur")); return ;;
        esac
        if [[ "$cmd" == new && ${#after[@]} -ge 1 ]]; then
            case "$prev" in
                interface|-i) COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur")); return ;;
                hook) COMPREPLY=($(compgen -W "socket tc xdp" -- "$cur")); return ;;
                direction) COMPREPLY=($(compgen -W "in out both" -- "$cur")); return ;;
                packets) COMPREPLY=($(compgen -W "stack wire" -- "$cur")); return ;;
            esac
            # The keywords come before the expression: offered while every word after
            # the name is a keyword with its value.
            for ((i = 1; i < ${#after[@]}; i += 2)); do
                case "${after[i]}" in
                    interface|-i|hook|direction|packets) ;;
                    *) compopt +o default +o bashdefault 2>/dev/null; return ;; # the expression
                esac
            done
            COMPREPLY=($(compgen -W "interface -i hook direction packets filter" -- "$cur"))
            return
        fi
    fi
    _capstats "$@"
}

complete -F _capstats_words -o bashdefault -o default capstats
"#;

/// After clap's fish completions.
const FISH: &str = r#"# capstats: session names from the daemon, and the words capstats parses itself.
function __fish_capstats_words
    # The command and the words after it, without the options before it.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_capstats_global_optspecs) -- $cmd 2>/dev/null
    or return
    string join \n -- $argv
end

function __fish_capstats_sessions
    set -l cmd (commandline -opc)
    set -l socket
    for i in (seq (count $cmd))
        if contains -- $cmd[$i] -s --socket; and test $i -lt (count $cmd)
            set socket $cmd[(math $i + 1)]
        end
    end
    capstats __complete-sessions $socket 2>/dev/null
end

function __fish_capstats_after -a n
    # True when exactly n words follow the command.
    set -l w (__fish_capstats_words)
    test (count $w) -eq (math $n + 1)
end

function __fish_capstats_new_keyword_next
    # `new NAME` and keyword pairs only so far: a keyword may come next.
    set -l w (__fish_capstats_words)
    test (count $w) -ge 2; or return 1
    set -l rest $w[3..-1]
    test (math (count $rest) % 2) -eq 0; or return 1
    for i in (seq 1 2 (count $rest))
        contains -- $rest[$i] interface -i hook direction packets; or return 1
    end
end

function __fish_capstats_prev -a word
    set -l w (__fish_capstats_words)
    test (count $w) -ge 3; and test "$w[-1]" = "$word"
end

complete -c capstats -n "__fish_capstats_using_subcommand new modify show stop watch poll" -f
complete -c capstats -n "__fish_capstats_using_subcommand show stop modify watch; and __fish_capstats_after 0" -f -a "(__fish_capstats_sessions)"
complete -c capstats -n "__fish_capstats_using_subcommand poll" -f -a "(__fish_capstats_sessions)"
complete -c capstats -n "__fish_capstats_using_subcommand watch; and __fish_capstats_after 1" -f -a frequency
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_new_keyword_next" -f -a "interface -i hook direction packets filter"
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_prev hook" -f -a "socket tc xdp"
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_prev direction" -f -a "in out both"
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_prev packets" -f -a "stack wire"
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_prev interface" -f -a "(__fish_print_interfaces)"
complete -c capstats -n "__fish_capstats_using_subcommand new; and __fish_capstats_prev -i" -f -a "(__fish_print_interfaces)"
"#;

/// Functions for zsh, defined before clap's script calls `_capstats`.
const ZSH: &str = r#"# capstats: session names from the daemon, and the words capstats parses itself.
(( $+functions[_capstats_sessions] )) ||
_capstats_sessions() {
    local socket=${opt_args[-s]:-${opt_args[--socket]}}
    local -a names
    names=(${(f)"$(capstats __complete-sessions ${socket:+"$socket"} 2>/dev/null)"})
    compadd -a names
}

(( $+functions[_capstats_new_words] )) ||
_capstats_new_words() {
    case ${words[CURRENT-1]} in
        interface|-i) _net_interfaces; return ;;
        hook) compadd socket tc xdp; return ;;
        direction) compadd in out both; return ;;
        packets) compadd stack wire; return ;;
    esac
    local i
    for (( i = 1; i < CURRENT; i += 2 )); do
        [[ ${words[i]} == (interface|-i|hook|direction|packets) ]] || { _message 'filter expression'; return; }
    done
    compadd interface -i hook direction packets filter
}

"#;

/// clap's zsh script with session names for the `name` and `names` arguments of the
/// commands that take an existing session, and `new`'s words.
fn zsh(generated: &str) -> String {
    let script = generated
        .replace("':name:_default'", "':name:_capstats_sessions'")
        .replace("'*::names:_default'", "'*::names:_capstats_sessions'");
    let new_words = script
        .lines()
        .find(|line| line.starts_with("'*::words -- ") && line.contains("interface IF"))
        .map(str::to_owned);
    let script = match new_words {
        Some(line) => script.replace(
            &line,
            &line.replace(":_default' \\", ":_capstats_new_words' \\"),
        ),
        None => script,
    };
    let tail = "if [ \"$funcstack[1]\" = \"_capstats\" ]; then";
    match script.rfind(tail) {
        Some(at) => format!("{}{ZSH}{}", &script[..at], &script[at..]),
        None => format!("{script}\n{ZSH}"),
    }
}

/// `capstats __complete-sessions [SOCKET]`: the session names, one a line; nothing (and
/// exit 0) when the daemon cannot be asked, so that a completion never prints an error.
pub fn sessions(socket: Option<PathBuf>) {
    let socket = socket
        .or_else(|| std::env::var_os("CAPSTATS_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(capstats_common::DEFAULT_SOCKET));
    if let Ok(Reply::Sessions(all)) = crate::client::request(&socket, Command::List {}) {
        for session in all {
            println!("{}", session.name);
        }
    }
}

pub fn man_page() -> anyhow::Result<()> {
    print!("{}", crate::man::page()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zsh_names_come_from_the_daemon() {
        let script = script("zsh");
        assert!(!script.contains("':name:_default'"), "{script}");
        assert_eq!(script.matches("':name:_capstats_sessions'").count(), 4);
        assert!(script.contains("'*::names:_capstats_sessions'"));
        assert_eq!(script.matches(":_capstats_new_words' \\").count(), 1);
        let defined = script.find("_capstats_sessions() {").unwrap();
        let called = script.rfind("_capstats \"$@\"").unwrap();
        assert!(defined < called);
    }

    #[test]
    fn hidden_words_are_not_offered() {
        for shell in ["bash", "zsh", "fish"] {
            let script = script(shell);
            assert!(!script.contains(MAN_ARG), "{shell}");
            // Only the hand-written part calls it.
            assert!(script.contains("capstats __complete-sessions"), "{shell}");
        }
    }
}
