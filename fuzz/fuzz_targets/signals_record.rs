//! Ring-buffer bytes of the signals tracer's records (a signal, an OOM victim) to events,
//! written in both output forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    clock::Clock,
    output::Event as _,
    tracers::{
        decode_record,
        signals::{
            decode::{OomVictim, SignalRecord},
            senders::Description,
        },
    },
};
use tracer_common::signal::{DescribedSignalEvent, OomVictimEvent};

fuzz_target!(|input: &[u8]| {
    // Zeroes after the input: every input is a whole record, however short.
    let mut data = input.to_vec();
    data.resize(
        data.len()
            .max(size_of::<DescribedSignalEvent>())
            .max(size_of::<OomVictimEvent>()),
        0,
    );
    let data = &data[..];
    let clock = Clock::new();
    // The same bytes as a record with its sender's description, and as one without.
    if let Ok(described) = decode_record::<DescribedSignalEvent>(data) {
        let description = Description::decode(&described.description);
        for description in [Some(&description), None] {
            let record = SignalRecord::decode(&described.event, description, &clock);
            let mut human = Vec::new();
            record.write_human(&mut human).unwrap();
            serde_json::to_vec(&record).unwrap();
            let _ = record.count();
        }
    }
    if let Ok(ev) = decode_record::<OomVictimEvent>(data) {
        let _ = OomVictim::decode(&ev);
    }
});
