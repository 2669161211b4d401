#![no_main]
//! cargo-fuzz driver of `targets::decrypt_target` (fuzz/targets.rs).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::decrypt_target(data));
