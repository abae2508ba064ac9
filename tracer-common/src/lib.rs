//! Types shared by the kernel programs (tracer-ebpf) and the loader (tracer).
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes these bytes into the ring
//! buffer and userspace reads them back, so both sides must agree on the layout exactly.
//! Userspace-only conveniences live behind the `user` feature.
#![no_std]

pub mod conntrack;
pub mod netns;
pub mod offsets;
pub mod signal;

/// Which tracer produced a ring-buffer record. Every record starts with an [`EventHeader`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Signal = 1,
    OomVictim = 2,
    NetfilterDrop = 3,
    Netns = 4,
}

impl EventKind {
    /// Every kind.
    pub const ALL: &'static [EventKind] = &[
        Self::Signal,
        Self::OomVictim,
        Self::NetfilterDrop,
        Self::Netns,
    ];
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| *k as u32 == value)
            .ok_or(value)
    }
}

/// Number of [`EventKind`] slots in the per-CPU `LOST` counter map (index = kind value).
pub const EVENT_KINDS: u32 = 5;

/// Length of the kernel's `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// CPU the event was captured on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was captured.
    pub ktime_ns: u64,
}

/// A process as the kernel saw it when the event happened.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo {
    /// Process id (tgid) in the initial pid namespace.
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// Process id as seen from the task's own pid namespace.
    pub ns_pid: u32,
    /// Thread id as seen from the task's own pid namespace.
    pub ns_tid: u32,
    /// cgroup v2 id (kernfs node id) of the task's cgroup, 0 if unknown.
    pub cgroup_id: u64,
    /// The thread group leader's start time (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// The process's comm (the thread group leader's).
    pub leader_comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` structs of integers and byte arrays: every bit pattern is valid.
    unsafe impl aya::Pod for crate::offsets::KernelOffsets {}
    unsafe impl aya::Pod for crate::EventHeader {}
    unsafe impl aya::Pod for crate::signal::SignalFilter {}
    unsafe impl aya::Pod for crate::signal::SignalEvent {}
    unsafe impl aya::Pod for crate::signal::DescribedSignalEvent {}
    unsafe impl aya::Pod for crate::signal::OomVictimEvent {}
    unsafe impl aya::Pod for crate::conntrack::NetfilterDropEvent {}
    unsafe impl aya::Pod for crate::conntrack::ConntrackConfig {}
    unsafe impl aya::Pod for crate::netns::NetnsEvent {}
    unsafe impl aya::Pod for crate::netns::NetnsConfig {}
    unsafe impl aya::Pod for crate::netns::CensusConfig {}
    unsafe impl aya::Pod for crate::netns::CensusEntry {}
}
