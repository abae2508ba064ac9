//! Ring-buffer bytes of the signals tracer's records (a signal, an OOM victim) to events,
//! written in both output forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    clock::Clock,
    output::Event as _,
    tracers::{
        decode_record,
        signals::decode::{OomVictim, SignalRecord},
    },
};
use tracer_common::signal::{OomVictimEvent, SignalEvent};

fuzz_target!(|input: &[u8]| {
    // Zeroes after the input: every input is a whole record, however short.
    let mut data = input.to_vec();
    data.resize(
        data.len()
            .max(size_of::<SignalEvent>())
            .max(size_of::<OomVictimEvent>()),
        0,
    );
    let data = &data[..];
    let clock = Clock::new();
    if let Ok(ev) = decode_record::<SignalEvent>(data) {
        let record = SignalRecord::decode(&ev, &clock);
        let mut human = Vec::new();
        record.write_human(&mut human).unwrap();
        serde_json::to_vec(&record).unwrap();
        let _ = record.count();
    }
    if let Ok(ev) = decode_record::<OomVictimEvent>(data) {
        let _ = OomVictim::decode(&ev);
    }
});
