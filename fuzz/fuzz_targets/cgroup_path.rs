//! cgroup paths (anyone who may make cgroups names them) and /proc/PID/cgroup text to the
//! container and pod they name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::enrich::cgroup_path;

fuzz_target!(|text: &str| {
    let _ = cgroup_path::parse(text);
    let _ = cgroup_path::best_in_proc_cgroup(text);
});
