//! Where counting happens: the one vocabulary of hooks, from the protocol's words to
//! the place a program runs in the kernel.
//!
//! A session asks for a [`HookName`] and a [`Direction`] (the protocol's `hook` and
//! `direction` fields); together they name the [`Hook`]s it counts at
//! ([`Hook::of`]): `tc` in `both` directions is two, tc ingress and tc egress. A
//! [`Hook`] is where one program runs: what the translator generates code for, what
//! the kernel loads it as, what the daemon attaches and pins. An XDP program runs in
//! an [`XdpMode`].

use serde::{Deserialize, Serialize};

/// Where one counting program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `BPF_PROG_TYPE_SOCKET_FILTER` on an AF_PACKET socket bound to the interface:
    /// what tcpdump sees, both directions.
    Socket,
    /// `BPF_PROG_TYPE_SCHED_CLS` at TC clsact (tcx) ingress.
    TcIngress,
    /// `BPF_PROG_TYPE_SCHED_CLS` at TC clsact (tcx) egress: every packet is one going
    /// out, though `skb->pkt_type` still says `PACKET_HOST` there.
    TcEgress,
    /// `BPF_PROG_TYPE_XDP`: received frames, before the kernel builds a socket buffer.
    Xdp,
}

impl Hook {
    /// Every hook, in order.
    pub const ALL: [Hook; 4] = [Hook::Socket, Hook::TcIngress, Hook::TcEgress, Hook::Xdp];

    /// The hooks a session of `hook` counting `direction` runs at. A direction the
    /// hook does not have (checked before a session is made) is the hook's own.
    pub const fn of(hook: HookName, direction: Direction) -> &'static [Hook] {
        match (hook, direction) {
            (HookName::Socket, _) => &[Hook::Socket],
            (HookName::Xdp, _) => &[Hook::Xdp],
            (HookName::Tc, Direction::In) => &[Hook::TcIngress],
            (HookName::Tc, Direction::Out) => &[Hook::TcEgress],
            (HookName::Tc, Direction::Both) => &[Hook::TcIngress, Hook::TcEgress],
        }
    }

    /// The protocol's name of its kind (`socket`, `tc`, `xdp`).
    pub const fn name(self) -> HookName {
        match self {
            Hook::Socket => HookName::Socket,
            Hook::TcIngress | Hook::TcEgress => HookName::Tc,
            Hook::Xdp => HookName::Xdp,
        }
    }

    /// Whether it is one of the two TC hooks (one program type, `SCHED_CLS`).
    pub const fn is_tc(self) -> bool {
        matches!(self, Hook::TcIngress | Hook::TcEgress)
    }

    /// In words, for messages: `socket`, `tc ingress`, `tc egress`, `XDP`.
    pub const fn describe(self) -> &'static str {
        match self {
            Hook::Socket => "socket",
            Hook::TcIngress => "tc ingress",
            Hook::TcEgress => "tc egress",
            Hook::Xdp => "XDP",
        }
    }
}

/// Its kind's name: `socket`, `tc` or `xdp` (what a program can and cannot read is
/// the kind's).
impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name().as_str())
    }
}

/// Where a session counts, as the protocol names it (its `hook` field); with a
/// [`Direction`], the [`Hook`]s it runs at ([`Hook::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    /// An AF_PACKET socket filter: what tcpdump sees, both directions.
    Socket,
    /// TC clsact (tcx): ingress, egress or both; counts while no daemon runs.
    Tc,
    /// XDP: ingress, before the kernel builds a socket buffer; counts while no daemon
    /// runs.
    Xdp,
}

impl HookName {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookName::Socket => "socket",
            HookName::Tc => "tc",
            HookName::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for HookName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which packets a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
    Both,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an XDP program runs on its interface (a session's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// In the driver.
    Native,
    /// In the stack, after the driver (`XDP_FLAGS_SKB_MODE`), where the driver has no
    /// XDP.
    Generic,
}

impl XdpMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol's words are the ones clients and state files already use.
    #[test]
    fn hooks_keep_their_json_words() {
        let json = |v: serde_json::Result<String>| v.unwrap();
        assert_eq!(
            json(serde_json::to_string(&HookName::Socket)),
            r#""socket""#
        );
        assert_eq!(json(serde_json::to_string(&HookName::Tc)), r#""tc""#);
        assert_eq!(json(serde_json::to_string(&HookName::Xdp)), r#""xdp""#);
        assert_eq!(json(serde_json::to_string(&Direction::In)), r#""in""#);
        assert_eq!(json(serde_json::to_string(&Direction::Out)), r#""out""#);
        assert_eq!(json(serde_json::to_string(&Direction::Both)), r#""both""#);
        assert_eq!(json(serde_json::to_string(&XdpMode::Native)), r#""native""#);
        assert_eq!(
            json(serde_json::to_string(&XdpMode::Generic)),
            r#""generic""#
        );
        assert_eq!(
            serde_json::from_str::<XdpMode>(r#""generic""#).unwrap(),
            XdpMode::Generic
        );
        assert!(serde_json::from_str::<XdpMode>(r#""skb""#).is_err());
    }

    /// A session's hook and direction name the programs it counts in, each hook of
    /// one kind.
    #[test]
    fn a_session_counts_at_the_hooks_of_its_kind_and_direction() {
        assert_eq!(
            Hook::of(HookName::Tc, Direction::Both),
            [Hook::TcIngress, Hook::TcEgress]
        );
        assert_eq!(Hook::of(HookName::Tc, Direction::Out), [Hook::TcEgress]);
        assert_eq!(Hook::of(HookName::Socket, Direction::Both), [Hook::Socket]);
        assert_eq!(Hook::of(HookName::Xdp, Direction::In), [Hook::Xdp]);
        for hook in Hook::ALL {
            assert!(Hook::of(hook.name(), Direction::Both).contains(&hook));
            assert_eq!(hook.to_string(), hook.name().as_str());
        }
    }
}
