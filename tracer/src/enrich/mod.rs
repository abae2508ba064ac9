//! Turning what the kernel reports (pids, cgroup ids) into names a person knows.

pub mod cgroup;
pub mod cgroup_path;
pub mod filter;
pub mod identity;
pub mod metadata;
pub mod selector;
