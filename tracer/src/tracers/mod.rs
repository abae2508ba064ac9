//! The tracers. Each is one module with the same shape:
//! - `mod.rs`: the [`Tracer`] implementation (its hooks, its in-kernel filter, its summary);
//! - `decode.rs`: ring-buffer bytes to a typed, serialisable event;
//! - further modules for its own vocabulary (signal names, ...).
//!
//! Adding a tracer (the unit tests below fail until each is done):
//! 1. its kernel module in tracer-ebpf (a `mod` line in its main.rs);
//! 2. its record type and `EventKind` in tracer-common;
//! 3. a module here in the shape of `netns`, and its line in [`REGISTRY`], from which
//!    `doctor`, `record` and `serve` take their tracers;
//! 4. its subcommand in `cli.rs`, dispatched in `main.rs`;
//! 5. its events' type in `report.rs` (the round-trip test there fails until it is), and its
//!    programs in the tests' `PROGRAMS_BY_TRACER` (the doctor test compares the two).

pub mod conntrack;
pub mod ensemble;
pub mod netns;
#[cfg(test)]
pub mod samples;
pub mod signals;

use anyhow::Result;
use aya::GlobalData;
use tracer_common::EventKind;

use self::{
    conntrack::{ConntrackOptions, ConntrackTracer},
    netns::NetnsTracer,
    signals::{SignalsOptions, SignalsTracer},
};
use crate::{
    enrich::identity::Identities, hooks::HookSpec, kernel::btf::KernelBtf, output::Output,
};

/// What a command asks of the tracers; `doctor` and `serve` take the defaults.
#[derive(Clone, Debug, Default)]
pub struct TracerOptions {
    pub signals: SignalsOptions,
    pub conntrack: ConntrackOptions,
}

/// A tracer, as the registry knows it.
pub struct Registered {
    pub name: &'static str,
    /// Builds it for a run.
    pub make: fn(&KernelBtf, &Identities, &TracerOptions) -> Result<Box<dyn Tracer>>,
}

/// Every tracer, once.
pub const REGISTRY: &[Registered] = &[
    Registered {
        name: "signals",
        make: |_, identities, options| {
            Ok(Box::new(SignalsTracer::new(&options.signals, identities)?))
        },
    },
    Registered {
        name: "conntrack-drops",
        make: |btf, identities, options| {
            Ok(Box::new(ConntrackTracer::new(
                btf,
                options.conntrack.clone(),
                identities,
            )?))
        },
    },
    Registered {
        name: "netns",
        make: |_, identities, _| Ok(Box::new(NetnsTracer::new(identities))),
    },
];

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

    /// The records lost so far (ring buffer full), told before each flush: a tracer that
    /// concludes from a record's absence must know that some never arrived.
    fn records_lost(&mut self, _lost: u64) {}

    /// The run stops: the programs are still attached; the final drain and flush follow once
    /// they are detached. For what needs the programs one last time (`record`'s closing
    /// census).
    fn stopping(&mut self) {}

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Every registered tracer with default options, as on this machine (root, BTF).
    fn registered() -> Vec<Box<dyn Tracer>> {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let identities = Identities::new();
        REGISTRY
            .iter()
            .map(|r| {
                let tracer = (r.make)(&btf, &identities, &TracerOptions::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", r.name));
                assert_eq!(tracer.name(), r.name);
                tracer
            })
            .collect()
    }

    #[test]
    fn every_record_kind_has_exactly_one_tracer() {
        let mut owners: HashMap<u32, Vec<&str>> = HashMap::new();
        for tracer in registered() {
            for kind in tracer.kinds() {
                owners.entry(*kind as u32).or_default().push(tracer.name());
            }
        }
        for kind in EventKind::ALL {
            assert_eq!(
                owners.get(&(*kind as u32)).map(Vec::len),
                Some(1),
                "{kind:?}: {owners:?}"
            );
        }
        assert_eq!(owners.len(), EventKind::ALL.len());
    }

    #[test]
    fn every_hooks_program_is_in_the_kernel_object() {
        let object = aya_obj::Object::parse(crate::hooks::EBPF_OBJECT).expect("the object");
        for tracer in registered() {
            for hook in tracer.hooks() {
                for candidate in hook.candidates {
                    assert!(
                        object.programs.contains_key(candidate.program),
                        "{}: program {} is not in tracer-ebpf",
                        tracer.name(),
                        candidate.program
                    );
                }
            }
        }
    }
}
