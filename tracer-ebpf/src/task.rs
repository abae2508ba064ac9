//! Reading kernel structs at offsets resolved from the running kernel's BTF.
//!
//! Two ways in: [`Typed`] for pointers whose type the verifier knows (a `tp_btf` argument,
//! `bpf_get_current_task_btf()`, and the pointer fields reached from them), read with plain
//! loads; and [`read`] for plain addresses (such as the conntrack entry hidden in
//! `skb->_nfct`), read with `bpf_probe_read_kernel`. Plain loads are several times cheaper;
//! they work because the offsets live in a frozen read-only map, so the verifier sees them as
//! constants and checks each load against the kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tracer_common::{
    offsets::{KernelOffsets, MISSING, RDONLY_CAST_IMM},
    TaskInfo,
};

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

/// A field of a global the loader sets (`global!(NETNS_CONFIG.cleanup_net)`). The volatile
/// read keeps the compiler from folding in the compile-time default.
macro_rules! global {
    ($global:ident . $field:ident) => {
        // SAFETY: reading a static.
        unsafe { core::ptr::read_volatile(&$global.$field) }
    };
}
pub(crate) use global;

/// Reads a `T` at `base + off`; `None` for a null base, a missing field or a failed read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Copies `dst.len()` bytes at `base + off` into `dst`: zeroed by a failed read, left as it
/// was where nothing can be read (a null base, a missing field).
#[inline(always)]
pub fn read_bytes(base: u64, off: u32, dst: &mut [u8]) {
    if base == 0 || off == MISSING {
        return;
    }
    // SAFETY: bpf_probe_read_kernel_buf checks the address.
    let _ = unsafe { bpf_probe_read_kernel_buf((base + off as u64) as *const u8, dst) };
}

/// Zeroes `dst` a word at a time; `dst` must be 8-aligned and a whole number of words (see
/// the callers' offset checks). `*dst = [0; N]` compiles to a call to memset, a loop over the
/// bytes: a drop's six zeroings took hundreds of instructions, each also walked by the
/// verifier.
#[inline(always)]
pub fn zero<T>(dst: &mut T) {
    // SAFETY: a reference is valid for writes of its whole size.
    unsafe { zero_at(dst) }
}

/// [`zero`] for storage not yet initialised, such as a `MaybeUninit`'s.
///
/// # Safety
/// `dst` is valid for writes of a `T` and 8-aligned.
#[inline(always)]
pub unsafe fn zero_at<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let words = dst.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: within `dst`, as the caller promised.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// A kernel pointer of a type the verifier knows. Loads through it are checked against BTF
/// at load time; a fault (a freed or null pointer) reads as zero instead of crashing.
#[derive(Clone, Copy)]
pub struct Typed {
    ptr: *const u8,
    /// Made by [`Typed::untrusted`], or reached from such a pointer. A constant wherever the
    /// code is inlined, so the test of it in [`Typed::get`] is no code.
    untrusted: bool,
}

impl Typed {
    pub fn new(ptr: *const u8) -> Self {
        Self {
            ptr,
            untrusted: false,
        }
    }

    pub fn is_null(self) -> bool {
        self.ptr.is_null()
    }

    /// The address, for helpers that take one.
    pub fn addr(self) -> u64 {
        self.ptr as u64
    }

    /// The field at `off`, or `None` where this kernel lacks it. Through a null untrusted
    /// pointer it reads as zero, as a fault does (the JIT turns both into zero), without a
    /// test: the verifier walks both ways of every test of a pointer, which took a seventh
    /// of `signal_generate`'s verification. A trusted pointer that may be null is tested:
    /// the verifier refuses an offset added to it before.
    #[inline(always)]
    pub fn get<T: Copy>(self, off: u32) -> Option<T> {
        if off == MISSING || (!self.untrusted && self.is_null()) {
            return None;
        }
        // SAFETY: the verifier checks the load against the field's BTF type; faults read as 0.
        Some(unsafe { core::ptr::read_volatile(self.ptr.add(off as usize) as *const T) })
    }

    /// The same object as a read-only, untrusted pointer of BTF type `btf_id`
    /// (`bpf_rdonly_cast`, which the JIT turns into a plain move): what is read through it
    /// reads the same, but the verifier no longer asks, at each pointer followed, whether
    /// the field is one the kernel marked trusted (see `RDONLY_CAST_IMM`). Only for reading:
    /// helpers that take a task want the trusted pointer.
    #[inline(always)]
    pub fn untrusted(self, btf_id: u32) -> Typed {
        let cast: *const u8;
        // SAFETY: a kfunc call (code 0x85, src_reg 2: BPF_PSEUDO_KFUNC_CALL) whose immediate
        // the loader sets to bpf_rdonly_cast's id; it clobbers r1-r5 like any call.
        unsafe {
            core::arch::asm!(
                ".quad {call}",
                call = const (RDONLY_CAST_IMM as u64) << 32 | 0x2085,
                inout("r1") self.ptr => _,
                inout("r2") btf_id as u64 => _,
                lateout("r0") cast,
                lateout("r3") _,
                lateout("r4") _,
                lateout("r5") _,
            );
        }
        Typed {
            ptr: cast,
            untrusted: true,
        }
    }

    /// [`Typed::untrusted`] in the program variant for kernels with `bpf_rdonly_cast` (6.2+;
    /// `cast` is a constant of each variant), else `self`.
    #[inline(always)]
    pub fn untrusted_if(self, cast: bool, btf_id: u32) -> Typed {
        if cast {
            self.untrusted(btf_id)
        } else {
            self
        }
    }

    /// The pointer field at `off` (null where missing).
    #[inline(always)]
    pub fn ptr(self, off: u32) -> Typed {
        Typed {
            ptr: self.get::<*const u8>(off).unwrap_or(core::ptr::null()),
            untrusted: self.untrusted,
        }
    }
}

/// A kernel object known only by its address (such as the conntrack entry hidden in
/// `skb->_nfct`): read with plain loads through an untrusted typed pointer
/// (`bpf_rdonly_cast`, see [`Typed::untrusted`]) in the program variants for kernels that have
/// it, else with `bpf_probe_read_kernel`. `cast` is a constant of each variant, so only one
/// way is in its code.
#[derive(Clone, Copy)]
pub enum Object {
    Typed(Typed),
    Address(u64),
}

impl Object {
    /// The object of BTF type `btf_id` at `addr` (0: none).
    #[inline(always)]
    pub fn at(addr: u64, btf_id: u32, cast: bool) -> Object {
        if cast {
            Object::Typed(Typed::new(addr as *const u8).untrusted(btf_id))
        } else {
            Object::Address(addr)
        }
    }

    /// The address, for helpers that take one.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        match self {
            Object::Typed(typed) => typed.addr(),
            Object::Address(addr) => addr,
        }
    }

    /// The field at `off`; `None` for a null object or a missing field, and for a failed
    /// read through the helper (a typed load that faults reads as 0).
    #[inline(always)]
    pub fn get<T: Copy>(self, off: u32) -> Option<T> {
        match self {
            Object::Typed(typed) => typed.get(off),
            Object::Address(addr) => read(addr, off),
        }
    }
}

/// The task's id as seen in its own (innermost) pid namespace:
/// `task->thread_pid->numbers[level].nr`. Inlined: a call costs more than its loads on CPUs
/// whose every return goes through a mitigation thunk (SRSO "Safe RET" on this machine's AMD
/// EPYC: inlining the four calls per signal cut 31-45 ns of about 500, bpf_stats, both builds
/// attached at once). With reads through untrusted pointers the verifier no longer carries
/// its outcomes far: `signal_generate` verifies in 4.3 ms instead of 4.7.
#[inline(always)]
fn ns_nr(task: Typed) -> u32 {
    let pid = task.ptr(off!(task_struct_thread_pid));
    let level = pid.get::<u32>(off!(pid_level)).unwrap_or(0);
    let (numbers, stride) = (off!(pid_numbers), off!(upid_size));
    if pid.is_null() || numbers == MISSING || stride == MISSING {
        return 0;
    }
    let nr = off!(upid_nr);
    // The initial namespace and one level below it (a container) at constant offsets, read
    // with plain loads; a variable index only through the helper.
    match level {
        0 => pid.get::<i32>(numbers + nr).unwrap_or(0) as u32,
        1 => pid.get::<i32>(numbers + stride + nr).unwrap_or(0) as u32,
        _ => {
            let upid = pid.addr() + numbers as u64 + level as u64 * stride as u64;
            read::<i32>(upid, nr).unwrap_or(0) as u32
        }
    }
}

/// `cgroup->kn->id`: the cgroup's id (its directory's inode number).
#[inline(always)]
pub fn kernfs_id(cgroup: Typed) -> u64 {
    cgroup
        .ptr(off!(cgroup_kn))
        .get::<u64>(off!(kernfs_node_id))
        .unwrap_or(0)
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id.
#[inline(always)]
pub fn cgroup_id(task: Typed) -> u64 {
    kernfs_id(
        task.ptr(off!(task_struct_cgroups))
            .ptr(off!(css_set_dfl_cgrp)),
    )
}

/// `task->group_leader`, or the task itself if unreadable.
#[inline(always)]
pub fn leader(task: Typed) -> Typed {
    let leader = task.ptr(off!(task_struct_group_leader));
    if leader.is_null() {
        task
    } else {
        leader
    }
}

/// Fills `out` with what identifies `task` and its process.
#[inline(always)]
pub fn fill_task_info(task: Typed, out: &mut TaskInfo) {
    out.tid = task.get::<i32>(off!(task_struct_pid)).unwrap_or(0) as u32;
    out.pid = task.get::<i32>(off!(task_struct_tgid)).unwrap_or(0) as u32;
    out.ns_tid = ns_nr(task);
    out.cgroup_id = cgroup_id(task);
    out.comm = task.get(off!(task_struct_comm)).unwrap_or([0; 16]);
    // The leader last: the verifier walks what follows it once for the task itself (when it
    // has no leader) and once for its leader, two pointer types it keeps apart.
    let leader = leader(task);
    out.ns_pid = ns_nr(leader);
    out.start_ns = leader.get::<u64>(off!(task_struct_start_time)).unwrap_or(0);
    out.leader_comm = leader.get(off!(task_struct_comm)).unwrap_or([0; 16]);
}
