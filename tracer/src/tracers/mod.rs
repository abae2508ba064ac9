//! The tracers. Each is one module with the same shape:
//! - `mod.rs`: the [`Tracer`] implementation (its hooks, its in-kernel filter, its summary);
//! - `decode.rs`: ring-buffer bytes to a typed, serialisable event;
//! - further modules for its own vocabulary (signal names, ...).
//!
//! A new tracer adds its kernel program in tracer-ebpf, its record type and `EventKind` in
//! tracer-common, a module here, a subcommand in `cli.rs` dispatched in `main.rs`, and an
//! entry in `doctor::all_tracers` and in `ensemble::every_tracer`.

pub mod conntrack;
pub mod ensemble;
pub mod netns;
pub mod signals;

use anyhow::Result;
use aya::GlobalData;
use tracer_common::EventKind;

use crate::{hooks::HookSpec, output::Output};

pub trait Tracer {
    /// Name used in messages and in the summary (`"signals"`).
    fn name(&self) -> &'static str;

    /// Hooks to attach, each with its candidates, best first.
    fn hooks(&self) -> Vec<HookSpec>;

    /// The kinds of ring-buffer record this tracer's programs write.
    fn kinds(&self) -> &'static [EventKind];

    /// The column header of the human output.
    fn human_header(&self) -> String;

    /// Globals to set in the kernel programs before loading (filters).
    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)>;

    /// Takes the maps the tracer itself keeps current (filters that change during the run),
    /// once the programs are loaded and before any event is read.
    fn use_maps(&mut self, _ebpf: &mut aya::Ebpf) -> Result<()> {
        Ok(())
    }

    /// Handles one ring-buffer record of one of this tracer's kinds. Returns how many events
    /// were written (they count towards `--count`).
    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64>;

    /// The run's identity cache learnt new cgroups (the pipeline's refresh step): keep what
    /// follows it, such as a workload filter's kernel map, in step.
    fn identities_refreshed(&mut self) {}

    /// Writes events the tracer held back (for instance to match them with a later record).
    /// `final_flush` is set once at the end of the run: then everything goes out.
    fn flush(&mut self, _out: &mut Output, _final_flush: bool) -> Result<u64> {
        Ok(0)
    }

    /// Adds this tracer's figures to the end-of-run summary.
    fn summarize(&self, summary: &mut serde_json::Map<String, serde_json::Value>);
}

/// Reads a `#[repr(C)]` record from ring-buffer bytes.
pub fn decode_record<T: aya::Pod>(raw: &[u8]) -> Result<T> {
    anyhow::ensure!(
        raw.len() >= std::mem::size_of::<T>(),
        "short ring-buffer record: {} bytes, expected {} for {}",
        raw.len(),
        std::mem::size_of::<T>(),
        std::any::type_name::<T>()
    );
    // SAFETY: the length is checked; `Pod` types are plain data for which every bit pattern is
    // valid; read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<T>()) })
}
