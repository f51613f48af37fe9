//! Fuzzes the stream frame decoder and handshake: see `ipckit::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::frame(data));
