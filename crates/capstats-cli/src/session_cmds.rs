//! The client commands that ask the daemon once: new, modify, stop, list, show, poll.

use std::path::Path;

use anyhow::bail;
use capstats_common::protocol::{Command, Reply, Session};

use crate::client::request;
use crate::output;
use crate::test_cmd::expression;

/// `[interface IF] [filter] EXPR...` → the interface, if named, and the expression.
pub fn parse_new_words(words: &[String]) -> anyhow::Result<(Option<String>, String)> {
    match words.first().map(String::as_str) {
        Some("interface") => match words.get(1) {
            Some(interface) => Ok((Some(interface.clone()), expression(&words[2..]))),
            None => {
                bail!("`interface` needs an interface name: new NAME interface IF [filter] EXPR...")
            }
        },
        _ => Ok((None, expression(words))),
    }
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
    let (interface, filter) = parse_new_words(words)?;
    let s = one(request(
        socket,
        Command::New {
            name,
            interface,
            filter,
        },
    )?)?;
    if json {
        output::json_line(&s);
    } else {
        let filter = if s.filter.is_empty() {
            "every packet"
        } else {
            &s.filter
        };
        println!("session {:?} counts on {}: {filter}", s.name, s.interface);
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
                "every packet"
            } else {
                &s.filter
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

pub fn poll(socket: &Path, names: Vec<String>, json: bool) -> anyhow::Result<()> {
    let all = many(request(socket, Command::Poll { names })?)?;
    if json {
        all.iter().for_each(output::json_line);
    } else {
        output::poll(&all);
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
            let (i, f) = parse_new_words(&words(text)).unwrap();
            assert_eq!((i.as_deref(), f.as_str()), (interface, filter), "{text}");
        }
        assert!(parse_new_words(&words("interface")).is_err());
    }
}
