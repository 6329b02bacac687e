//! The client commands that ask the daemon once: new, modify, stop, list, show, poll.

use std::path::Path;

use anyhow::bail;
use capstats_common::protocol::{Command, Direction, ErrorKind, HookName, Packets, Reply, Session};

use crate::client::{Failure, request, usage};
use crate::output;
use crate::test_cmd::expression;

/// What `new` was told besides the name.
#[derive(Debug, PartialEq, Eq)]
pub struct NewArgs {
    pub interface: Option<String>,
    pub hook: Option<HookName>,
    pub direction: Option<Direction>,
    pub packets: Option<Packets>,
    pub filter: String,
}

/// The keywords of `new` before the expression; `-i` is tcpdump's `interface`.
const KEYWORDS: [&str; 5] = ["interface", "-i", "hook", "direction", "packets"];

/// `[interface IF | -i IF] [hook socket|tc|xdp] [direction in|out|both]
/// [packets wire|stack] [filter] EXPR...`:
/// the keywords in any order, each once, before the expression.
pub fn parse_new_words(words: &[String]) -> anyhow::Result<NewArgs> {
    let mut args = NewArgs {
        interface: None,
        hook: None,
        direction: None,
        packets: None,
        filter: String::new(),
    };
    let mut rest = words;
    loop {
        let (keyword, value) = match rest {
            [keyword, value, ..] if KEYWORDS.contains(&keyword.as_str()) => {
                (keyword.as_str(), value.as_str())
            }
            [keyword] if KEYWORDS.contains(&keyword.as_str()) => {
                return Err(usage(format!(
                    "`{keyword}` needs a value: new NAME [interface IF] [hook socket|tc|xdp] [direction in|out|both] [packets wire|stack] [filter] EXPR..."
                )));
            }
            _ => break,
        };
        let twice = || {
            let name = if keyword == "-i" {
                "interface"
            } else {
                keyword
            };
            usage(format!(
                "`{name}` is given twice: `interface` (or -i), `hook`, `direction` and `packets` \
                 are given once each"
            ))
        };
        match keyword {
            "interface" | "-i" => {
                if args.interface.replace(value.to_owned()).is_some() {
                    return Err(twice());
                }
            }
            "hook" => {
                let hook = match value {
                    "socket" => HookName::Socket,
                    "tc" => HookName::Tc,
                    "xdp" => HookName::Xdp,
                    other => {
                        return Err(usage(format!("unknown hook {other:?}: socket, tc or xdp")));
                    }
                };
                if args.hook.replace(hook).is_some() {
                    return Err(twice());
                }
            }
            "packets" => {
                let packets = match value {
                    "wire" => Packets::Wire,
                    "stack" => Packets::Stack,
                    other => {
                        return Err(usage(format!(
                            "unknown packets {other:?}: wire (each GSO/GRO segment as the \
                             frame it was on the wire) or stack (as tcpdump shows them)"
                        )));
                    }
                };
                if args.packets.replace(packets).is_some() {
                    return Err(twice());
                }
            }
            _ => {
                let direction = match value {
                    "in" => Direction::In,
                    "out" => Direction::Out,
                    "both" => Direction::Both,
                    other => {
                        return Err(usage(format!(
                            "unknown direction {other:?}: in, out or both"
                        )));
                    }
                };
                if args.direction.replace(direction).is_some() {
                    return Err(twice());
                }
            }
        }
        rest = &rest[2..];
    }
    args.filter = expression(rest);
    Ok(args)
}

/// `new`'s keywords typed after the expression, as tcpdump users do
/// (`tcp port 80 interface eth0`, `udp -i eth0`): each `(keyword, value)` found, in the
/// order typed, and the expression without them. None when there are none.
pub fn misplaced_keywords(filter: &str) -> Option<(Vec<(String, String)>, String)> {
    let words: Vec<&str> = filter.split_whitespace().collect();
    let mut found = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let fits = |keyword: &str, value: &str| match keyword {
            "interface" | "-i" => true,
            "hook" => ["socket", "tc", "xdp"].contains(&value),
            "direction" => ["in", "out", "both"].contains(&value),
            "packets" => ["wire", "stack"].contains(&value),
            _ => false,
        };
        match (words[i], words.get(i + 1)) {
            (keyword, Some(value)) if fits(keyword, value) => {
                let keyword = if keyword == "-i" {
                    "interface"
                } else {
                    keyword
                };
                found.push((keyword.to_owned(), (*value).to_owned()));
                i += 2;
            }
            (word, _) => {
                rest.push(word);
                i += 1;
            }
        }
    }
    (!found.is_empty()).then(|| (found, rest.join(" ")))
}

/// libpcap's refusal of an expression that holds `new`'s keywords, with the command in
/// the right order; other errors as they are.
fn hint_misplaced(error: anyhow::Error, command: &str, name: &str, filter: &str) -> anyhow::Error {
    let Some(Failure::Refused {
        kind: ErrorKind::InvalidFilter,
        message,
    }) = error.downcast_ref::<Failure>()
    else {
        return error;
    };
    let Some((keywords, rest)) = misplaced_keywords(filter) else {
        return error;
    };
    let typed: Vec<String> = keywords.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let message = if command == "new" {
        format!(
            "{} must come before the filter expression, not in it: capstats new {name} {} {rest} \
             (libpcap: {message})",
            typed.join(", "),
            typed.join(" "),
        )
    } else {
        format!(
            "modify changes only the filter expression; {} is fixed when the session is made \
             (capstats stop {name}, then capstats new {name} {} {rest}) (libpcap: {message})",
            typed.join(", "),
            typed.join(" "),
        )
    };
    Failure::Refused {
        kind: ErrorKind::InvalidFilter,
        message,
    }
    .into()
}

fn one(reply: Reply) -> anyhow::Result<Session> {
    match reply {
        Reply::Session(s) | Reply::Stopped(s) => Ok(s),
        Reply::Sessions(_) => {
            bail!("the daemon answered with a list where one session was expected")
        }
    }
}

fn many(reply: Reply) -> anyhow::Result<Vec<Session>> {
    match reply {
        Reply::Sessions(all) => Ok(all),
        _ => bail!("the daemon answered with one session where a list was expected"),
    }
}

pub fn new(socket: &Path, name: String, words: &[String], json: bool) -> anyhow::Result<()> {
    let args = parse_new_words(words)?;
    let filter = args.filter.clone();
    let command = Command::New {
        name: name.clone(),
        interface: args.interface,
        filter: args.filter,
        hook: args.hook,
        direction: args.direction,
        packets: args.packets,
    };
    let s = one(request(socket, command).map_err(|e| hint_misplaced(e, "new", &name, &filter))?)?;
    if json {
        output::json_line(&s);
    } else {
        let filter = if s.filter.is_empty() {
            "every packet".into()
        } else {
            capstats_common::text::printable(&s.filter)
        };
        println!(
            "session {:?} counts on {} ({} hook, {}, packets {}): {filter}",
            s.name,
            s.interface,
            s.hook,
            s.direction,
            s.packets().as_str()
        );
    }
    Ok(())
}

pub fn modify(socket: &Path, name: String, words: &[String], json: bool) -> anyhow::Result<()> {
    let filter = expression(words);
    if capstats_common::protocol::is_blank_filter(&filter) {
        return Err(Failure::Refused {
            kind: ErrorKind::InvalidFilter,
            message: capstats_common::protocol::modify_needs_a_filter(&name),
        }
        .into());
    }
    let command = Command::Modify {
        name: name.clone(),
        filter: filter.clone(),
    };
    let s =
        one(request(socket, command).map_err(|e| hint_misplaced(e, "modify", &name, &filter))?)?;
    if json {
        output::json_line(&s);
    } else {
        println!(
            "session {:?} now counts: {} ({} packets, {} bytes so far)",
            s.name,
            if s.filter.is_empty() {
                "every packet".into()
            } else {
                capstats_common::text::printable(&s.filter)
            },
            output::grouped(s.packets.unwrap_or(0)),
            output::grouped(s.bytes.unwrap_or(0))
        );
    }
    Ok(())
}

pub fn stop(socket: &Path, name: String, json: bool) -> anyhow::Result<()> {
    let s = one(request(socket, Command::Stop { name })?)?;
    if json {
        output::json_line(&s);
    } else {
        println!(
            "session {:?} stopped after {} packets, {} bytes",
            s.name,
            output::grouped(s.packets.unwrap_or(0)),
            output::grouped(s.bytes.unwrap_or(0))
        );
    }
    Ok(())
}

pub fn list(socket: &Path, json: bool) -> anyhow::Result<()> {
    let all = many(request(socket, Command::List {})?)?;
    if json {
        all.iter().for_each(output::json_line);
    } else {
        output::list(&all);
    }
    Ok(())
}

pub fn show(socket: &Path, name: String, json: bool) -> anyhow::Result<()> {
    let s = one(request(socket, Command::Show { name })?)?;
    if json {
        output::json_line(&s);
    } else {
        output::show(&s);
    }
    Ok(())
}

/// How `poll` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollFormat {
    People,
    Json,
    /// The Prometheus text exposition.
    Prometheus,
    /// Lines in the fields of Zeek's capstats.
    Zeek,
}

pub fn poll(socket: &Path, names: Vec<String>, format: PollFormat) -> anyhow::Result<()> {
    let all = many(request(socket, Command::Poll { names })?)?;
    match format {
        PollFormat::People => output::poll(&all),
        PollFormat::Json => all.iter().for_each(output::json_line),
        PollFormat::Prometheus => print!(
            "{}",
            capstats_common::metrics::render(
                &all,
                &capstats_common::metrics::DaemonInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }
            )
        ),
        PollFormat::Zeek => {
            for session in &all {
                println!("{}", crate::zeek::since_created(session).line());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn both_2009_forms_of_new() {
        let cases = [
            ("filter tcp port 80", None, "tcp port 80"),
            ("tcp port 80", None, "tcp port 80"),
            ("interface eth1 filter udp", Some("eth1"), "udp"),
            ("interface eth1 udp", Some("eth1"), "udp"),
            ("interface eth1", Some("eth1"), ""),
            ("", None, ""),
        ];
        for (text, interface, filter) in cases {
            let args = parse_new_words(&words(text)).unwrap();
            assert_eq!(
                (args.interface.as_deref(), args.filter.as_str()),
                (interface, filter),
                "{text}"
            );
        }
        assert!(parse_new_words(&words("interface")).is_err());
    }

    #[test]
    fn dash_i_is_interface() {
        let args = parse_new_words(&words("-i eth1 hook tc udp")).unwrap();
        assert_eq!(
            (args.interface.as_deref(), args.hook, args.filter.as_str()),
            (Some("eth1"), Some(HookName::Tc), "udp")
        );
        let args = parse_new_words(&words("hook xdp -i v0 filter tcp port 80")).unwrap();
        assert_eq!(
            (args.interface.as_deref(), args.filter.as_str()),
            (Some("v0"), "tcp port 80")
        );
        for bad in ["-i", "-i a interface b", "interface a -i b"] {
            assert!(parse_new_words(&words(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn keywords_after_the_expression_are_found() {
        let found = |text: &str| {
            misplaced_keywords(text).map(|(k, rest)| {
                let k: Vec<String> = k.iter().map(|(k, v)| format!("{k} {v}")).collect();
                (k.join(","), rest)
            })
        };
        assert_eq!(
            found("tcp port 80 interface vb"),
            Some(("interface vb".into(), "tcp port 80".into()))
        );
        assert_eq!(
            found("udp -i eth0 hook tc direction in"),
            Some(("interface eth0,hook tc,direction in".into(), "udp".into()))
        );
        assert_eq!(
            found("tcp hook xdp and port 80"),
            Some(("hook xdp".into(), "tcp and port 80".into()))
        );
        // Words that are not a keyword with one of its values stay in the expression.
        assert_eq!(found("tcp port 80"), None);
        assert_eq!(found("host hook"), None);
        assert_eq!(found("tcp direction"), None);
        assert_eq!(found("ip interface"), None);
    }

    #[test]
    fn hooks_and_directions() {
        let args =
            parse_new_words(&words("hook tc direction out interface v0 filter udp")).unwrap();
        assert_eq!(
            args,
            NewArgs {
                interface: Some("v0".into()),
                hook: Some(HookName::Tc),
                direction: Some(Direction::Out),
                packets: None,
                filter: "udp".into()
            }
        );
        let args = parse_new_words(&words("packets wire hook tc tcp")).unwrap();
        assert_eq!(args.packets, Some(Packets::Wire));
        assert_eq!(args.filter, "tcp");
        let args = parse_new_words(&words("packets stack")).unwrap();
        assert_eq!(args.packets, Some(Packets::Stack));
        assert!(parse_new_words(&words("packets frames tcp")).is_err());
        assert!(parse_new_words(&words("packets wire packets stack tcp")).is_err());
        let (found, rest) = misplaced_keywords("tcp packets wire").unwrap();
        assert_eq!(
            (found, rest.as_str()),
            (vec![("packets".to_owned(), "wire".to_owned())], "tcp")
        );
        for bad in [
            "hook ebpf udp",
            "direction sideways",
            "hook tc hook xdp",
            "direction",
        ] {
            assert!(parse_new_words(&words(bad)).is_err(), "{bad}");
        }
    }
}
