//! Fuzzes the sys._debugmallocstats() parser, and the diff of two captures split at a NUL byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pymemtrace::fuzzing::mallocstats(data));
