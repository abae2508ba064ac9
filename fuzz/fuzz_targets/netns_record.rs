//! Ring-buffer bytes of a network-namespace lifecycle record to an event, written in both
//! output forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    clock::Clock,
    enrich::identity::Identity,
    output::Event as _,
    tracers::{
        decode_record,
        netns::decode::{NetnsRecord, Record},
    },
};
use tracer_common::netns::NetnsEvent;

fuzz_target!(|input: &[u8]| {
    // Zeroes after the input: every input is a whole record, however short.
    let mut data = input.to_vec();
    data.resize(data.len().max(size_of::<NetnsEvent>()), 0);
    let data = &data[..];
    let Ok(ev) = decode_record::<NetnsEvent>(data) else {
        return;
    };
    let Some(record) = Record::decode(&ev) else {
        return;
    };
    // A creation time from the input too: the lifetime must not overflow.
    let created = data
        .get(..8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()));
    let event = NetnsRecord::new(
        "create",
        &record,
        created,
        Identity::default(),
        &Clock::new(),
    );
    let mut human = Vec::new();
    event.write_human(&mut human).unwrap();
    serde_json::to_vec(&event).unwrap();
    let _ = event.count();
});
