//! Several tracers run as one, from one process and one set of loaded programs: what
//! `tracer record` and `tracer serve` run. Each record goes to the tracer that owns its kind;
//! a [`Companion`] adds what the command does besides (a status line, a census).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use aya::{Ebpf, GlobalData};
use serde_json::{Map, Value};
use tracer_common::EventKind;

use super::{Tracer, TracerOptions, REGISTRY};
use crate::{
    enrich::identity::Identities, hooks::HookSpec, kernel::btf::KernelBtf, output::Output,
};

/// What a command does besides the tracers: once the programs are loaded, and at each flush
/// of the pipeline.
pub trait Companion {
    /// The programs are loaded and attached; no event was read yet. The companion may take
    /// the maps it reads itself (the census's).
    fn on_loaded(&mut self, _ebpf: &mut Ebpf) {}

    /// The run stops; the programs are still attached (see [`Tracer::stopping`]).
    fn stopping(&mut self) {}

    /// `events`: how many events each tracer wrote so far. `final_flush` is set once, at the
    /// end of the run.
    fn after_flush(
        &mut self,
        events: &BTreeMap<&'static str, u64>,
        out: &mut Output,
        final_flush: bool,
    ) -> Result<()>;
}

/// Every registered tracer, each with its options.
pub fn every_tracer(
    btf: &KernelBtf,
    identities: &Identities,
    options: &TracerOptions,
) -> Result<Vec<Box<dyn Tracer>>> {
    REGISTRY
        .iter()
        .map(|r| (r.make)(btf, identities, options))
        .collect()
}

pub struct Ensemble<C> {
    name: &'static str,
    human_header: String,
    tracers: Vec<Box<dyn Tracer>>,
    events: BTreeMap<&'static str, u64>,
    companion: C,
}

impl<C: Companion> Ensemble<C> {
    pub fn new(
        name: &'static str,
        human_header: &str,
        tracers: Vec<Box<dyn Tracer>>,
        companion: C,
    ) -> Self {
        Self {
            name,
            human_header: human_header.to_string(),
            tracers,
            events: BTreeMap::new(),
            companion,
        }
    }
}

impl<C: Companion> Tracer for Ensemble<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn hooks(&self) -> Vec<HookSpec> {
        self.tracers.iter().flat_map(|t| t.hooks()).collect()
    }

    /// Every kind: `on_record` hands each to the tracer owning it.
    fn kinds(&self) -> &'static [EventKind] {
        EventKind::ALL
    }

    fn human_header(&self) -> String {
        self.human_header.clone()
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        self.tracers.iter().flat_map(|t| t.globals()).collect()
    }

    fn use_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.tracers.iter_mut().try_for_each(|t| t.use_maps(ebpf))?;
        self.companion.on_loaded(ebpf);
        Ok(())
    }

    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        let Some(tracer) = self.tracers.iter_mut().find(|t| t.kinds().contains(&kind)) else {
            bail!("no tracer of `{}` handles {kind:?} records", self.name);
        };
        let written = tracer.on_record(kind, raw, out)?;
        *self.events.entry(tracer.name()).or_default() += written;
        Ok(written)
    }

    fn identities_refreshed(&mut self) {
        self.tracers
            .iter_mut()
            .for_each(|t| t.identities_refreshed());
    }

    fn stopping(&mut self) {
        self.tracers.iter_mut().for_each(|t| t.stopping());
        self.companion.stopping();
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        let mut written = 0;
        for tracer in &mut self.tracers {
            let n = tracer.flush(out, final_flush)?;
            *self.events.entry(tracer.name()).or_default() += n;
            written += n;
        }
        self.companion.after_flush(&self.events, out, final_flush)?;
        Ok(written)
    }

    fn summarize(&self, summary: &mut Map<String, Value>) {
        for tracer in &self.tracers {
            let mut own = Map::new();
            tracer.summarize(&mut own);
            summary.insert(tracer.name().to_string(), Value::Object(own));
        }
    }
}
