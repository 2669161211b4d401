#![no_main]
//! cargo-fuzz driver of `targets::context_target` (fuzz/targets.rs).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::context_target(data));
