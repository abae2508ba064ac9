//! `signals`: every signal the kernel generates, with the sender's executable and ancestry
//! captured here, at the moment of the signal, because a short-lived sender is gone before
//! userspace could look. `oom:mark_victim` marks the OOM killer's choice so userspace can tell
//! its SIGKILL apart from kill(2).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs,
        generated::bpf_probe_read_kernel_str,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use tracer_common::{
    offsets::MISSING,
    signal::{
        sender_slot, DescribedSignalEvent, InfoKind, OomVictimEvent, SendContext,
        SenderDescription, SignalEvent, SignalFilter, ANCESTRY_MAX, EXE_NAME_LEN, SENDER_SLOTS,
        TARGET_CGROUPS_MAX,
    },
    EventKind,
};

use crate::{
    pipeline::{count_lost, header, submit, EVENTS},
    task::{cgroup_id, fill_task_info, kernfs_id, leader, off, zero_at, Typed},
};

/// Set by the loader from the command line.
#[unsafe(no_mangle)]
static SIGNAL_FILTER: SignalFilter = SignalFilter {
    target_pid: 0,
    sender_pid: 0,
    signal_mask: 0,
    failed_only: 0,
    target_cgroups_only: 0,
};

/// The cgroups of the workloads `--container/--pod/--namespace` select; userspace adds new
/// ones as they appear, so the filter follows a workload across container restarts.
#[map]
static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(TARGET_CGROUPS_MAX, 0);

/// Per CPU, what each slot last sent of a sender's description (see [`SenderDescription`]).
#[map]
static SENDER_SLOTS_MAP: PerCpuArray<SenderDescription> =
    PerCpuArray::with_max_entries(SENDER_SLOTS, 0);

/// Per CPU, the signal event being filled in.
#[map]
static SIGNAL_SCRATCH: PerCpuArray<SignalEvent> = PerCpuArray::with_max_entries(1, 0);

macro_rules! filter {
    ($field:ident) => {
        // SAFETY: reading a static; volatile keeps the loader's value from being folded away.
        unsafe { core::ptr::read_volatile(&SIGNAL_FILTER.$field) }
    };
}

/// Whether `task` passes the workload filter.
#[inline(always)]
fn in_target_cgroups(task: Typed) -> bool {
    // SAFETY: the value is only tested for presence, not kept.
    filter!(target_cgroups_only) == 0 || unsafe { TARGET_CGROUPS.get(cgroup_id(task)) }.is_some()
}

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    generate(&ctx, Kernel::ReadsUntrusted)
}

/// [`signal_generate`] for kernels without `bpf_rdonly_cast` (before 6.2): the same capture,
/// slower to verify.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_gen_nocast(ctx: BtfTracePointContext) -> i32 {
    generate(&ctx, Kernel::HasLoop)
}

/// [`signal_generate`] for kernels without `bpf_loop` (5.15 and 5.16): the same capture,
/// slower still to verify.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_gen_noloop(ctx: BtfTracePointContext) -> i32 {
    generate(&ctx, Kernel::HasRegs)
}

/// [`signal_generate`] for kernels without `bpf_task_pt_regs` (before 5.15): the sending
/// syscall is not read, so userspace marks every claimed code as unverified.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_gen_noregs(ctx: BtfTracePointContext) -> i32 {
    generate(&ctx, Kernel::Oldest)
}

/// What the kernel a program variant is for offers, each level with all of the one below:
/// `bpf_task_pt_regs` (5.15), `bpf_loop` (5.17), `bpf_rdonly_cast` (6.2). A constant in each
/// program, so a helper the kernel lacks is not in its code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kernel {
    Oldest,
    HasRegs,
    HasLoop,
    ReadsUntrusted,
}

/// `task` as what its fields are read through: untrusted where the kernel allows (see
/// [`Typed::untrusted`]), which reads the same and verifies several times faster.
#[inline(always)]
fn reader(task: Typed, kernel: Kernel) -> Typed {
    task.untrusted_if(kernel >= Kernel::ReadsUntrusted, off!(task_struct_btf_id))
}

/// One signal, with what `kernel` offers.
#[inline(always)]
fn generate(ctx: &BtfTracePointContext, kernel: Kernel) -> i32 {
    let (read_regs, loop_helper) = (kernel >= Kernel::HasRegs, kernel >= Kernel::HasLoop);
    let sig: i32 = ctx.arg(0);
    let info: u64 = ctx.arg(1);
    let target = reader(Typed::new(ctx.arg(2)), kernel);
    let group: i32 = ctx.arg(3);
    let result: i32 = ctx.arg(4);

    let mask = filter!(signal_mask);
    if mask != 0 && !((1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0) {
        return 0;
    }
    if filter!(failed_only) != 0 && result == 0 {
        return 0;
    }
    let want_target = filter!(target_pid);
    if want_target != 0 && target.get::<i32>(off!(task_struct_tgid)) != Some(want_target as i32) {
        return 0;
    }
    if !in_target_cgroups(target) {
        return 0;
    }
    let want_sender = filter!(sender_pid);
    if want_sender != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 != want_sender {
        return 0;
    }

    // The event is written once, in this scratch, and copied into whichever record goes out:
    // written in each branch, the verifier would walk its many branches twice. Looked up
    // before the slot is rewritten by describe(), so that no return leaves a slot changed
    // but unsent and still marked valid.
    let Some(ev) = SIGNAL_SCRATCH.get_ptr_mut(0) else {
        count_lost(EventKind::Signal);
        return 0;
    };
    // SAFETY: this CPU's copy; the program does not run twice at once on one CPU.
    let ev = unsafe { &mut *ev };
    // SAFETY: no preconditions.
    let current = Typed::new(unsafe { bpf_get_current_task_btf() } as *const u8);
    // The trusted pointer is kept for bpf_task_pt_regs; everything else reads through this.
    let sender = reader(current, kernel);
    let slot_index = sender_slot(sender.get::<i32>(off!(task_struct_tgid)).unwrap_or(0) as u32);
    let Some(slot) = SENDER_SLOTS_MAP.get_ptr_mut(slot_index) else {
        count_lost(EventKind::Signal);
        return 0;
    };
    // SAFETY: this CPU's copy, as the scratch.
    let slot = unsafe { &mut *slot };
    ev.header = header(EventKind::Signal);
    ev.signo = sig;
    ev.result = result;
    ev.group = group;
    // SEND_SIG_NOINFO and SEND_SIG_PRIV are the integers 0 and 1, not pointers.
    ev.info_kind = match info {
        0 => InfoKind::NoInfo,
        1 => InfoKind::Priv,
        _ => InfoKind::Siginfo,
    } as u32;
    (ev.code, ev.si_pid, ev.si_uid) = (0, 0, 0);
    if info > 1 {
        // A typed pointer: plain loads, no helper call.
        let siginfo = Typed::new(info as *const u8);
        ev.code = siginfo
            .get::<i32>(off!(kernel_siginfo_si_code))
            .unwrap_or(0);
        ev.si_pid = siginfo.get::<i32>(off!(kernel_siginfo_si_pid)).unwrap_or(0) as u32;
        ev.si_uid = siginfo.get::<u32>(off!(kernel_siginfo_si_uid)).unwrap_or(0);
    }
    // The last use of `info`: the verifier carries its outcomes (integer or pointer) as
    // distinct states only until here.
    fill_send_context(current, info, read_regs, &mut ev.context);
    // Only a privileged signal can be a tracer's (see SendContext::ptracer_pid): a kill(2)
    // storm does not pay for the two lines read. The parent is the tracer while traced.
    ev.context.ptracer_pid = 0;
    if info == 1 {
        let traced = (sender.get::<u32>(off!(task_struct_ptrace)).unwrap_or(0) != 0) as u32;
        let parent = sender.ptr(off!(task_struct_parent));
        ev.context.ptracer_pid =
            traced * parent.get::<i32>(off!(task_struct_tgid)).unwrap_or(0) as u32;
    }
    ev.sender_slot = slot_index;
    fill_task_info(sender, &mut ev.sender);
    fill_task_info(target, &mut ev.target);
    // Described last, for the same reason: whether it changed, carried through the fills
    // above, doubled the states the verifier walked there (27k instructions, 156 ms to load).
    let changed = describe(sender, slot, loop_helper);
    if changed {
        // The description goes with the signal: the large record only when it changed.
        let Some(mut entry) = EVENTS.reserve::<DescribedSignalEvent>(0) else {
            // Userspace never got this content: the next signal sends it again.
            slot.valid = 0;
            count_lost(EventKind::Signal);
            return 0;
        };
        slot.valid = 1;
        let out = entry.as_mut_ptr();
        // SAFETY: the entry is reserved for us and written whole; copied field by field, not
        // built on the stack (it would not fit).
        unsafe {
            core::ptr::copy_nonoverlapping(ev, &raw mut (*out).event, 1);
            core::ptr::copy_nonoverlapping(slot, &raw mut (*out).description, 1);
        }
        submit(entry);
    } else {
        let Some(mut entry) = EVENTS.reserve::<SignalEvent>(0) else {
            count_lost(EventKind::Signal);
            return 0;
        };
        // SAFETY: as above.
        unsafe { core::ptr::copy_nonoverlapping(ev, entry.as_mut_ptr(), 1) };
        submit(entry);
    }
    0
}

/// Captures `task`'s executable path and ancestry into `slot`, returning whether anything
/// differed from what the slot held (or the slot was never sent). Every field userspace reads
/// is compared, so an unchanged slot is exactly a fresh capture, whatever happened in between
/// (an exec, a reused pid, a parent's death, a rename).
#[inline(always)]
fn describe(task: Typed, slot: &mut SenderDescription, loop_helper: bool) -> bool {
    let diff = fill_exe(task, slot) | fill_ancestry(task, slot, loop_helper);
    slot.valid == 0 || diff != 0
}

/// Sets `*old = new`, returning their bits that differ (non-zero if they differ). XOR rather
/// than a comparison: a comparison is a branch in BPF, and every branch whose outcome is
/// carried on doubles what the verifier walks (it took seconds to load).
#[inline(always)]
fn set<T: Copy + Into<u64>>(old: &mut T, new: T) -> u64 {
    let diff = (*old).into() ^ new.into();
    *old = new;
    diff
}

/// Sets the words at `old` to `new` (a byte array viewed as words: BPF has no memcmp),
/// returning their bits that differ.
#[inline(always)]
fn set_words<const N: usize>(old: *mut [u64; N], new: &[u64; N]) -> u64 {
    let mut diff = 0;
    for i in 0..N {
        // SAFETY: `old` points to N aligned words of a slot (see SenderDescription's layout).
        diff |= set(unsafe { &mut (*old)[i] }, new[i]);
    }
    diff
}

/// What `current` was doing: its syscall (from the user registers the kernel saved on entry)
/// and where `info` lives. Userspace decides from these who sent the signal.
#[inline(always)]
fn fill_send_context(current: Typed, info: u64, read_regs: bool, cx: &mut SendContext) {
    cx.flags = current.get::<u32>(off!(task_struct_flags)).unwrap_or(0);
    cx.status = current
        .get::<u32>(off!(task_struct_thread_info_status))
        .unwrap_or(0);
    if !read_regs {
        cx.regs_known = 0;
        cx.nr = u64::MAX;
        (cx.ret, cx.arg0, cx.arg0_compat, cx.info_on_stack) = (0, 0, 0, 0);
        return;
    }
    // SAFETY: `current` is the trusted task pointer the helper takes.
    let regs =
        Typed::new(unsafe { bpf_task_pt_regs(current.addr() as *mut task_struct) } as *const u8);
    let nr = regs.get::<u64>(off!(pt_regs_syscall_nr));
    cx.regs_known = nr.is_some() as u32;
    cx.nr = nr.unwrap_or(u64::MAX);
    cx.ret = regs.get(off!(pt_regs_syscall_ret)).unwrap_or(0);
    cx.arg0 = regs.get(off!(pt_regs_arg0)).unwrap_or(0);
    cx.arg0_compat = regs.get(off!(pt_regs_arg0_compat)).unwrap_or(0);
    // The user registers sit at the top of the task's stack: a siginfo between the stack's
    // base and them is a local of a function this task runs in process context. A timer's
    // siginfo is in a slab `sigqueue`; interrupt code runs on the CPU's own stacks.
    let stack = current.get::<u64>(off!(task_struct_stack)).unwrap_or(0);
    cx.info_on_stack = (info > 1 && stack != 0 && info >= stack && info < regs.addr()) as u32;
}

/// The sender's executable path, walking `mm->exe_file->f_path.dentry` up to its
/// filesystem's root, and whether that root is the task's own `/` (its root dentry on its root
/// mount). It is not when the file is on another mount: the path is then the file's path
/// inside that mount's filesystem, and is marked as such (a tmpfs's `usr/bin/kubelet` must
/// not read as `/usr/bin/kubelet`). The mounts are compared at the end only: crossing them at
/// every step (as `d_path` does) cost several milliseconds of verification at start-up.
#[inline(always)]
fn fill_exe(task: Typed, slot: &mut SenderDescription) -> u64 {
    let mut diff = 0;
    let mut depth = 0u16;
    let file = task.ptr(off!(task_struct_mm)).ptr(off!(mm_struct_exe_file));
    let mut dentry = file.ptr(off!(file_f_path_dentry));
    let mut reached_root = dentry.is_null();
    for row in slot.exe.iter_mut() {
        let parent = dentry.ptr(off!(dentry_d_parent));
        // The root dentry is its own parent; its name ("/") is not a component.
        if parent.is_null() || parent.addr() == dentry.addr() {
            reached_root = true;
            break;
        }
        let fresh = component(dentry);
        diff |= set_words(row.as_mut_ptr().cast::<[u64; EXE_NAME_LEN / 8]>(), &fresh);
        depth += 1;
        dentry = parent;
    }
    let mut truncated = 0;
    let mut other_mount = 0;
    if !reached_root {
        // One more parent that is not the root: the path was deeper than we keep.
        let parent = dentry.ptr(off!(dentry_d_parent));
        truncated = (!parent.is_null() && parent.addr() != dentry.addr()) as u16;
    }
    if truncated == 0 && !dentry.is_null() {
        let fs = task.ptr(off!(task_struct_fs));
        let root_dentry = fs.get::<u64>(off!(fs_struct_root_dentry)).unwrap_or(0);
        let root_mount = fs.get::<u64>(off!(fs_struct_root_mnt)).unwrap_or(0);
        let mount = file.get::<u64>(off!(file_f_path_mnt)).unwrap_or(0);
        other_mount = (dentry.addr() != root_dentry || mount != root_mount) as u16;
    }
    diff |= set(&mut slot.exe_depth, depth);
    diff |= set(&mut slot.exe_truncated, truncated);
    diff |= set(&mut slot.exe_other_mount, other_mount);
    diff
}

/// `dentry`'s name as `bpf_probe_read_kernel_str` copies it into [`EXE_NAME_LEN`] zeroed
/// bytes: at most `EXE_NAME_LEN - 1` bytes of it, then zeroes. A short name, kept inside the
/// dentry (`d_name.name` points to `d_shortname`), is read with plain loads and cut the same
/// way: a helper call per component was most of the capture's cost.
#[inline(always)]
fn component(dentry: Typed) -> [u64; EXE_NAME_LEN / 8] {
    const WORDS: usize = EXE_NAME_LEN / 8;
    let name = dentry.get::<u64>(off!(dentry_d_name_name)).unwrap_or(0);
    let inline = off!(dentry_d_shortname);
    if inline != MISSING && name == dentry.addr() + inline as u64 {
        // Each word up to the name's end; the bytes after its NUL (left from a longer name
        // before a rename) are cleared. Little-endian: a word's first byte is its lowest.
        let mut alive = u64::MAX;
        // Every word is written below, so this zeroing is no code.
        let mut fresh = [0u64; WORDS];
        for (i, word) in fresh.iter_mut().enumerate() {
            let w = dentry.get::<u64>(inline + 8 * i as u32).unwrap_or(0) & opaque(alive);
            // The lowest flagged byte is the first zero byte (flags above it may be false).
            let zero = w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080;
            let first = zero & zero.wrapping_neg();
            // Keeps the bytes up to the first zero one (all, when there is none).
            *word = w & (first.wrapping_sub(1) | first);
            // Nothing after a zero byte: `alive` becomes 0 once `first` is set.
            let flagged = opaque(first | first.wrapping_neg()) as i64;
            alive &= opaque(!(flagged >> 63) as u64);
        }
        // The helper keeps room for the NUL: a longer name is cut one byte short.
        fresh[WORDS - 1] &= u64::MAX >> 8;
        fresh
    } else {
        // Zeroed by zero_at, not `[0; WORDS]`: that compiled to a call to memset, whose byte
        // loop the verifier walked 32 times at each call (a quarter of all it walked).
        let mut fresh = MaybeUninit::<[u64; WORDS]>::uninit();
        // SAFETY: the array's own storage, aligned for its words.
        unsafe { zero_at(fresh.as_mut_ptr()) };
        // SAFETY: the helper checks the address and bounds the copy by the buffer; what it
        // returns (the length, or an error with the buffer left zeroed) is not needed.
        unsafe {
            bpf_probe_read_kernel_str(
                fresh.as_mut_ptr().cast(),
                EXE_NAME_LEN as u32,
                name as *const c_void,
            )
        };
        // SAFETY: every word was written above.
        unsafe { fresh.assume_init() }
    }
}

/// `x`, hidden from the compiler: it would otherwise see a mask that is all ones or zero and
/// turn `w & mask` back into a branch, whose two ways the verifier walks for every word.
#[inline(always)]
fn opaque(mut x: u64) -> u64 {
    // SAFETY: a move of the register to itself.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    x
}

/// The sender's parents, as processes (tgid, start time and leader's comm), up to pid 1.
/// With `loop_helper` (a constant in each program) the steps run in `bpf_loop`, whose body the
/// verifier walks until its states repeat (a few times) instead of once per parent: as a
/// plain loop, the 20 steps were two thirds of the program's load time (50 of 80 ms).
#[inline(always)]
fn fill_ancestry(task: Typed, slot: &mut SenderDescription, loop_helper: bool) -> u64 {
    let mut walk = AncestryWalk {
        parent: leader(task).ptr(off!(task_struct_real_parent)),
        slot,
        diff: 0,
        len: 0,
        reached_init: 0,
    };
    let walk_ptr = (&raw mut walk).cast::<c_void>();
    if loop_helper {
        // SAFETY: the callback is given the walk, which outlives the call.
        unsafe {
            bpf_loop(
                ANCESTRY_MAX as u32,
                ancestry_step as *mut c_void,
                walk_ptr,
                0,
            )
        };
    } else {
        for i in 0..ANCESTRY_MAX {
            if ancestry_step(i as u64, walk_ptr) != 0 {
                break;
            }
        }
    }
    let truncated = (walk.reached_init == 0 && walk.len as usize == ANCESTRY_MAX) as u16;
    let mut diff = walk.diff;
    diff |= set(&mut slot.ancestry_len, walk.len);
    diff |= set(&mut slot.ancestry_truncated, truncated);
    diff
}

/// Where [`fill_ancestry`]'s walk is between two steps. The count and the parent live here,
/// not in the loop's registers, so that each step looks alike to the verifier.
#[repr(C)]
struct AncestryWalk {
    /// The next ancestor (null past the top).
    parent: Typed,
    slot: *mut SenderDescription,
    diff: u64,
    len: u16,
    reached_init: u16,
}

/// Records ancestor `i` of the walk at `walk`; non-zero stops the walk (`bpf_loop`'s
/// callback, also called in a plain loop).
extern "C" fn ancestry_step(i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: fill_ancestry passes its walk.
    let walk = unsafe { &mut *walk.cast::<AncestryWalk>() };
    let parent = walk.parent;
    if parent.is_null() {
        walk.reached_init = 1;
        return 1;
    }
    // SAFETY: the slot outlives the walk. The bound is for the verifier: `i` stays below it.
    let Some(row) = (unsafe { &mut *walk.slot }).ancestry.get_mut(i as usize) else {
        return 1;
    };
    let pid = parent.get::<i32>(off!(task_struct_tgid)).unwrap_or(0);
    let process = leader(parent);
    let mut diff = set(&mut row.pid, pid as u32);
    diff |= set(
        &mut row.start_ns,
        process
            .get::<u64>(off!(task_struct_start_time))
            .unwrap_or(0),
    );
    let comm = process
        .get::<[u64; 2]>(off!(task_struct_comm))
        .unwrap_or([0; 2]);
    diff |= set_words(row.comm.as_mut_ptr().cast::<[u64; 2]>(), &comm);
    walk.diff |= diff;
    walk.len = i as u16 + 1;
    if pid <= 1 {
        walk.reached_init = 1;
        return 1;
    }
    walk.parent = process.ptr(off!(task_struct_real_parent));
    0
}

/// `mark_victim(struct task_struct *task, uid_t uid)`: the OOM killer chose `task`.
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> i32 {
    victim(&ctx, Kernel::ReadsUntrusted)
}

/// [`mark_victim`] for kernels without `bpf_rdonly_cast` (before 6.2).
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_nocast(ctx: BtfTracePointContext) -> i32 {
    victim(&ctx, Kernel::Oldest)
}

/// The OOM killer's victim, with what `kernel` offers.
#[inline(always)]
fn victim(ctx: &BtfTracePointContext, kernel: Kernel) -> i32 {
    let victim = reader(Typed::new(ctx.arg(0)), kernel);
    let want_target = filter!(target_pid);
    if want_target != 0 && victim.get::<i32>(off!(task_struct_tgid)) != Some(want_target as i32) {
        return 0;
    }
    if !in_target_cgroups(victim) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<OomVictimEvent>(0) else {
        count_lost(EventKind::OomVictim);
        return 0;
    };
    // SAFETY: see signal_generate.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = header(EventKind::OomVictim);
    fill_task_info(victim, &mut ev.victim);
    // SAFETY: no preconditions.
    let current = reader(
        Typed::new(unsafe { bpf_get_current_task_btf() } as *const u8),
        kernel,
    );
    fill_task_info(current, &mut ev.allocating);
    // victim->cgroups->subsys[memory_cgrp_id]->cgroup: its memory cgroup on whichever hierarchy
    // the memory controller is mounted.
    let css_set = victim.ptr(off!(task_struct_cgroups));
    let (subsys, memory_id) = (off!(css_set_subsys), off!(memory_cgrp_id));
    let memcg_css = if subsys == MISSING || memory_id == MISSING {
        Typed::new(core::ptr::null())
    } else {
        css_set.ptr(subsys + memory_id * 8)
    };
    ev.memcg_id = kernfs_id(memcg_css.ptr(off!(cgroup_subsys_state_cgroup)));
    submit(entry);
    0
}
