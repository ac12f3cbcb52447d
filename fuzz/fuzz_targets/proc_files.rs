//! Fuzzes every reader of /proc text (stat, statm, status, smaps_rollup, maps, cmdline, children).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pymemtrace::fuzzing::proc_files(data));
