//! Turning what the kernel reports (pids, cgroup ids) into names a person knows.

pub mod cgroup;
