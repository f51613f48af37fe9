//! Fuzzes the events ring's reader over memory anyone may write: see
//! `ipckit::fuzzing::events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::events(data));
