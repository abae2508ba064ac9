//! The run figures the kernel keeps for this process's own programs (while BPF statistics
//! are on): found through our fds, so that other tools' programs are never reported.

use std::{collections::HashSet, fs};

/// One of our programs, with the kernel's cumulative figures.
pub struct ProgramRuns {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Ids of the programs this process holds open, from its fds' fdinfo.
fn own_ids() -> HashSet<u32> {
    let Ok(fds) = fs::read_dir("/proc/self/fdinfo") else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// The program name in `names` that the kernel's copy `short` stands for: the kernel keeps
/// only the first 15 bytes of a name.
fn full_name(short: &str, names: &[&'static str]) -> String {
    names
        .iter()
        .find(|name| name.starts_with(short))
        .map_or_else(|| short.to_string(), |name| name.to_string())
}

/// Our programs and their figures (zeros while statistics are off), named after `names`,
/// the programs' names in the object file.
pub fn ours(names: &[&'static str]) -> Vec<ProgramRuns> {
    let ids = own_ids();
    if ids.is_empty() {
        return Vec::new();
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter(|info| ids.contains(&info.id()))
        .map(|info| ProgramRuns {
            id: info.id(),
            name: full_name(info.name_as_str().unwrap_or("?"), names),
            runs: info.run_count(),
            run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_names_are_completed() {
        let names = ["netns_teardown_end", "netns_task_newtask", "kfree_skb"];
        assert_eq!(full_name("netns_teardown_", &names), "netns_teardown_end");
        assert_eq!(full_name("kfree_skb", &names), "kfree_skb");
        assert_eq!(full_name("other", &names), "other");
    }
}
