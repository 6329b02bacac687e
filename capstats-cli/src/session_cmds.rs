//! The client commands that ask the daemon once: new, modify, stop, list, show, poll.

use std::path::Path;

use anyhow::bail;
use capstats_common::protocol::{Command, Direction, HookName, Reply, Session};

use crate::client::request;
use crate::output;
use crate::test_cmd::expression;

/// What `new` was told besides the name.
#[derive(Debug, PartialEq, Eq)]
pub struct NewArgs {
    pub interface: Option<String>,
    pub hook: Option<HookName>,
    pub direction: Option<Direction>,
    pub filter: String,
}

/// `[interface IF] [hook socket|tc|xdp] [direction in|out|both] [filter] EXPR...`: the
/// keywords in any order, each once, before the expression.
pub fn parse_new_words(words: &[String]) -> anyhow::Result<NewArgs> {
    let mut args = NewArgs {
        interface: None,
        hook: None,
        direction: None,
        filter: String::new(),
    };
    let mut rest = words;
    loop {
        let (keyword, value) = match rest {
            [keyword, value, ..]
                if ["interface", "hook", "direction"].contains(&keyword.as_str()) =>
            {
                (keyword.as_str(), value.as_str())
            }
            [keyword] if ["interface", "hook", "direction"].contains(&keyword.as_str()) => {
                bail!(
                    "`{keyword}` needs a value: new NAME [interface IF] [hook socket|tc|xdp] [direction in|out|both] [filter] EXPR..."
                )
            }
            _ => break,
        };
        let twice = || anyhow::anyhow!("`{keyword}` is given twice");
        match keyword {
            "interface" => {
                if args.interface.replace(value.to_owned()).is_some() {
                    return Err(twice());
                }
            }
            "hook" => {
                let hook = match value {
                    "socket" => HookName::Socket,
                    "tc" => HookName::Tc,
                    "xdp" => HookName::Xdp,
                    other => bail!("unknown hook {other:?}: socket, tc or xdp"),
                };
                if args.hook.replace(hook).is_some() {
                    return Err(twice());
                }
            }
            _ => {
                let direction = match value {
                    "in" => Direction::In,
                    "out" => Direction::Out,
                    "both" => Direction::Both,
                    other => bail!("unknown direction {other:?}: in, out or both"),
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
    let command = Command::New {
        name,
        interface: args.interface,
        filter: args.filter,
        hook: args.hook,
        direction: args.direction,
    };
    let s = one(request(socket, command)?)?;
    if json {
        output::json_line(&s);
    } else {
        let filter = if s.filter.is_empty() {
            "every packet".into()
        } else {
            capstats_common::text::printable(&s.filter)
        };
        println!(
            "session {:?} counts on {} ({} hook, {}): {filter}",
            s.name, s.interface, s.hook, s.direction
        );
    }
    Ok(())
}

pub fn modify(socket: &Path, name: String, words: &[String], json: bool) -> anyhow::Result<()> {
    let filter = expression(words);
    let s = one(request(socket, Command::Modify { name, filter })?)?;
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
    fn hooks_and_directions() {
        let args =
            parse_new_words(&words("hook tc direction out interface v0 filter udp")).unwrap();
        assert_eq!(
            args,
            NewArgs {
                interface: Some("v0".into()),
                hook: Some(HookName::Tc),
                direction: Some(Direction::Out),
                filter: "udp".into()
            }
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
