//! The container runtimes' records (OCI bundle configs, Docker's config.v2.json), written by
//! whoever runs containers on the node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::enrich::metadata;

fuzz_target!(|data: &[u8]| {
    let _ = metadata::from_oci_config(data);
    let parent = data
        .split(|&b| b == 0)
        .nth(1)
        .and_then(|p| std::str::from_utf8(p).ok());
    let _ = metadata::from_docker_config(data, parent);
});
