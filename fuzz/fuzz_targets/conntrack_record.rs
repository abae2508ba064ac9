//! Ring-buffer bytes of a netfilter drop to an event (its packet headers and conntrack tuples
//! as this kernel lays them out), written in both output forms.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tracer::{
    clock::Clock,
    kernel::btf::KernelBtf,
    output::Event as _,
    tracers::{
        conntrack::decode::{ConntrackDrop, DropClass, TupleLayout},
        decode_record,
    },
};
use tracer_common::conntrack::NetfilterDropEvent;

/// The running kernel's tuple layout, resolved once.
static LAYOUT: LazyLock<TupleLayout> = LazyLock::new(|| {
    TupleLayout::resolve(&KernelBtf::from_sys_fs().expect("the kernel's BTF"))
        .expect("nf_conntrack_tuple in the kernel's BTF")
});

fuzz_target!(|input: &[u8]| {
    // Zeroes after the input: every input is a whole record, however short.
    let mut data = input.to_vec();
    data.resize(data.len().max(size_of::<NetfilterDropEvent>()), 0);
    let data = &data[..];
    let Ok(ev) = decode_record::<NetfilterDropEvent>(data) else {
        return;
    };
    let drop = ConntrackDrop::decode(&ev, DropClass::Rule, &LAYOUT, &Clock::new());
    let mut human = Vec::new();
    drop.write_human(&mut human).unwrap();
    serde_json::to_vec(&drop).unwrap();
    let _ = drop.endpoints().count();
    let _ = drop.count();
});
