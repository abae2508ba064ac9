//! The one ring buffer every program writes to, and the per-CPU count of records that did not
//! fit in it (indexed by `EventKind`), so that userspace can report loss instead of hiding it.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{EventHeader, EventKind, EVENT_KINDS};

/// Default size; the loader may resize it (`--buffer-mb`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

/// Counts one record of `kind` that could not be reserved.
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn header(kind: EventKind) -> EventHeader {
    // SAFETY: plain helpers without arguments.
    unsafe {
        EventHeader {
            kind: kind as u32,
            cpu: bpf_get_smp_processor_id(),
            ktime_ns: bpf_ktime_get_ns(),
        }
    }
}
