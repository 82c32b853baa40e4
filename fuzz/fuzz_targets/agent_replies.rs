//! cargo-fuzz entry point; the body is `bpfleet_fuzz::agent_replies::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bpfleet_fuzz::agent_replies::run(data));
