//! The request decoder and the connection loop against hostile input, in CI: a fixed
//! number of generated cases (the same every run: failures reproduce), then each kind
//! of bad input the hardening issue names, made systematically rather than by chance.
//! Every case goes through `capstats_fuzz::conversation`, which checks the properties
//! (one printable error line per bad line, no panic, valid requests dispatched as
//! they were) and returns each line's verdict, which these tests then look at.

use capstats_common::protocol::{
    Command, Direction, ErrorKind, HookName, LineError, MAX_NESTING, Request,
};
use capstats_common::{MAX_REQUEST_BYTES, PROTOCOL_VERSION};
use capstats_fuzz::generate::{self, Rng};
use capstats_fuzz::{Verdict, conversation, fuzz};

/// One of each command, every field set: what the systematic cases start from.
fn commands() -> Vec<Command> {
    vec![
        Command::New {
            name: "web".into(),
            interface: Some("eth0".into()),
            filter: "tcp port 80".into(),
            hook: Some(HookName::Tc),
            direction: Some(Direction::In),
            packets: None,
        },
        Command::Modify {
            name: "web".into(),
            filter: "udp".into(),
        },
        Command::Stop { name: "web".into() },
        Command::List {},
        Command::Show { name: "web".into() },
        Command::Poll {
            names: vec!["web".into(), "dns".into()],
        },
    ]
}

fn json(command: &Command) -> String {
    serde_json::to_string(&Request::new(command.clone())).expect("a request serializes")
}

/// The verdict of `line` alone, sent as a whole stream with its newline, through the
/// daemon's loop with its own buffer size.
fn one(line: &[u8]) -> Verdict {
    let mut stream = line.to_vec();
    stream.push(b'\n');
    let mut verdicts = conversation(&stream, 8192);
    assert_eq!(verdicts.len(), 1, "{:?}", String::from_utf8_lossy(line));
    verdicts.remove(0)
}

/// Asserts a bad request refused as such, its message containing `says`.
#[track_caller]
fn refused(verdict: &Verdict, says: &str) {
    match verdict {
        Err(refusal)
            if refusal.kind() == ErrorKind::BadRequest && refusal.to_string().contains(says) => {}
        other => panic!("expected a bad_request error saying {says:?}, got {other:?}"),
    }
}

#[test]
fn generated_streams_keep_every_property() {
    // 4,000 cases, about 15,000 requests: a few seconds unoptimised. `cargo xtask
    // fuzz` runs the same generator for as long as asked.
    let report = fuzz(0x00ca_95a7_5eed, |report| report.cases >= 4_000)
        .unwrap_or_else(|failure| panic!("{failure}"));
    print!("{report}");
    // The generator reaches every outcome it is meant to: if one is never seen, the
    // properties were not tried on it.
    for outcome in [
        "dispatched new",
        "dispatched modify",
        "dispatched stop",
        "dispatched list",
        "dispatched show",
        "dispatched poll",
        "refused bad_request (not JSON)",
        "refused bad_request (not UTF-8)",
        "refused bad_request (too long)",
        "refused bad_request (nested too deep)",
        "refused bad_request (unknown field)",
        "refused bad_request (unknown command or value)",
        "refused bad_request (wrong type)",
        "refused bad_request (missing field)",
        "refused bad_request (bad version)",
        "refused bad_request (other version)",
        "refused invalid_name (bad session name)",
        "refused unknown_interface (bad interface name)",
        "refused invalid_filter (NUL in filter)",
    ] {
        assert!(
            report.outcomes.get(outcome).copied().unwrap_or(0) > 0,
            "no request of {} had the outcome {outcome:?}",
            report.requests
        );
    }
}

#[test]
fn valid_requests_round_trip_and_reach_the_table_as_they_were() {
    let mut rng = Rng::new(7);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..2_000 {
        let command = generate::command(&mut rng);
        stream.extend(json(&command).into_bytes());
        stream.push(b'\n');
        sent.push(command);
    }
    let verdicts = conversation(&stream, 8192);
    let mut dispatched = 0;
    for (command, verdict) in sent.iter().zip(&verdicts) {
        match (command.check(), verdict) {
            (Ok(()), Ok(got)) => {
                assert_eq!(got, command);
                dispatched += 1;
            }
            // Valid JSON requests whose values no daemon takes (a name with a space):
            // refused by the checks with their own kinds, never as bad requests.
            (Err(expected), Err(got)) => assert_eq!(&LineError::Refused(expected), got),
            (expected, got) => panic!("{command:?}: check says {expected:?}, the loop {got:?}"),
        }
    }
    println!("{} valid requests, {dispatched} dispatched", sent.len());
    assert!(
        dispatched > 500,
        "only {dispatched} of 2,000 generated requests were dispatched"
    );
}

#[test]
fn every_truncation_is_refused_and_the_next_line_is_served() {
    let list = json(&Command::List {});
    let mut requests = 0;
    for command in commands() {
        let line = json(&command);
        for cut in 0..line.len() {
            // The cut line, then a good one: the loop must recover after the bad one.
            let stream = format!("{}\n{list}\n", &line[..cut]);
            let verdicts = conversation(stream.as_bytes(), 7);
            requests += 2;
            refused(&verdicts[0], "");
            assert_eq!(
                verdicts[1],
                Ok(Command::List {}),
                "after {:?}",
                &line[..cut]
            );
        }
        // The whole line passes.
        assert_eq!(one(line.as_bytes()), Ok(command));
    }
    println!("{requests} requests");
}

#[test]
fn deep_nesting_is_refused_at_the_limit_without_exhausting_the_stack() {
    // 100,000 `[` is over the line limit; 60,000 fits in a line and reaches the parser.
    refused(&one(&[b'['; 100_000]), "request longer than");
    let limit = format!("more than {MAX_NESTING} levels deep");
    for depth in [MAX_NESTING + 1, 1_000, 60_000] {
        refused(&one("[".repeat(depth).as_bytes()), &limit);
        let closed = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        if closed.len() <= MAX_REQUEST_BYTES {
            refused(&one(closed.as_bytes()), &limit);
        }
        let in_a_field = format!(
            r#"{{"version":1,"command":"list","x":{}}}"#,
            "{\"a\":".repeat(depth.min(10_000))
        );
        refused(&one(in_a_field.as_bytes()), &limit);
    }
    // Just within the limit: JSON the parser reads, and refuses as no request.
    let within = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
    refused(&one(within.as_bytes()), "must be a JSON object");
}

#[test]
fn a_line_at_the_limit_is_read_and_longer_ones_are_refused_whole() {
    let empty = json(&Command::Modify {
        name: "web".into(),
        filter: String::new(),
    });
    let at_limit = Command::Modify {
        name: "web".into(),
        filter: "x".repeat(MAX_REQUEST_BYTES - empty.len()),
    };
    let line = json(&at_limit);
    assert_eq!(line.len(), MAX_REQUEST_BYTES);
    assert_eq!(one(line.as_bytes()), Ok(at_limit));
    let over = format!("{} ", line);
    refused(&one(over.as_bytes()), "longer than 65536 bytes");
    // A megabyte, then a request: refused once, and the next line is read whole, at
    // every buffer size.
    let mut stream = vec![b'x'; 1 << 20];
    stream.push(b'\n');
    stream.extend(json(&Command::List {}).bytes());
    for chunk in [1, 4096, 8192, 1 << 21] {
        let verdicts = conversation(&stream, chunk);
        assert_eq!(verdicts.len(), 2);
        refused(&verdicts[0], "longer than 65536 bytes");
        assert_eq!(verdicts[1], Ok(Command::List {}));
    }
}

#[test]
fn invalid_utf8_anywhere_is_refused_as_such() {
    let bad: &[&[u8]] = &[
        b"\x80",
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
    ];
    let mut requests = 0;
    for command in commands() {
        let line = json(&command).into_bytes();
        for at in 0..=line.len() {
            for bytes in bad {
                let mut broken = line.clone();
                broken.splice(at..at, bytes.iter().copied());
                refused(&one(&broken), "the request is not UTF-8 text");
                requests += 1;
            }
        }
    }
    println!("{requests} requests");
    // Escapes that are no character are JSON errors, not UTF-8 ones.
    refused(
        &one(br#"{"version":1,"command":"show","name":"\ud800"}"#),
        "not JSON",
    );
}

#[test]
fn unknown_fields_and_commands_are_named() {
    for command in commands() {
        let mut value = serde_json::to_value(Request::new(command.clone())).unwrap();
        value["sudo"] = serde_json::json!(true);
        refused(&one(value.to_string().as_bytes()), "unknown field `sudo`");
    }
    // The last: found by libFuzzer, when messages were escaped but not yet cut: each
    // DEL quoted as `\u{7f}`, a 60 KB request made a 360 KB error.
    let dels = "\u{7f}".repeat(60_000);
    for name in [
        "reboot",
        "NEW",
        "list ",
        "",
        "__proto__",
        "new\n",
        "\u{1b}[2J",
        &dels,
    ] {
        let line = serde_json::json!({"version": PROTOCOL_VERSION, "command": name}).to_string();
        let verdict = one(line.as_bytes());
        refused(&verdict, "unknown variant");
        let Err(refusal) = verdict else {
            unreachable!()
        };
        let message = refusal.to_string();
        assert!(
            !message.chars().any(char::is_control),
            "{name:?}: {message:?}"
        );
    }
}

#[test]
fn every_field_of_the_wrong_type_is_named() {
    let wrong = [
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!(1),
        serde_json::json!(-1.5),
        serde_json::json!("text"),
        serde_json::json!([]),
        serde_json::json!(["a", 1]),
        serde_json::json!({"a": 1}),
    ];
    let mut refusals = 0;
    for command in commands() {
        let value = serde_json::to_value(Request::new(command.clone())).unwrap();
        let fields: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        for field in fields {
            for bad in &wrong {
                let mut changed = value.clone();
                changed[&field] = bad.clone();
                let line = changed.to_string();
                match one(line.as_bytes()) {
                    Ok(got) => {
                        // Only a right type may pass: null for an optional field, a
                        // string where a string goes.
                        let fits = match field.as_str() {
                            "interface" | "hook" | "direction" => bad.is_null() || bad.is_string(),
                            "name" | "filter" => bad.is_string(),
                            "names" => bad.as_array().is_some_and(|a| a.is_empty()),
                            "version" => *bad == serde_json::json!(PROTOCOL_VERSION),
                            _ => false,
                        };
                        assert!(fits, "{line} was accepted as {got:?}");
                    }
                    Err(refusal) => {
                        refusals += 1;
                        let (kind, message) = (refusal.kind(), refusal.to_string());
                        let named = message.contains(&format!("\"{field}\""))
                            || message.contains(&format!("`{field}`"))
                            || message.contains("unknown variant");
                        assert!(
                            named,
                            "{line}: the refusal does not name {field:?}: {kind:?} {message}"
                        );
                    }
                }
            }
        }
    }
    println!("{refusals} refusals");
}

#[test]
fn shell_metacharacters_and_long_text_reach_the_table_unchanged() {
    // The daemon runs no shell: such text is data, kept byte for byte where it is
    // allowed (names refuse only white space, controls and a leading '-').
    for text in [
        "$(reboot)",
        "`id`",
        ";rm-rf",
        "a|b&c>d<e",
        "'\"\\",
        "%s%n",
        "名前🦀",
        "../../x",
    ] {
        for command in [
            Command::New {
                name: text.into(),
                interface: None,
                filter: format!("host 10.0.0.1 and {text}\n; {text}"),
                hook: None,
                direction: None,
                packets: None,
            },
            Command::Show { name: text.into() },
        ] {
            assert_eq!(one(json(&command).as_bytes()), Ok(command));
        }
    }
    let long = Command::Modify {
        name: "web".into(),
        filter: "tcp or ".repeat(10_000 / 7) + "udp",
    };
    assert_eq!(one(json(&long).as_bytes()), Ok(long));
}
