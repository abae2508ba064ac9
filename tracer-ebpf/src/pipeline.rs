//! The one ring buffer every program writes to, and the per-CPU count of records that did not
//! fit in it (indexed by `EventKind`), so that userspace can report loss instead of hiding it.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{ring_buf::RingBufEntry, PerCpuArray, RingBuf},
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

/// Per CPU, the bytes of records submitted since [`submit`] last asked how much data waits.
#[map]
static UNCHECKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Wake the reader once each time the data waiting crosses a multiple of this. A wakeup per
/// record costs ~600 ns in the traced path, and so did one per record while more than this
/// was waiting (a reader behind during a storm). The reader drains until the buffer is empty
/// and also polls every tick (50 ms), which bounds the wait: two CPUs submitting at once can
/// both miss a crossing (the waiting bytes include other CPUs' reservations).
const WAKEUP_BYTES: u64 = 256 << 10;
/// How much a CPU submits between two looks at the waiting data: asking
/// (`bpf_ringbuf_query`) is a helper call and a read of the line the reader writes its
/// position to, and a crossing is seen as well a few records late.
const CHECK_BYTES: u64 = 16 << 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// The ring buffer's header before each record; records are 8-byte aligned.
const RECORD_HEADER: u64 = 8;

/// Submits `entry`, waking the reader if the data waiting crossed a multiple of
/// [`WAKEUP_BYTES`] since this CPU last looked (every [`CHECK_BYTES`] it submits).
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let size = (size_of::<T>() as u64 + RECORD_HEADER + 7) & !7;
    let flags = match UNCHECKED.get_ptr_mut(0) {
        Some(unchecked) => {
            // SAFETY: this CPU's slot. A program interrupting this one on this CPU may lose
            // its update: that only moves a look.
            let since = unsafe { *unchecked } + size;
            if since < CHECK_BYTES {
                // SAFETY: as above.
                unsafe { *unchecked = since };
                BPF_RB_NO_WAKEUP
            } else {
                // SAFETY: as above.
                unsafe { *unchecked = 0 };
                let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
                if waiting / WAKEUP_BYTES != waiting.saturating_sub(since) / WAKEUP_BYTES {
                    BPF_RB_FORCE_WAKEUP
                } else {
                    BPF_RB_NO_WAKEUP
                }
            }
        }
        None => BPF_RB_FORCE_WAKEUP,
    };
    entry.submit(flags);
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
