//! Every expression libpcap must refuse on Ethernet (`filters_ethernet_invalid.txt`,
//! 1,934) is refused with libpcap's own message, before any program is loaded.
//!
//! The corpus comes from libpcap HEAD; 15 of its expressions are still accepted by the
//! libpcap 1.10.3 this runs on (listed in the corpus). Of those, `inbound`,
//! `outbound` and `ifindex` capstats itself refuses for capture files; the others
//! (DECnet address and value-range checks added later) compile, as they would with
//! tcpdump here. Like libpcap's reject tests, the netmask is unknown (so `ip broadcast`
//! is refused; `capstats test`, like `tcpdump -r`, assumes 0 and compiles it).

mod common;

use capstats_ebpf::filter::{Filter, FilterError, NETMASK_UNKNOWN};

#[test]
fn every_invalid_expression_is_refused_with_libpcaps_message() {
    let corpus = common::corpus_dir();
    let invalid = common::lines(&corpus.join("filters_ethernet_invalid.txt"));
    assert_eq!(invalid.len(), 1934);
    let accepted_by_1_10 =
        common::lines(&corpus.join("filters_ethernet_invalid_but_accepted_by_libpcap_1.10.3.txt"));
    let mut compiled = Vec::new();
    let mut refused_by_us = Vec::new();
    let mut wrong = Vec::new();
    for expression in &invalid {
        match Filter::for_linktype(pcap::Linktype::ETHERNET, expression, NETMASK_UNKNOWN) {
            Err(FilterError::Compile { message, .. }) if !message.trim().is_empty() => {}
            Err(FilterError::NeedsInterface { .. }) => refused_by_us.push(expression.clone()),
            // A NUL byte cannot reach libpcap at all: refused before it.
            Err(FilterError::Nul) => {}
            Err(other) => wrong.push(format!(
                "{expression:?}: refused without libpcap's message: {other}"
            )),
            Ok(_) => compiled.push(expression.clone()),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for expression in compiled.iter().chain(&refused_by_us) {
        assert!(
            accepted_by_1_10.contains(expression),
            "{expression:?} compiled, but libpcap 1.10.3 is known to refuse it"
        );
    }
    refused_by_us.sort();
    assert_eq!(refused_by_us, ["ifindex 2", "inbound", "outbound"]);
    eprintln!(
        "{} refused by libpcap, {refused_by_us:?} by capstats, {} accepted by libpcap 1.10.3: {compiled:?}",
        invalid.len() - compiled.len() - refused_by_us.len(),
        compiled.len()
    );
}
