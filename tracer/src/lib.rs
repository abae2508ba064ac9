//! The `tracer` crate's modules, as a library: the binary (`main.rs`) runs them, and the fuzz
//! targets (`fuzz/`) call the parsers and decoders directly.

// Not a public API: `new()` constructors here read the running system (clocks, the cgroup
// root), which a `Default` would hide.
#![allow(clippy::new_without_default)]

pub mod cli;
pub mod clock;
pub mod docs;
pub mod doctor;
pub mod enrich;
pub mod hooks;
pub mod kernel;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod record;
pub mod report;
pub mod serve;
pub mod session;
pub mod stop;
pub mod text;
pub mod tracers;
