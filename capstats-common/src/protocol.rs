//! Requests, responses and the session record, with their JSON form.

use serde::{Deserialize, Serialize};

pub use crate::hook::{Direction, HookName, XdpMode};
use crate::names::check_name;
use crate::text::bounded;

/// One request line: a `version` and a command's fields. Unknown fields are refused,
/// so a typo is an error rather than an ignored option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            command,
        }
    }

    /// Parses one request line. The error says what is wrong, for the client to see.
    /// Parts of the request it quotes (an unknown command's name, say) are escaped and
    /// the message is cut to
    /// [`MAX_MESSAGE_BYTES`](crate::text::MAX_MESSAGE_BYTES) ([`bounded`]): one short line,
    /// whatever the request held.
    pub fn parse(line: &str) -> Result<Self, String> {
        Self::parse_quoting(line).map_err(|message| bounded(&message))
    }

    fn parse_quoting(line: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // serde_json stops at a nesting depth of 128 (and so cannot exhaust the stack);
            // say which limit, rather than call the request not JSON.
            if e.to_string().starts_with("recursion limit exceeded") {
                format!(
                    "the request nests arrays or objects more than {MAX_NESTING} levels deep ({e})"
                )
            } else {
                format!("the request is not JSON: {e}")
            }
        })?;
        let object = value
            .as_object_mut()
            .ok_or("the request must be a JSON object")?;
        let version = object
            .remove("version")
            .ok_or("the request has no \"version\"")?;
        let version = version
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                format!(
                    "\"version\" must be a number (this daemon speaks version {}), not {}",
                    crate::PROTOCOL_VERSION,
                    described(&version)
                )
            })?;
        if version != crate::PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not spoken here; this daemon speaks version {}",
                crate::PROTOCOL_VERSION
            ));
        }
        // serde's own message for a value of the wrong type does not say which field
        // it is in ("invalid type: integer `1`, expected a string"): check them first.
        for (field, value) in object.iter() {
            let (fits, expected) = match field.as_str() {
                "command" | "name" | "filter" => (value.is_string(), "a string"),
                "interface" | "hook" | "direction" => {
                    (value.is_string() || value.is_null(), "a string")
                }
                "names" => (
                    value
                        .as_array()
                        .is_some_and(|names| names.iter().all(serde_json::Value::is_string)),
                    "an array of strings",
                ),
                // Unknown fields: serde names them, with those the command has.
                _ => continue,
            };
            if !fits {
                return Err(format!(
                    "bad request: \"{field}\" must be {expected}, not {}",
                    described(value)
                ));
            }
        }
        let command = serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
        Ok(Self { version, command })
    }
}

/// A JSON value in an error message: short ones as they are, long ones by their kind,
/// so that a message does not repeat a client's megabyte.
fn described(value: &serde_json::Value) -> String {
    use serde_json::Value;
    let text = value.to_string();
    if text.len() <= 40 {
        return text;
    }
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => text,
        Value::String(s) => format!("a string of {} bytes", s.len()),
        Value::Array(a) => format!("an array of {} elements", a.len()),
        Value::Object(o) => format!("an object of {} fields", o.len()),
    }
}

/// How deep arrays and objects may nest in a request: serde_json's own limit (it stops
/// at the 128th level), which keeps a hostile `[[[[...` from exhausting the daemon's
/// stack. Requests nest at most 2 levels.
pub const MAX_NESTING: usize = 127;

/// What the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Start counting `filter` on `interface` (the daemon's default interface if absent).
    New {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
        filter: String,
        /// Where to count; `socket` if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<HookName>,
        /// Which packets: `both` if absent (the socket hook counts both, XDP only `in`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<Direction>,
        /// What a packet is: `stack` if absent on the socket and tc hooks, `wire` on
        /// XDP (the only one it has).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packets: Option<Packets>,
    },
    /// Replace a session's filter, keeping its counters.
    Modify { name: String, filter: String },
    /// Stop counting and forget the session.
    Stop { name: String },
    /// Every session. (A struct variant, so that unknown fields are refused here too.)
    List {},
    /// One session with its counters.
    Show { name: String },
    /// Counters of the named sessions, or of every session when `names` is empty.
    Poll {
        #[serde(default)]
        names: Vec<String>,
    },
}

impl Command {
    /// Refuses what is wrong with a request whatever the daemon's state, before it is
    /// dispatched (and so without the daemon's lock, the kernel or libpcap): a `new`
    /// session's name, an interface name no Linux interface can have, a NUL byte in a
    /// filter (libpcap reads C strings: the rest would be silently dropped).
    ///
    /// Names in `modify`, `stop`, `show` and `poll` are not checked here: a name that
    /// is not a session's is answered as an unknown session, whatever its form.
    /// Its messages are [`bounded`], as [`Request::parse`]'s.
    pub fn check(&self) -> Result<(), CheckError> {
        match self {
            Command::New {
                name,
                interface,
                filter,
                ..
            } => {
                check_name(name).map_err(|reason| CheckError::Name { reason })?;
                if let Some(interface) = interface {
                    check_interface_name(interface)
                        .map_err(|reason| CheckError::Interface { reason })?;
                }
                check_filter(name, filter)
            }
            Command::Modify { name, filter } => {
                if is_blank_filter(filter) {
                    return Err(CheckError::NoFilter { name: name.clone() });
                }
                check_filter(name, filter)
            }
            Command::Stop { .. }
            | Command::List {}
            | Command::Show { .. }
            | Command::Poll { .. } => Ok(()),
        }
    }
}

/// What [`Command::check`] refuses: one variant per rule. Its text is [`bounded`]
/// (it may quote a request of 64 KiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// A `new` session's name capstats does not take; `reason` is
    /// [`check_name`]'s.
    Name { reason: String },
    /// An interface name Linux never gives; `reason` is [`check_interface_name`]'s.
    Interface { reason: String },
    /// A `modify` of session `name` without an expression ([`modify_needs_a_filter`]).
    NoFilter { name: String },
    /// Session `name`'s expression has a NUL byte at byte `at`.
    Nul { name: String, at: usize },
}

impl CheckError {
    /// The protocol's kind of this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CheckError::Name { .. } => ErrorKind::InvalidName,
            CheckError::Interface { .. } => ErrorKind::UnknownInterface,
            CheckError::NoFilter { .. } | CheckError::Nul { .. } => ErrorKind::InvalidFilter,
        }
    }
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            CheckError::Name { reason } | CheckError::Interface { reason } => reason.clone(),
            CheckError::NoFilter { name } => modify_needs_a_filter(name),
            CheckError::Nul { name, at } => format!(
                "the filter expression of session {name:?} contains a NUL byte (at byte {at})"
            ),
        };
        f.write_str(&bounded(&text))
    }
}

impl std::error::Error for CheckError {}

/// Why a request line is refused before it is dispatched: what the daemon answers
/// such a line, the same whichever connection sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES).
    TooLong,
    /// Not UTF-8.
    NotUtf8,
    /// Not a request: [`Request::parse`]'s message (bounded already).
    Malformed(String),
    /// A request [`Command::check`] refuses.
    Refused(CheckError),
}

impl LineError {
    /// The protocol's kind of this refusal: `bad_request`, or the check's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LineError::TooLong | LineError::NotUtf8 | LineError::Malformed(_) => {
                ErrorKind::BadRequest
            }
            LineError::Refused(cause) => cause.kind(),
        }
    }

    /// A line of text as the daemon reads it: parsed, then checked.
    pub fn decode(line: &str) -> Result<Command, LineError> {
        let request = Request::parse(line).map_err(LineError::Malformed)?;
        request.command.check().map_err(LineError::Refused)?;
        Ok(request.command)
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::TooLong => write!(
                f,
                "request longer than {} bytes (the limit of a request line)",
                crate::MAX_REQUEST_BYTES
            ),
            LineError::NotUtf8 => f.write_str("the request is not UTF-8 text"),
            LineError::Malformed(message) => f.write_str(message),
            LineError::Refused(cause) => cause.fmt(f),
        }
    }
}

/// Its text is its cause's: the cause is not also its source (see
/// `capstats_ebpf::errors`).
impl std::error::Error for LineError {}

/// Whether libpcap would read `filter` as no expression at all (every packet): empty or
/// only the white space its scanner skips.
pub fn is_blank_filter(filter: &str) -> bool {
    filter
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// The refusal of a `modify` without an expression: it would silently widen the session
/// to every packet, which is rarely what a forgotten argument means.
pub fn modify_needs_a_filter(name: &str) -> String {
    format!(
        "modify {name:?} needs a filter expression; an empty one would count every packet. \
         A session that counts everything is made on purpose: capstats new NAME \"\""
    )
}

/// The longest interface name Linux has (`IFNAMSIZ` less the terminating NUL).
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;

/// Refuses a name the kernel would never give an interface (its `dev_valid_name`): empty,
/// longer than 15 bytes, `.` or `..`, or with `/`, `:`, ASCII white space (C's
/// `isspace`) or a NUL byte. The
/// kernel's name lookup stops at a `:` (an old alias syntax), so `eth0:junk` would
/// otherwise name eth0.
pub fn check_interface_name(interface: &str) -> Result<(), String> {
    if interface.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if interface.len() > MAX_INTERFACE_NAME_BYTES {
        return Err(format!(
            "no interface named {interface:?}: interface names are at most {MAX_INTERFACE_NAME_BYTES} bytes, this one is {}",
            interface.len()
        ));
    }
    if interface == "." || interface == ".." {
        return Err(format!(
            "no interface named {interface:?}: not a valid interface name"
        ));
    }
    if let Some(c) = interface
        .chars()
        .find(|&c| matches!(c, '/' | ':' | '\0' | '\x0b') || c.is_ascii_whitespace())
    {
        return Err(format!(
            "no interface named {interface:?}: interface names cannot contain {c:?}"
        ));
    }
    Ok(())
}

fn check_filter(name: &str, filter: &str) -> Result<(), CheckError> {
    match filter.find('\0') {
        Some(at) => Err(CheckError::Nul {
            name: name.to_owned(),
            at,
        }),
        None => Ok(()),
    }
}

/// What a session counts as a packet and its bytes (`packets wire|stack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packets {
    /// The packet as the stack holds it, as tcpdump shows it: a GRO-merged packet (or
    /// one not yet split by GSO/TSO) is one packet of one set of headers.
    #[default]
    Stack,
    /// Each frame it was (or will be) on the wire: its GSO segments, each with its own
    /// headers. What XDP always counts.
    Wire,
}

impl Packets {
    pub const fn as_str(self) -> &'static str {
        match self {
            Packets::Stack => "stack",
            Packets::Wire => "wire",
        }
    }
}

/// One response line: exactly one of `ok` or `error`.
// One value per request, serialized at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ErrorReply),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// `new`, `modify`, `show`: the session as it now is.
    Session(Session),
    /// `stop`: the session's last state, counters included.
    Stopped(Session),
    /// `list`, `poll`: sessions in name order.
    Sessions(Vec<Session>),
}

/// A failure, with a kind a program can act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, not a request, a wrong version, or too long.
    BadRequest,
    PermissionDenied,
    InvalidName,
    DuplicateName,
    UnknownSession,
    /// libpcap refused the expression; the message is libpcap's.
    InvalidFilter,
    UnknownInterface,
    /// The kernel refused something (program load, attach, map).
    Kernel,
    Internal,
}

/// A session as the daemon reports it. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub name: String,
    pub interface: String,
    pub filter: String,
    /// Packets and bytes counted since the session was created (bytes: each packet's
    /// length, link-layer header and VLAN tags included, as tcpdump records it; with
    /// `packets_counted` `wire`, each GSO/GRO segment as its frame on the wire).
    /// Absent only where a reply carries no counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whether the interface is there and the session counts on it.
    pub up: bool,
    /// The state of the interface itself (`ip link` shows it): `up`; `down`
    /// (administratively); `no-carrier` (up, but its lower layer is not: no carrier, a
    /// veth whose peer is down), where a session counts nothing for want of packets.
    /// Absent when no interface has the name, and for `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The hook counting: `socket`, `tc` or `xdp`.
    pub hook: HookName,
    /// `in`, `out` or `both`.
    pub direction: Direction,
    /// XDP sessions: `native` (in the driver) or `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<XdpMode>,
    /// What a packet is: `stack` (as tcpdump shows it) or `wire` (each GSO/GRO
    /// segment as the frame it was on the wire). Absent from an older daemon: `stack`
    /// on socket and tc, `wire` on xdp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_counted: Option<Packets>,
    pub created: String,
    pub modified: String,
    /// Socket sessions: since when this daemon's socket counts. A socket session does
    /// not count while no daemon runs; when this is later than `created`, packets that
    /// passed in between (the daemon was restarted) are not in the counters. Absent for
    /// tc and xdp sessions, which count in the kernel without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counting_since: Option<String>,
    /// When these counters were read (`poll`, `show`): rates divide by its differences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    /// Whether the session's pinned counters (and a tc or xdp session's links) outlive
    /// the daemon: false when the daemon pins into a bpffs of a mount namespace that
    /// dies with it (started under `ip netns exec` with no bpffs outside to reach);
    /// then a restart goes back to the counts last saved, and tc and xdp sessions stop
    /// counting while no daemon runs. Absent where the daemon did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survives_daemon: Option<bool>,
    /// Whether the session waits for its filter to be compiled: while the daemon
    /// restores it at start, or its interface has come back. It is down meanwhile,
    /// with its counters; it comes up as soon as its filter is compiled. Absent when
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compiling: bool,
    /// Why the session is down, when the reason is its own (its filter did not compile
    /// for the interface, or not within the time limit); it keeps its counters and is
    /// tried again when its interface comes back, at the next start, or by `modify`.
    /// Absent when it counts, and when it only waits for its interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Session {
    /// What a packet is for the session: what it says, else (an older daemon) the
    /// hook's default, which is what such a daemon counted.
    pub fn packets(&self) -> Packets {
        self.packets_counted
            .unwrap_or(if self.hook == HookName::Xdp {
                Packets::Wire
            } else {
                Packets::Stack
            })
    }
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error(ErrorReply {
            kind,
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_counted_defaults_by_hook_for_older_daemons() {
        let json = |hook: &str, extra: &str| {
            format!(
                r#"{{"name":"a","interface":"eth0","filter":"","up":true,"hook":"{hook}","direction":"in","created":"x","modified":"x"{extra}}}"#
            )
        };
        let old: Session = serde_json::from_str(&json("tc", "")).unwrap();
        assert_eq!((old.packets_counted, old.packets()), (None, Packets::Stack));
        let old: Session = serde_json::from_str(&json("xdp", "")).unwrap();
        assert_eq!(old.packets(), Packets::Wire);
        let new: Session =
            serde_json::from_str(&json("tc", r#","packets_counted":"wire""#)).unwrap();
        assert_eq!(new.packets(), Packets::Wire);
        assert!(
            serde_json::to_string(&new)
                .unwrap()
                .contains(r#""packets_counted":"wire""#)
        );
        assert!(serde_json::from_str::<Packets>(r#""frames""#).is_err());
    }

    #[test]
    fn requests_have_a_stable_json_form() {
        let cases = [
            (
                Command::New {
                    name: "web".into(),
                    interface: Some("eth0".into()),
                    filter: "tcp port 80".into(),
                    hook: None,
                    direction: None,
                    packets: None,
                },
                r#"{"version":1,"command":"new","name":"web","interface":"eth0","filter":"tcp port 80"}"#,
            ),
            (
                Command::New {
                    name: "bulk".into(),
                    interface: Some("eth0".into()),
                    filter: "tcp".into(),
                    hook: Some(HookName::Tc),
                    direction: None,
                    packets: Some(Packets::Wire),
                },
                r#"{"version":1,"command":"new","name":"bulk","interface":"eth0","filter":"tcp","hook":"tc","packets":"wire"}"#,
            ),
            (
                Command::Poll { names: vec![] },
                r#"{"version":1,"command":"poll","names":[]}"#,
            ),
            (Command::List {}, r#"{"version":1,"command":"list"}"#),
        ];
        for (command, json) in cases {
            let request = Request {
                version: 1,
                command,
            };
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(Request::parse(json).unwrap(), request);
        }
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        for bad in [
            r#"{"version":1,"command":"reboot"}"#,
            r#"{"version":1,"command":"list","extra":1}"#,
            r#"{"version":1,"command":"show"}"#,
            r#"{"version":"1","command":"list"}"#,
            r#"{"command":"list"}"#,
            r#"[1,2]"#,
            r#"{"version":2,"command":"list"}"#,
            "{\"version\":1,",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
        let err = Request::parse(r#"{"version":1,"command":"list","extra":1}"#).unwrap_err();
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = Request::parse(r#"{"version":7,"command":"list"}"#).unwrap_err();
        assert!(err.contains("version 7"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_with_its_field() {
        for (bad, says) in [
            (
                r#"{"version":1,"command":"show","name":1}"#,
                r#""name" must be a string, not 1"#,
            ),
            (
                r#"{"version":1,"command":"new","name":"a","filter":"","interface":[]}"#,
                r#""interface" must be a string, not []"#,
            ),
            (
                r#"{"version":1,"command":"poll","names":["a",2]}"#,
                r#""names" must be an array of strings, not ["a",2]"#,
            ),
            (
                r#"{"version":1,"command":7}"#,
                r#""command" must be a string, not 7"#,
            ),
            (
                r#"{"version":1.5,"command":"list"}"#,
                r#""version" must be a number (this daemon speaks version 1), not 1.5"#,
            ),
            (
                r#"{"version":4294967297,"command":"list"}"#,
                "not 4294967297",
            ),
        ] {
            let err = Request::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // Absent and null are the same for optional fields.
        let null = r#"{"version":1,"command":"new","name":"a","filter":"","hook":null}"#;
        assert!(matches!(
            Request::parse(null).unwrap().command,
            Command::New { hook: None, .. }
        ));
        // A long value is described, not repeated.
        let long = format!(
            r#"{{"version":1,"command":"show","name":[{}1]}}"#,
            "1,".repeat(10_000)
        );
        let err = Request::parse(&long).unwrap_err();
        assert!(err.ends_with("not an array of 10001 elements"), "{err}");
    }

    #[test]
    fn quoted_parts_of_a_request_are_escaped() {
        let err = Request::parse("{\"version\":1,\"command\":\"li\\nst\\u001b[31m\"}").unwrap_err();
        assert!(err.contains(r"unknown variant `li\nst\u{1b}[31m`"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_naming_the_limit() {
        let deep = "[".repeat(100_000);
        let err = Request::parse(&deep).unwrap_err();
        let limit = format!("more than {MAX_NESTING} levels deep");
        assert!(err.contains(&limit), "{err}");
        let err = Request::parse(&"[".repeat(MAX_NESTING + 1)).unwrap_err();
        assert!(err.contains(&limit), "{err}");
        // Within the limit, it is an ordinary JSON error.
        let err = Request::parse(&"[".repeat(MAX_NESTING)).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn commands_are_checked_before_dispatch() {
        let new = |name: &str, interface: Option<&str>, filter: &str| Command::New {
            name: name.into(),
            interface: interface.map(Into::into),
            filter: filter.into(),
            hook: None,
            direction: None,
            packets: None,
        };
        assert_eq!(new("web", Some("eth0"), "tcp port 80").check(), Ok(()));
        assert_eq!(new("web", Some(&"e".repeat(15)), "").check(), Ok(()));
        let cases = [
            (
                new("a b", None, "udp"),
                ErrorKind::InvalidName,
                "contains a space",
            ),
            (
                new("", None, "udp"),
                ErrorKind::InvalidName,
                "cannot be empty",
            ),
            (
                new("web", Some("lo:junk"), "udp"),
                ErrorKind::UnknownInterface,
                "cannot contain ':'",
            ),
            (
                new("web", Some("../eth0"), "udp"),
                ErrorKind::UnknownInterface,
                "cannot contain '/'",
            ),
            (
                new("web", Some(&"e".repeat(16)), "udp"),
                ErrorKind::UnknownInterface,
                "at most 15 bytes, this one is 16",
            ),
            (
                new("web", Some(""), "udp"),
                ErrorKind::UnknownInterface,
                "cannot be empty",
            ),
            (
                new("web", Some(".."), "udp"),
                ErrorKind::UnknownInterface,
                "not a valid interface name",
            ),
            (
                new("web", None, "udp\0 and tcp"),
                ErrorKind::InvalidFilter,
                "session \"web\" contains a NUL byte (at byte 3)",
            ),
            (
                Command::Modify {
                    name: "web".into(),
                    filter: "\0".into(),
                },
                ErrorKind::InvalidFilter,
                "NUL byte",
            ),
            (
                Command::Modify {
                    name: "web".into(),
                    filter: "".into(),
                },
                ErrorKind::InvalidFilter,
                "needs a filter expression",
            ),
            (
                Command::Modify {
                    name: "web".into(),
                    filter: " \t\n".into(),
                },
                ErrorKind::InvalidFilter,
                "capstats new NAME \"\"",
            ),
        ];
        for (command, kind, says) in cases {
            let error = command.check().unwrap_err();
            let message = error.to_string();
            assert_eq!(error.kind(), kind, "{command:?}: {message}");
            assert!(message.contains(says), "{command:?}: {message}");
            // A line with that command is refused for that reason, kind and text.
            let line = LineError::decode(&serde_json::to_string(&Request::new(command)).unwrap());
            assert_eq!(line, Err(LineError::Refused(error)));
        }
        // Names of sessions that may or may not exist are the daemon's to answer.
        assert_eq!(Command::Stop { name: "".into() }.check(), Ok(()));
    }

    /// The refusals' kinds and texts on the wire, exactly as clients and tests read
    /// them; a quoted request of any size is cut to one short line.
    #[test]
    fn line_refusals_say_what_the_daemon_has_always_said() {
        let cases = [
            (
                LineError::TooLong,
                ErrorKind::BadRequest,
                "request longer than 65536 bytes (the limit of a request line)".to_owned(),
            ),
            (
                LineError::NotUtf8,
                ErrorKind::BadRequest,
                "the request is not UTF-8 text".to_owned(),
            ),
            (
                LineError::decode("{").unwrap_err(),
                ErrorKind::BadRequest,
                Request::parse("{").unwrap_err(),
            ),
            (
                LineError::Refused(CheckError::Nul {
                    name: "web".into(),
                    at: 3,
                }),
                ErrorKind::InvalidFilter,
                "the filter expression of session \"web\" contains a NUL byte (at byte 3)"
                    .to_owned(),
            ),
            (
                LineError::Refused(CheckError::NoFilter { name: "web".into() }),
                ErrorKind::InvalidFilter,
                modify_needs_a_filter("web"),
            ),
        ];
        for (error, kind, text) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.to_string(), text);
        }
        assert!(matches!(
            LineError::decode("{").unwrap_err(),
            LineError::Malformed(_)
        ));

        let huge = "\u{7}".repeat(60_000);
        let error = CheckError::Nul {
            name: huge.clone(),
            at: 1,
        };
        let text = error.to_string();
        assert!(
            text.len() <= crate::text::MAX_MESSAGE_BYTES,
            "{}",
            text.len()
        );
        assert!(!text.contains('\u{7}'), "control characters escaped");
        let error = CheckError::Name { reason: huge };
        assert!(error.to_string().len() <= crate::text::MAX_MESSAGE_BYTES);
    }

    /// Lines written before the hook vocabulary was one type (requests from older
    /// clients, replies from older daemons) parse into the typed fields, and the
    /// replies print back byte for byte.
    #[test]
    fn older_lines_parse_into_the_typed_hook_fields() {
        let request = Request::parse(
            r#"{"version":1,"command":"new","name":"web","filter":"tcp","hook":"tc","direction":"out"}"#,
        )
        .unwrap();
        let Command::New {
            hook, direction, ..
        } = request.command
        else {
            panic!("not a new: {request:?}");
        };
        assert_eq!(
            (hook, direction),
            (Some(HookName::Tc), Some(Direction::Out))
        );
        let reply = r#"{"ok":{"session":{"name":"x","interface":"eth0","filter":"","packets":1,"bytes":60,"up":true,"hook":"xdp","direction":"in","mode":"generic","created":"2026-11-26T03:00:00Z","modified":"2026-11-26T03:00:00Z"}}}"#;
        let parsed: Response = serde_json::from_str(reply).unwrap();
        let Response::Ok(Reply::Session(session)) = &parsed else {
            panic!("not a session: {parsed:?}");
        };
        assert_eq!(
            (session.hook, session.direction, session.mode),
            (HookName::Xdp, Direction::In, Some(XdpMode::Generic))
        );
        assert_eq!(serde_json::to_string(&parsed).unwrap(), reply);
        let bogus = reply.replace(r#""mode":"generic""#, r#""mode":"skb""#);
        assert!(serde_json::from_str::<Response>(&bogus).is_err());
    }

    #[test]
    fn responses_have_a_stable_json_form() {
        let error = Response::error(ErrorKind::UnknownSession, "no session named \"x\"");
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"error":{"kind":"unknown_session","message":"no session named \"x\""}}"#
        );
    }
}
