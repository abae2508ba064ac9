//! /proc/PID/mountinfo text (mount points are whatever paths were mounted on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::kernel::mountinfo;

fuzz_target!(|bytes: &[u8]| {
    let _ = mountinfo::parse(bytes);
});
