//! Fuzzes the endpoint URL parser: see `ipckit::fuzzing::endpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::endpoint(data));
