//! This CPU's per-CPU offset, learnt from our own per-CPU map.
//!
//! Kernel per-CPU data (such as a namespace's conntrack statistics) lives at
//! `percpu_pointer + __per_cpu_offset[cpu]`. On kernels whose BTF has no `percpu` type tags and
//! whose kallsyms has no data symbols, neither `bpf_this_cpu_ptr` nor `__per_cpu_offset` is
//! usable. But a per-CPU array map keeps, in its `struct bpf_array`, the per-CPU pointer of
//! its element (`pptrs[0]`), and `bpf_map_lookup_elem` returns this CPU's copy: the difference
//! is this CPU's offset, the same for every per-CPU allocation.

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::task::{off, read};

/// Each CPU's copy holds that CPU's offset once learnt (0 before). Fixed at boot, so learnt
/// once per CPU: the read of `pptrs[0]` is a helper call, which cost more than the rest.
#[map]
static PERCPU_PROBE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Holds an address for a moment: read back from a map value, an address is a plain number
/// the verifier lets us do arithmetic with and pass to bpf_probe_read_kernel.
#[map]
static ADDRESS_SLOT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn as_number(slot: *mut u64, address: u64) -> u64 {
    // SAFETY: a per-CPU slot of our own map; volatile keeps the round trip.
    unsafe {
        core::ptr::write_volatile(slot, address);
        core::ptr::read_volatile(slot)
    }
}

/// This CPU's copy of the per-CPU data at `percpu_pointer` (as the kernel stores it), as a
/// plain address; `None` if this CPU's offset cannot be learnt on this kernel.
#[inline(always)]
pub fn this_cpu_ptr(percpu_pointer: u64) -> Option<u64> {
    let slot = ADDRESS_SLOT.get_ptr_mut(0)?;
    let this_cpu_copy = PERCPU_PROBE.get_ptr_mut(0)?;
    // SAFETY: this CPU's copy. A program interrupting this one on this CPU writes the same.
    let mut offset = unsafe { core::ptr::read_volatile(this_cpu_copy) };
    if offset == 0 {
        let array = as_number(slot, &PERCPU_PROBE as *const _ as u64);
        let probe_pointer = read::<u64>(array, off!(bpf_array_pptrs))?;
        offset = as_number(slot, this_cpu_copy as u64).wrapping_sub(probe_pointer);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(this_cpu_copy, offset) };
    }
    // Also a plain number, whether it was read through the helper or loaded from a typed
    // object (as a typed pointer, the verifier forbids adding an unknown offset to it).
    Some(as_number(slot, percpu_pointer).wrapping_add(offset))
}
