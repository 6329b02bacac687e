//! Who may talk to the daemon: root, or with `-g GROUP` a member of GROUP, decided from
//! the kernel's record of the connecting process (`SO_PEERCRED`, `SO_PEERGROUPS`), never
//! from anything the client says.

use std::io;
use std::os::fd::AsFd;

/// The credentials the kernel recorded for the peer when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected stream.
    pub fn of(stream: &impl AsFd) -> io::Result<Self> {
        let (pid, uid, gid) = crate::sys::creds::peer_cred(stream)?;
        Ok(Self {
            pid,
            uid,
            gid,
            groups: crate::sys::creds::peer_groups(stream)?,
        })
    }
}

/// A group, by number and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub name: String,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.gid)
    }
}

/// The daemon's access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// With `-g`: the group whose members may connect besides root.
    pub group: Option<Group>,
}

impl Access {
    /// `Ok` if `peer` may use the daemon, else the reason to tell it and log.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        if peer.uid == 0 {
            return Ok(());
        }
        match &self.group {
            Some(group) if peer.gid == group.gid || peer.groups.contains(&group.gid) => Ok(()),
            Some(group) => Err(format!(
                "permission denied: uid {} is neither root nor a member of group {group}",
                peer.uid
            )),
            None => Err(format!(
                "permission denied: only root may use this daemon (uid {}); start it with -g GROUP to let a group in",
                peer.uid
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_always_group_members_with_g_nobody_else() {
        let root_only = Access { group: None };
        let with_group = Access {
            group: Some(Group {
                gid: 990,
                name: "capstats".into(),
            }),
        };
        assert!(root_only.check(&peer(0, 0, &[])).is_ok());
        assert!(root_only.check(&peer(1000, 990, &[990])).is_err());
        assert!(with_group.check(&peer(0, 5, &[])).is_ok());
        assert!(
            with_group.check(&peer(1000, 990, &[])).is_ok(),
            "primary group"
        );
        assert!(
            with_group.check(&peer(1000, 100, &[4, 990])).is_ok(),
            "supplementary group"
        );
        let err = with_group.check(&peer(1000, 100, &[4])).unwrap_err();
        assert!(err.starts_with("permission denied"), "{err}");
        assert!(err.contains("capstats (990)"), "{err}");
    }

    #[test]
    fn reads_our_own_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = Peer::of(&a).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.gid, nix::unistd::getgid().as_raw());
        assert_eq!(me.pid, std::process::id() as i32);
    }
}
