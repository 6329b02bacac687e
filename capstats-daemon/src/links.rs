//! Watches the kernel's announcements of network interfaces (rtnetlink, the
//! `RTNLGRP_LINK` group), so that sessions follow their interface (by index) when it
//! is renamed, stop counting when it is deleted or moved to another namespace, and
//! resume as soon as an interface of their name appears again, without a client
//! asking.
//!
//! The daemon does nothing per packet; this task, on the daemon's runtime, wakes only
//! when an interface is added, changed or removed, and hands what it says to the
//! service on a blocking thread (the table's lock, the kernel).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::log::event;
use crate::service::Service;
use crate::sys;

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
/// `struct nlmsghdr` and `struct ifinfomsg`.
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A netlink socket subscribed to interface announcements.
#[derive(Debug)]
pub struct LinkEvents {
    fd: OwnedFd,
}

/// What an announcement says: the interface's name and index.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Added or changed (renamed, set up or down, moved in from another namespace).
    New(String, u32),
    /// Deleted, or moved to another namespace.
    Deleted(String, u32),
}

impl LinkEvents {
    /// Subscribes. Open it before looking at the interfaces, so that none that
    /// appears in between goes unnoticed.
    pub fn subscribe() -> io::Result<Self> {
        let fd = sys::netlink::route_socket()?;
        sys::netlink::subscribe(&fd, RTMGRP_LINK)?;
        Ok(Self { fd })
    }

    /// Reads the next datagram, if one is there (the socket does not block), and
    /// returns what it announces.
    fn next(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<Vec<LinkEvent>> {
        match sys::netlink::receive_now(fd, buffer) {
            Ok(n) => Ok(parse(&buffer[..n])),
            // Announcements were dropped: the caller looks at every interface.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Runs for the daemon's life as a task on its runtime (which must be entered):
    /// each interface that appears is offered to the service, which resumes the
    /// sessions waiting for it.
    pub fn watch(self, service: Arc<Mutex<Service>>) -> io::Result<()> {
        // SAFETY: the socket is ours alone, valid, and neither closed nor replaced while
        // the AsyncFd owns it (it owns the OwnedFd).
        let fd = unsafe { AsyncFd::register_with_interest(self.fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = match fd.readable().await {
                    Ok(mut ready) => match ready.try_io(|fd| Self::next(fd.get_ref(), &mut buffer))
                    {
                        Ok(read) => read,
                        // Nothing there after all: wait again.
                        Err(_would_block) => continue,
                    },
                    Err(e) => Err(e),
                };
                let events = match read {
                    Ok(events) => events,
                    Err(e) => {
                        event!(
                            "no longer watching interfaces (sessions of a deleted \
                             interface resume only at the next restart): {e}"
                        );
                        return;
                    }
                };
                if events.is_empty() {
                    continue;
                }
                let service = Arc::clone(&service);
                let applied = tokio::task::spawn_blocking(move || {
                    let mut service = service.lock().unwrap_or_else(|p| p.into_inner());
                    for event in events {
                        match event {
                            LinkEvent::New(name, index) => {
                                // A rename first: its sessions then wait for nothing.
                                service.follow_rename(&name, index);
                                if service.has_interface(&name) {
                                    service.resume(&name)
                                }
                            }
                            LinkEvent::Deleted(name, index) => service.gone(&name, index),
                        }
                    }
                });
                // In order: the next announcement waits for this one's changes.
                if let Err(e) = applied.await {
                    event!("following an interface announcement failed: {e}");
                }
            }
        });
        Ok(())
    }
}

/// The interface announcements in one netlink datagram.
pub fn parse(mut datagram: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(datagram[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(datagram[4..6].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > datagram.len() {
            break;
        }
        let message = &datagram[NLMSG_HDRLEN..len];
        if matches!(kind, RTM_NEWLINK | RTM_DELLINK)
            && let Some(name) = interface_name(message)
        {
            // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change.
            let index = u32::from_ne_bytes(message[4..8].try_into().unwrap());
            events.push(if kind == RTM_NEWLINK {
                LinkEvent::New(name, index)
            } else {
                LinkEvent::Deleted(name, index)
            });
        }
        datagram = &datagram[align4(len).min(datagram.len())..];
    }
    events
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `IFLA_IFNAME` of an `ifinfomsg` and its attributes.
fn interface_name(message: &[u8]) -> Option<String> {
    let mut attributes = message.get(IFINFOMSG_LEN..)?;
    while attributes.len() >= 4 {
        let len = u16::from_ne_bytes(attributes[0..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(attributes[2..4].try_into().unwrap());
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == IFLA_IFNAME {
            let value = &attributes[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return String::from_utf8(value[..end].to_vec()).ok();
        }
        attributes = &attributes[align4(len).min(attributes.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, name: &str) -> Vec<u8> {
        let mut attribute = Vec::new();
        let value_len = name.len() + 1;
        attribute.extend(((4 + value_len) as u16).to_ne_bytes());
        attribute.extend(IFLA_IFNAME.to_ne_bytes());
        attribute.extend(name.as_bytes());
        attribute.push(0);
        while attribute.len() % 4 != 0 {
            attribute.push(0);
        }
        let mut out = Vec::new();
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + attribute.len();
        out.extend((len as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        let mut info = [0u8; IFINFOMSG_LEN];
        info[4..8].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        out.extend(info);
        out.extend(attribute);
        out
    }

    #[test]
    fn reads_names_of_new_and_deleted_interfaces() {
        let mut datagram = message(RTM_NEWLINK, "veth0");
        datagram.extend(message(RTM_DELLINK, "eth1"));
        datagram.extend(message(20, "ignored"));
        assert_eq!(
            parse(&datagram),
            [
                LinkEvent::New("veth0".into(), 5),
                LinkEvent::Deleted("eth1".into(), 4)
            ]
        );
    }

    #[test]
    fn a_cut_short_datagram_yields_what_is_whole() {
        let datagram = message(RTM_NEWLINK, "veth0");
        for cut in 0..datagram.len() {
            let events = parse(&datagram[..cut]);
            assert!(events.is_empty(), "{cut}: {events:?}");
        }
    }
}
