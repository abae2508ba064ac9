//! Records of the `netns --watch` tracer.

use crate::{EventHeader, TaskInfo};

/// `CLONE_NEWNET`: the clone/unshare flag that creates a network namespace, and the value of
/// `ns_common.ns_type` in every `struct net`.
pub const CLONE_NEWNET: u64 = 0x4000_0000;

/// What happened to a network namespace.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsAction {
    /// clone/clone3/unshare with `CLONE_NEWNET` succeeded; `task` is the first process inside.
    Create = 1,
    /// The last reference went and `cleanup_net` picked the namespace up.
    TeardownStart = 2,
    /// Its last passive reference went (`net_passive_dec` freed `net->gen`): teardown
    /// finished. (The `struct net` itself is freed one `cleanup_net` round later.)
    TeardownEnd = 3,
    /// A process whose namespace is not the initial one exited (`task`); userspace decides
    /// whether it was the last process while a bind mount keeps the namespace alive.
    ProcessExit = 4,
}

/// One network-namespace event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetnsEvent {
    pub header: EventHeader,
    /// A [`NetnsAction`] value.
    pub action: u32,
    /// `net->ns.inum`: the inode number of /proc/PID/ns/net (reused quickly).
    pub inum: u32,
    /// `net->net_cookie`: never reused, the key to match events on.
    pub cookie: u64,
    /// The process concerned; all zero for teardown (a kernel worker does it).
    pub task: TaskInfo,
}

/// Settings of the `netns` programs, set once at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsConfig {
    /// `[start, end)` of `cleanup_net` (from /proc/kallsyms): the work function that tears
    /// namespaces down. 0: teardown is not reported.
    pub cleanup_net: u64,
    pub cleanup_net_end: u64,
    /// `[start, end)` of `net_passive_dec`, whose last call frees `net->gen`.
    pub passive_dec: u64,
    pub passive_dec_end: u64,
    /// Cookie of the initial network namespace, whose processes' exits are not reported.
    pub init_net_cookie: u64,
    /// Offsets of the fields in the `syscalls` tracepoints' records (from their tracefs format).
    pub unshare_flags_offset: u32,
    pub unshare_ret_offset: u32,
}

/// Namespaces the census (`netns_census`) records, at most.
pub const CENSUS_MAX: u32 = 8192;

/// Settings of the census program, set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusConfig {
    /// The process allowed to trigger the walk (by renaming one of its threads); 0: nobody.
    pub tgid: u32,
}

/// One namespace of the kernel's own list, `net_namespace_list`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusEntry {
    pub cookie: u64,
    pub inum: u32,
    /// `net->ns.__ns_ref` (`ns.count` before 6.18): what keeps the namespace alive; 0 once
    /// its teardown is queued. `u32::MAX` when this kernel's layout is unknown.
    pub refs: u32,
    /// `net->passive`: what keeps its memory, not the namespace, alive.
    pub passive: u32,
    pub _pad: u32,
}

/// Slots of the census's `NETNS_CENSUS_LEN` array.
pub const CENSUS_LEN_SLOT: u32 = 0;
/// 1 when the last walk came back to its start (the list was read whole), else 0.
pub const CENSUS_COMPLETE_SLOT: u32 = 1;
