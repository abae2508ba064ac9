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
    /// Matching cgroups the full map had no room for, at the latest sync.
    left_out: usize,
}

impl WorkloadFilter {
    pub fn new(selector: Selector) -> Self {
        Self {
            selector,
            map: None,
            added: HashSet::new(),
            left_out: 0,
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

    /// Adds the cgroups `enricher` learnt that the selector matches, after removing those that
    /// are gone (the map is bounded: a long run sees many containers come and go). When the
    /// map is full, the rest are counted and a warning says so, once per episode.
    pub fn sync(&mut self, enricher: &Enricher) {
        let Some(map) = &mut self.map else {
            return;
        };
        let gone: Vec<u64> = self
            .added
            .iter()
            .copied()
            .filter(|id| !enricher.is_present(*id))
            .collect();
        for id in gone {
            // A cgroup removed by the kernel is still a key here: only userspace deletes it.
            let _ = map.remove(&id);
            self.added.remove(&id);
        }
        let mut left_out = 0;
        let mut error = None;
        for (id, identity) in enricher.cgroups() {
            if self.added.contains(&id)
                || !enricher.is_present(id)
                || !self.selector.matches(identity)
            {
                continue;
            }
            if error.is_none() {
                match map.insert(id, 1, 0) {
                    Ok(()) => {
                        self.added.insert(id);
                        continue;
                    }
                    Err(e) => error = Some(e),
                }
            }
            left_out += 1;
        }
        if let Some(e) = error.filter(|_| self.left_out == 0) {
            log::warn!(
                "workload filter: cannot add a cgroup to the kernel map ({e}; it holds {}): \
                 {left_out} matching cgroups are not traced until others are gone",
                self.added.len()
            );
        }
        self.left_out = left_out;
    }

    /// For the summary: the cgroups selected in the kernel, and those left out (map full).
    pub fn summary(&self) -> Option<serde_json::Value> {
        self.map
            .as_ref()
            .map(|_| serde_json::json!({"cgroups": self.added.len(), "not_traced": self.left_out}))
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt as _};

    use super::*;
    use crate::enrich::{
        cgroup,
        identity::{Container, Identity},
        selector::NamePattern,
    };

    /// cgroup v2 groups the test makes, removed when dropped.
    struct Groups(Vec<std::path::PathBuf>);

    impl Drop for Groups {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    #[test]
    fn a_full_map_counts_what_it_leaves_out_and_gone_cgroups_make_room() {
        let root = cgroup::hierarchy_root(None).expect("a cgroup v2 hierarchy");
        let groups = Groups(
            (0..3)
                .map(|i| root.join(format!("tracer-unit-filter-{}-{i}", std::process::id())))
                .collect(),
        );
        for dir in &groups.0 {
            fs::create_dir(dir).expect("creating a cgroup");
        }
        let ids: Vec<u64> = groups
            .0
            .iter()
            .map(|d| fs::metadata(d).unwrap().ino())
            .collect();
        let mut enricher = Enricher::new();
        // Containers named `app` (what a runtime's records would say of these cgroups).
        for &id in &ids {
            enricher.learn_for_test(
                id,
                Identity {
                    container: Some(Container {
                        id: format!("{id:064x}"),
                        name: Some("app".into()),
                        runtime: Some("containerd"),
                        image: None,
                    }),
                    pod: None,
                },
            );
        }
        let mut filter = WorkloadFilter::new(Selector {
            container: Some(NamePattern::parse("app").unwrap()),
            ..Selector::default()
        });
        // A kernel map with room for two.
        filter.map = Some(BpfHashMap::create(2, 0).expect("creating a BPF hash map"));
        filter.sync(&enricher);
        let keys = |f: &WorkloadFilter| -> HashSet<u64> {
            f.map.as_ref().unwrap().keys().map(Result::unwrap).collect()
        };
        assert_eq!(keys(&filter).len(), 2);
        assert_eq!(
            filter.summary().unwrap(),
            serde_json::json!({"cgroups": 2, "not_traced": 1})
        );
        let left_out = *ids.iter().find(|id| !keys(&filter).contains(id)).unwrap();
        // One of those in the map goes: its entry is pruned, and the one left out gets in.
        let (i, _) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id != left_out)
            .unwrap();
        fs::remove_dir(&groups.0[i]).unwrap();
        enricher.refresh();
        filter.sync(&enricher);
        let expected: HashSet<u64> = ids.iter().copied().filter(|id| *id != ids[i]).collect();
        assert_eq!(keys(&filter), expected);
        assert!(keys(&filter).contains(&left_out));
        assert_eq!(
            filter.summary().unwrap(),
            serde_json::json!({"cgroups": 2, "not_traced": 0})
        );
    }
}
