//! `netns --watch`: network namespaces created (clone/unshare with `CLONE_NEWNET`), their
//! teardown starting (`cleanup_net` runs) and ending (the last passive reference goes), and
//! exits of processes inside non-initial namespaces. Every event carries `net->net_cookie`,
//! which is never reused, beside the inode number, which is.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
        generated::bpf_loop,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    netns::{
        CensusConfig, CensusEntry, NetnsAction, NetnsConfig, NetnsEvent, CENSUS_COMPLETE_SLOT,
        CENSUS_LEN_SLOT, CENSUS_MAX, CLONE_NEWNET,
    },
    offsets::MISSING,
    EventKind,
};

use crate::{
    pipeline::{count_lost, header, submit, EVENTS},
    task::{fill_task_info, global, off, read, zero, Typed},
};

/// Set by the loader.
#[unsafe(no_mangle)]
static NETNS_CONFIG: NetnsConfig = NetnsConfig {
    cleanup_net: 0,
    cleanup_net_end: 0,
    passive_dec: 0,
    passive_dec_end: 0,
    init_net_cookie: 0,
    unshare_flags_offset: 0,
    unshare_ret_offset: 0,
};

/// Namespaces looked at, at most, when a teardown batch starts.
const MAX_NAMESPACES: u32 = 1024;

/// Identity of a namespace being torn down.
#[derive(Clone, Copy)]
#[repr(C)]
struct Dying {
    cookie: u64,
    inum: u32,
    _pad: u32,
}

/// Namespaces whose teardown started, by `net->gen`: the pointer `net_passive_dec` frees when
/// teardown ends, the only thing its `kfree` shows.
#[map]
static DYING: HashMap<u64, Dying> = HashMap::with_max_entries(4096, 0);

/// Threads inside unshare(CLONE_NEWNET), between syscall entry and exit.
#[map]
static UNSHARING: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `task->nsproxy->net_ns`.
#[inline(always)]
fn net_of(task: u64) -> u64 {
    let nsproxy = read::<u64>(task, off!(task_struct_nsproxy)).unwrap_or(0);
    read::<u64>(nsproxy, off!(nsproxy_net_ns)).unwrap_or(0)
}

/// Whether `ptr` is a `struct net`: its `ns.ns_type` says so (kernels without the field pass).
/// Tells the head of `net_namespace_list`, which is not inside one, apart.
#[inline(always)]
fn is_net(ptr: u64) -> bool {
    off!(net_ns_ns_type) == MISSING
        || read::<u32>(ptr, off!(net_ns_ns_type)) == Some(CLONE_NEWNET as u32)
}

/// Writes one event, about `task` where there is one.
#[inline(always)]
fn emit(action: NetnsAction, inum: u32, cookie: u64, task: Option<Typed>) {
    let Some(mut entry) = EVENTS.reserve::<NetnsEvent>(0) else {
        count_lost(EventKind::Netns);
        return;
    };
    // SAFETY: the entry is reserved for us; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = header(EventKind::Netns);
    ev.action = action as u32;
    ev.inum = inum;
    ev.cookie = cookie;
    match task {
        Some(task) => fill_task_info(task, &mut ev.task),
        None => zero(&mut ev.task),
    }
    submit(entry);
}

/// `inum` and `net_cookie` of `net`.
#[inline(always)]
fn identify(net: u64) -> (u32, u64) {
    (
        read::<u32>(net, off!(net_ns_inum)).unwrap_or(0),
        read::<u64>(net, off!(net_net_cookie)).unwrap_or(0),
    )
}

/// Writes one event about `net` and `task`.
#[inline(always)]
fn emit_net(action: NetnsAction, net: u64, task: Typed) {
    if net != 0 {
        let (inum, cookie) = identify(net);
        emit(action, inum, cookie, Some(task));
    }
}

/// `task_newtask(struct task_struct *task, u64 clone_flags)`: fires for every new task, after
/// its namespaces are set up.
#[btf_tracepoint(function = "task_newtask")]
pub fn netns_task_newtask(ctx: BtfTracePointContext) -> i32 {
    let task = Typed::new(ctx.arg(0));
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_NEWNET != 0 {
        emit_net(NetnsAction::Create, net_of(task.addr()), task);
    }
    0
}

/// `syscalls:sys_enter_unshare`: remembers the threads that ask for a new namespace. A classic
/// tracepoint fires for this one syscall only, unlike the raw `sys_enter`.
#[tracepoint(category = "syscalls", name = "sys_enter_unshare")]
pub fn netns_unshare_enter(ctx: TracePointContext) -> u32 {
    let offset = global!(NETNS_CONFIG.unshare_flags_offset) as usize;
    // SAFETY: the offset is the field's in this tracepoint's format.
    let flags: u64 = unsafe { ctx.read_at(offset) }.unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = UNSHARING.insert(tid, 1, 0);
    }
    0
}

/// `syscalls:sys_exit_unshare`: the new namespace is the thread's own once the call succeeded.
#[tracepoint(category = "syscalls", name = "sys_exit_unshare")]
pub fn netns_unshare_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: reading a map value that is only inserted, never written through.
    if unsafe { UNSHARING.get(tid) }.is_none() {
        return 0;
    }
    let _ = UNSHARING.remove(tid);
    let offset = global!(NETNS_CONFIG.unshare_ret_offset) as usize;
    // SAFETY: the offset is the field's in this tracepoint's format.
    let ret: i64 = unsafe { ctx.read_at(offset) }.unwrap_or(-1);
    if ret == 0 {
        // SAFETY: no preconditions.
        let current = Typed::new(unsafe { bpf_get_current_task_btf() } as *const u8);
        emit_net(NetnsAction::Create, net_of(current.addr()), current);
    }
    0
}

/// State of the walk over `net_namespace_list`.
#[repr(C)]
struct Walk {
    /// `&init_net.list`: where the walk started and ends.
    first: u64,
    node: u64,
    /// Offset of `list` in `struct net`.
    list: u64,
}

/// One step of the walk (a `bpf_loop` callback): reports the namespace at `node` if its last
/// reference is gone. Returns 1 to stop.
extern "C" fn walk_step(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the `Walk` on the caller's stack.
    let walk = unsafe { &mut *walk.cast::<Walk>() };
    if walk.node == 0 || walk.node == walk.first {
        return 1;
    }
    let net = walk.node - walk.list;
    let (inum, cookie) = identify(net);
    if is_net(net) && cookie != 0 && read::<u32>(net, off!(net_ns_refcount)) == Some(0) {
        emit(NetnsAction::TeardownStart, inum, cookie, None);
        if let Some(gen) = read::<u64>(net, off!(net_gen)) {
            let dying = Dying {
                cookie,
                inum,
                _pad: 0,
            };
            let _ = DYING.insert(gen, dying, 0);
        }
    }
    walk.node = read::<u64>(walk.node, 0).unwrap_or(0);
    0
}

/// `workqueue_execute_start(struct work_struct *work)`: when the work is `cleanup_net`, every
/// namespace whose last reference is gone (`ns` refcount 0) is about to be torn down. They
/// are still on `net_namespace_list` until `cleanup_net` unlinks them, so the list is walked
/// from the worker's own namespace (the initial one). Other work items cost one read.
#[btf_tracepoint(function = "workqueue_execute_start")]
pub fn netns_cleanup_start(ctx: BtfTracePointContext) -> i32 {
    let work: u64 = ctx.arg(0);
    let cleanup_net = global!(NETNS_CONFIG.cleanup_net);
    if cleanup_net == 0 || read::<u64>(work, off!(work_struct_func)) != Some(cleanup_net) {
        return 0;
    }
    let list = off!(net_list);
    if list == MISSING || off!(net_ns_refcount) == MISSING {
        return 0;
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let first = net_of(unsafe { bpf_get_current_task() }) + list as u64;
    let mut walk = Walk {
        first,
        node: read::<u64>(first, 0).unwrap_or(0),
        list: list as u64,
    };
    // SAFETY: the callback gets `walk` back and nothing else; bpf_loop bounds the iterations.
    unsafe {
        bpf_loop(
            MAX_NAMESPACES,
            walk_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    0
}

/// `kfree(unsigned long call_site, const void *ptr)`: teardown ends when the last passive
/// reference goes and `net_passive_dec` frees `net->gen`. kfree is hot, so the first check is
/// two comparisons of the call site with `net_passive_dec` (or `cleanup_net`, should it be
/// inlined there); only then is the pointer looked up among the dying namespaces.
#[btf_tracepoint(function = "kfree")]
pub fn netns_teardown_end(ctx: BtfTracePointContext) -> i32 {
    let site: u64 = ctx.arg(0);
    let in_passive_dec =
        site >= global!(NETNS_CONFIG.passive_dec) && site < global!(NETNS_CONFIG.passive_dec_end);
    let in_cleanup =
        site >= global!(NETNS_CONFIG.cleanup_net) && site < global!(NETNS_CONFIG.cleanup_net_end);
    if !in_passive_dec && !in_cleanup {
        return 0;
    }
    let gen: u64 = ctx.arg(1);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(dying) = (unsafe { DYING.get(gen) }).copied() else {
        return 0;
    };
    let _ = DYING.remove(gen);
    emit(NetnsAction::TeardownEnd, dying.inum, dying.cookie, None);
    0
}

/// `sched_process_exit(struct task_struct *task, bool group_dead)`: the last thread of a
/// process exits, its namespaces not yet released. Exits in the initial namespace are dropped
/// here; userspace decides whether the process was the last one in its namespace.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn netns_process_exit(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff == 0 {
        return 0;
    }
    let task = Typed::new(ctx.arg(0));
    let net = net_of(task.addr());
    if read::<u64>(net, off!(net_net_cookie))
        .is_none_or(|c| c == global!(NETNS_CONFIG.init_net_cookie))
    {
        return 0;
    }
    emit_net(NetnsAction::ProcessExit, net, task);
    0
}

/// Set by the loader of the census.
#[unsafe(no_mangle)]
static NETNS_CENSUS_CONFIG: CensusConfig = CensusConfig { tgid: 0 };

/// The namespaces of the last census, in list order; the first `NETNS_CENSUS_LEN[0]` are valid.
#[map]
static NETNS_CENSUS: Array<CensusEntry> = Array::with_max_entries(CENSUS_MAX, 0);

/// `[CENSUS_LEN_SLOT]`: entries written by the last census; `[CENSUS_COMPLETE_SLOT]`: 1 if
/// it read the whole list.
#[map]
static NETNS_CENSUS_LEN: Array<u32> = Array::with_max_entries(2, 0);

/// State of the census's walk.
#[repr(C)]
struct Census {
    walk: Walk,
    /// `ns.ops` of the walk's first namespace: every `struct net` has the same.
    ops: u64,
    len: u32,
    complete: u32,
}

/// One step of the census (a `bpf_loop` callback): records the namespace at `node`. Returns 1
/// to stop.
extern "C" fn census_step(_index: u64, census: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the `Census` on the caller's stack.
    let census = unsafe { &mut *census.cast::<Census>() };
    let walk = &mut census.walk;
    if walk.node == 0 {
        return 1;
    }
    let net = walk.node - walk.list;
    // The list's head, `net_namespace_list`, is not inside a `struct net`: skipped.
    if is_net(net) && read::<u64>(net, off!(net_ns_ops)).unwrap_or(0) == census.ops {
        let (inum, cookie) = identify(net);
        if cookie != 0 {
            let Some(slot) = NETNS_CENSUS.get_ptr_mut(census.len) else {
                return 1;
            };
            let entry = CensusEntry {
                cookie,
                inum,
                refs: read::<u32>(net, off!(net_ns_refcount)).unwrap_or(u32::MAX),
                passive: read::<u32>(net, off!(net_passive)).unwrap_or(u32::MAX),
                _pad: 0,
            };
            // SAFETY: the slot is a valid array element.
            unsafe { *slot = entry };
            census.len += 1;
        }
    }
    walk.node = read::<u64>(walk.node, 0).unwrap_or(0);
    if walk.node == walk.first {
        census.complete = 1;
        return 1;
    }
    0
}

/// `task_rename(struct task_struct *task, const char *comm)`: fires when a thread is renamed
/// (prctl(PR_SET_NAME), exec, writing /proc/PID/comm). Only a thread of the process that loaded
/// the census (`tgid`, set at load time; taken from the kernel's `current`, not from anything
/// the renamer passes) triggers it: it then copies `net_namespace_list`, the kernel's own list
/// of every network namespace, with each one's reference counts. Walked from the renaming
/// thread's namespace round the circular list back to it.
#[btf_tracepoint(function = "task_rename")]
pub fn netns_census(_ctx: BtfTracePointContext) -> i32 {
    let tgid = global!(NETNS_CENSUS_CONFIG.tgid);
    if tgid == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 != tgid {
        return 0;
    }
    let list = off!(net_list);
    if list == MISSING || off!(net_net_cookie) == MISSING {
        return 0;
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let own = net_of(unsafe { bpf_get_current_task() });
    if own == 0 {
        return 0;
    }
    let first = own + list as u64;
    let mut census = Census {
        walk: Walk {
            first,
            node: first,
            list: list as u64,
        },
        ops: read::<u64>(own, off!(net_ns_ops)).unwrap_or(0),
        len: 0,
        complete: 0,
    };
    // SAFETY: the callback gets `census` back and nothing else; bpf_loop bounds the iterations.
    unsafe {
        bpf_loop(
            CENSUS_MAX + 1,
            census_step as *mut c_void,
            (&raw mut census).cast(),
            0,
        );
    }
    for (slot, value) in [
        (CENSUS_LEN_SLOT, census.len),
        (CENSUS_COMPLETE_SLOT, census.complete),
    ] {
        let _ = NETNS_CENSUS_LEN.set(slot, value, 0);
    }
    0
}
