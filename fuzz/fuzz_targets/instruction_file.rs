#![no_main]
//! cargo-fuzz driver of `targets::instruction_file_target` (fuzz/targets.rs).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::instruction_file_target(data));
