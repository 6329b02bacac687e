//! This crate's system calls and foreign functions, in one place: thin typed wrappers
//! that the rest of the crate uses as safe functions. Each `unsafe` block here carries
//! a `// SAFETY:` comment saying why it holds; no other module of the crate needs
//! `unsafe`. Where `nix` covers a call it makes it (the replay namespace, its socket);
//! `bpf(2)` commands aya keeps private and libpcap's compiler and interpreter, which
//! neither `nix` nor the `pcap` crate offer, are made here.
//!
//! - [`bpf`]: maps created with their key and value types, element and batch updates,
//!   program loads, program info, pins;
//! - [`pcap`]: libpcap's compiler with a netmask, its interpreter, an interface's
//!   netmask;
//! - [`packet`]: AF_PACKET sockets: a frame sent out of an interface, the interface a
//!   socket is bound to, a socket made to receive nothing;
//! - [`rcu`]: waiting for the BPF programs running now to end.
//!
//! The wrappers return the kernel's errno as an `io::Error` and name nothing: their
//! callers' errors name the object (the map, the program) and carry that errno once.

pub mod bpf;
pub mod packet;
pub mod pcap;
pub mod rcu;
