//! Workload filters in the kernel: a tracer's program consults a BPF hash map of the cgroup
//! ids the [`Selector`] matches, which this keeps current as containers come and go (a
//! restarted container has a new cgroup).

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};

use super::{identity::Enricher, selector::Selector};

pub struct WorkloadFilter {
    selector: Selector,
    /// The program's map (cgroup id → 1), once loaded.
    map: Option<BpfHashMap<MapData, u64, u8>>,
    added: HashSet<u64>,
}

impl WorkloadFilter {
    pub fn new(selector: Selector) -> Self {
        Self {
            selector,
            map: None,
            added: HashSet::new(),
        }
    }

    /// Whether any workload filter is set (else the program's map stays unused).
    pub fn is_active(&self) -> bool {
        self.selector.is_active()
    }

    /// Takes the map `map_name` from the loaded programs and fills it with what `enricher`
    /// knows now.
    pub fn attach(&mut self, ebpf: &mut Ebpf, map_name: &str, enricher: &Enricher) -> Result<()> {
        if !self.is_active() {
            return Ok(());
        }
        let map = ebpf
            .take_map(map_name)
            .with_context(|| format!("no {map_name} map"))?;
        self.map = Some(BpfHashMap::try_from(map)?);
        self.sync(enricher);
        Ok(())
    }

    /// Adds the cgroups `enricher` learnt that the selector matches.
    pub fn sync(&mut self, enricher: &Enricher) {
        let Some(map) = &mut self.map else {
            return;
        };
        for (id, identity) in enricher.cgroups() {
            if self.added.contains(&id) || !self.selector.matches(identity) {
                continue;
            }
            if let Err(e) = map.insert(id, 1, 0) {
                log::warn!("workload filter: cannot add cgroup {id}: {e}");
                return;
            }
            self.added.insert(id);
        }
    }
}
