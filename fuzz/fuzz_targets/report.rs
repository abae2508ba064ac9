//! A recording as `tracer report -` reads it (any text piped in), analysed and printed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::report;

fuzz_target!(|data: &[u8]| {
    let mut analysis = report::Analysis::default();
    report::read_from(data, &mut analysis).expect("reading from memory cannot fail");
    let analysed = analysis.report();
    serde_json::to_vec(&analysed).unwrap();
    let mut human = Vec::new();
    report::write_human(&analysed, "fuzz", &mut human).unwrap();
});
