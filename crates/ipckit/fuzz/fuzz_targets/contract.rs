//! Fuzzes contract calls, replies and events: see `ipckit::fuzzing::contract`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::contract(data));
