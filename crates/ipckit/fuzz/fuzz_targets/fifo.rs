//! Fuzzes fifo chunk reassembly: see `ipckit::fuzzing::fifo`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipckit::fuzzing::fifo(data));
