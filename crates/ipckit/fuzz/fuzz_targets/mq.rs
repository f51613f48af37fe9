//! Fuzzes mq request (and reply) parsing: see `ipckit::fuzzing::mq`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::mq(data));
