//! The capstats daemon: capture sessions, the unix socket server, access control,
//! attachment and persistence. Built on `capstats-ebpf`; knows nothing of terminals.
