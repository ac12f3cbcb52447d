//! Fuzzes the dtrace/bpftrace output parser and the report built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pymemtrace::fuzzing::tracer_output(data));
