//! Shared helpers of the end-to-end tests (network namespaces, veth pairs, oracles).
