//! Fuzzes the `process --input` log reader and the replay's table and summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pymemtrace::fuzzing::process_log(data));
