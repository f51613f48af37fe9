//! Fuzzes the shm ring reader over memory a peer writes: see `ipckit::fuzzing::ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::ring(data));
