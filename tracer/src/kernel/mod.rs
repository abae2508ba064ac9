//! What the loader needs to know about the running kernel: struct layouts from BTF, and the
//! capabilities (privileges, tracefs, which hooks load) that decide which programs can run.

pub mod btf;
pub mod btf_names;
pub mod fact_cache;
pub mod kfuncs;
pub mod mountinfo;
pub mod netns;
pub mod offsets;
pub mod preflight;
pub mod procfd;
pub mod sockets;
pub mod symbols;
