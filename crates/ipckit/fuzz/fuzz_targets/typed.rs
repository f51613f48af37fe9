//! Fuzzes typed payloads and datagram answers: see `ipckit::fuzzing::typed`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::typed(data));
