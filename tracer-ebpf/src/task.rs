//! Reading `task_struct` and friends at offsets resolved from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tracer_common::{offsets::KernelOffsets, offsets::MISSING, TaskInfo};

/// Set by the loader (`EbpfLoader::override_global`) before the programs are loaded.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::missing();

/// One offset from [`OFFSETS`]. The volatile read keeps the compiler from folding in the
/// compile-time default.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a static.
        unsafe { core::ptr::read_volatile(&crate::task::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// Reads a `T` at `base + off`; `None` for a null base, a missing field or a failed read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Copies `dst.len()` bytes at `base + off` into `dst`; leaves it zeroed on failure.
#[inline(always)]
pub fn read_bytes(base: u64, off: u32, dst: &mut [u8]) {
    dst.fill(0);
    if base == 0 || off == MISSING {
        return;
    }
    // SAFETY: bpf_probe_read_kernel_buf checks the address.
    let _ = unsafe { bpf_probe_read_kernel_buf((base + off as u64) as *const u8, dst) };
}

/// The task's id as seen in its own (innermost) pid namespace.
#[inline(always)]
fn ns_nr(task: u64) -> u32 {
    let Some(pid) = read::<u64>(task, off!(task_struct_thread_pid)) else {
        return 0;
    };
    let level = read::<u32>(pid, off!(pid_level)).unwrap_or(0);
    let (numbers, stride) = (off!(pid_numbers), off!(upid_size));
    if numbers == MISSING || stride == MISSING {
        return 0;
    }
    let upid = pid + numbers as u64 + level as u64 * stride as u64;
    read::<i32>(upid, off!(upid_nr)).unwrap_or(0) as u32
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id.
#[inline(always)]
pub fn cgroup_id(task: u64) -> u64 {
    let css_set = read::<u64>(task, off!(task_struct_cgroups)).unwrap_or(0);
    let cgroup = read::<u64>(css_set, off!(css_set_dfl_cgrp)).unwrap_or(0);
    kernfs_id(cgroup)
}

/// `cgroup->kn->id`.
#[inline(always)]
pub fn kernfs_id(cgroup: u64) -> u64 {
    let kn = read::<u64>(cgroup, off!(cgroup_kn)).unwrap_or(0);
    read::<u64>(kn, off!(kernfs_node_id)).unwrap_or(0)
}

/// `task->group_leader`, or the task itself if unreadable.
#[inline(always)]
pub fn leader(task: u64) -> u64 {
    read::<u64>(task, off!(task_struct_group_leader)).unwrap_or(task)
}

/// Fills `out` with what identifies `task` and its process.
#[inline(always)]
pub fn fill_task_info(task: u64, out: &mut TaskInfo) {
    let leader = leader(task);
    out.tid = read::<i32>(task, off!(task_struct_pid)).unwrap_or(0) as u32;
    out.pid = read::<i32>(task, off!(task_struct_tgid)).unwrap_or(0) as u32;
    out.ns_tid = ns_nr(task);
    out.ns_pid = ns_nr(leader);
    out.cgroup_id = cgroup_id(task);
    out.start_ns = read::<u64>(leader, off!(task_struct_start_time)).unwrap_or(0);
    read_bytes(task, off!(task_struct_comm), &mut out.comm);
    read_bytes(leader, off!(task_struct_comm), &mut out.leader_comm);
}
