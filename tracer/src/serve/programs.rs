//! The run figures the kernel keeps for this process's own programs (while BPF statistics
//! are on).

use std::collections::HashMap;

use aya::Ebpf;

/// One of our programs, with the kernel's cumulative figures.
pub struct ProgramRuns {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// The kernel ids of the programs loaded from `ebpf`, with their names in the object file
/// (the kernel keeps only 15 bytes of a name).
pub fn loaded(ebpf: &Ebpf) -> HashMap<u32, String> {
    ebpf.programs()
        .filter_map(|(name, program)| Some((program.info().ok()?.id(), name.to_string())))
        .collect()
}

/// The figures of the programs `ours` names (see [`loaded`]); zeros while statistics are off.
pub fn runs(ours: &HashMap<u32, String>) -> Vec<ProgramRuns> {
    if ours.is_empty() {
        return Vec::new();
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|info| {
            Some(ProgramRuns {
                id: info.id(),
                name: ours.get(&info.id())?.clone(),
                runs: info.run_count(),
                run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            })
        })
        .collect()
}
