//! Fuzzes spool names, as any program may write them into new/: see `ipckit::fuzzing::spool`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::spool(data));
