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

/// Wake the reader only once this much is waiting. A wakeup per record costs ~600 ns in the
/// traced path (measured with `cargo xtask bench`); the reader polls on a short timer anyway.
const WAKEUP_BYTES: u64 = 256 << 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for `submit`: no wakeup unless the reader has fallen behind.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
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
