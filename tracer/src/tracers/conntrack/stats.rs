//! A namespace's conntrack statistics: the kernel's per-CPU `struct ip_conntrack_stat`, as the
//! programs copy it raw, and as `/proc/net/stat/nf_conntrack` prints it.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _, Result};
use serde::Serialize;
use tracer_common::conntrack::STAT_COUNTERS;

use crate::kernel::{
    btf::KernelBtf,
    netns::{self, NetnsRef},
};

/// The counters that tell conntrack's drops apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtStats {
    /// Confirm-time clashes that could not be resolved (each dropped a packet).
    pub insert_failed: u64,
    /// Packets conntrack dropped (includes `insert_failed` and a full table).
    pub drop: u64,
    /// Entries evicted to make room.
    pub early_drop: u64,
    /// Confirm-time clashes the kernel resolved (the packet survived).
    pub clash_resolve: u64,
}

impl CtStats {
    /// Counter growth since `earlier` (per-CPU counters are 32-bit and may wrap).
    pub fn since(&self, earlier: &CtStats) -> CtStats {
        let d = |now: u64, then: u64| (now as u32).wrapping_sub(then as u32) as u64;
        CtStats {
            insert_failed: d(self.insert_failed, earlier.insert_failed),
            drop: d(self.drop, earlier.drop),
            early_drop: d(self.early_drop, earlier.early_drop),
            clash_resolve: d(self.clash_resolve, earlier.clash_resolve),
        }
    }

    pub fn add(&mut self, other: &CtStats) {
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.clash_resolve += other.clash_resolve;
    }

    pub fn is_zero(&self) -> bool {
        *self == CtStats::default()
    }
}

/// Where the counters sit in `struct ip_conntrack_stat` on this kernel.
#[derive(Clone, Copy, Debug)]
pub struct StatLayout {
    insert_failed: usize,
    drop: usize,
    early_drop: usize,
    clash_resolve: usize,
    pub size: u32,
}

impl StatLayout {
    pub fn resolve(btf: &KernelBtf) -> Result<Self> {
        let field = |f: &str| -> Result<usize> {
            btf.field_offset("ip_conntrack_stat", f)
                .map(|o| o as usize)
                .with_context(|| format!("resolving `ip_conntrack_stat.{f}`"))
        };
        Ok(Self {
            insert_failed: field("insert_failed")?,
            drop: field("drop")?,
            early_drop: field("early_drop")?,
            clash_resolve: field("clash_resolve")?,
            size: btf.struct_size("ip_conntrack_stat")?,
        })
    }

    /// The offsets of the counters [`Self::decode`] reads, in its order: the kernel program
    /// copies only these (see `ConntrackConfig::stat_counters`).
    pub fn counters(&self) -> [u32; STAT_COUNTERS] {
        [
            self.insert_failed,
            self.drop,
            self.early_drop,
            self.clash_resolve,
        ]
        .map(|o| o as u32)
    }

    pub fn decode(&self, raw: &[u8]) -> CtStats {
        let u32_at = |o: usize| {
            raw.get(o..o + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64)
        };
        // From the offsets the kernel program was given, so that it copies what is read here.
        let [insert_failed, drop, early_drop, clash_resolve] =
            self.counters().map(|o| u32_at(o as usize));
        CtStats {
            insert_failed,
            drop,
            early_drop,
            clash_resolve,
        }
    }
}

/// CPU numbers in `/sys/devices/system/cpu/possible` order (`0-3,8`): the rows of
/// `/proc/net/stat/nf_conntrack` are the possible CPUs, in this order.
pub fn possible_cpus() -> Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim())
}

fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse()?, b.parse()?);
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// Parses `/proc/net/stat/nf_conntrack`: a header naming the columns, then one hex row per
/// possible CPU.
pub fn parse_proc_stat(text: &str, cpus: &[u32]) -> Result<BTreeMap<u32, CtStats>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow!("empty conntrack statistics"))?
        .split_whitespace()
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (insert_failed, drop, early_drop, clash) = (
        column("insert_failed").context("no insert_failed column")?,
        column("drop").context("no drop column")?,
        column("early_drop").context("no early_drop column")?,
        column("clashres"),
    );
    let mut per_cpu = BTreeMap::new();
    for (row, &cpu) in lines.zip(cpus) {
        let values: Vec<u64> = row
            .split_whitespace()
            .map(|v| u64::from_str_radix(v, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing conntrack statistics row `{row}`"))?;
        let at = |i: usize| values.get(i).copied().unwrap_or(0);
        per_cpu.insert(
            cpu,
            CtStats {
                insert_failed: at(insert_failed),
                drop: at(drop),
                early_drop: at(early_drop),
                clash_resolve: clash.map_or(0, at),
            },
        );
    }
    Ok(per_cpu)
}

/// The statistics of the namespace the reading thread is in.
const PROC_STAT: &str = "/proc/thread-self/net/stat/nf_conntrack";

/// The per-CPU statistics of the namespace `netns`, read from inside it.
pub fn read_netns(netns: &NetnsRef, cpus: &[u32]) -> Result<BTreeMap<u32, CtStats>> {
    parse_proc_stat(&netns::read_in(netns, PROC_STAT)?, cpus)
}

/// The cookie of the namespace `netns` and its per-CPU statistics, read together from inside
/// it: which namespace the figures are of.
pub fn read_netns_with_cookie(
    netns: &NetnsRef,
    cpus: &[u32],
) -> Result<(u64, BTreeMap<u32, CtStats>)> {
    let (cookie, text) = netns::in_netns(&netns.open()?, || {
        let text =
            std::fs::read_to_string(PROC_STAT).with_context(|| format!("reading {PROC_STAT}"))?;
        Ok((netns::own_cookie()?, text))
    })?;
    Ok((cookie, parse_proc_stat(&text, cpus)?))
}

/// Conntrack entries in the namespace `netns` (its `nf_conntrack_count` sysctl).
pub fn entries(netns: &NetnsRef) -> Result<u64> {
    let text = netns::read_in(netns, "/proc/sys/net/netfilter/nf_conntrack_count")?;
    text.trim().parse().context("parsing nf_conntrack_count")
}

/// Sum over CPUs.
pub fn total(per_cpu: &BTreeMap<u32, CtStats>) -> CtStats {
    let mut sum = CtStats::default();
    for s in per_cpu.values() {
        sum.add(s);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
        00000003  00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000007 00000001 00000000  00000000 00000000 00000000 00000000\n\
        00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 0000000b 00000000 00000000  00000000 00000000 00000000 00000000\n";

    #[test]
    fn parses_rows_by_header_name() {
        let stats = parse_proc_stat(PROC, &[0, 1]).unwrap();
        assert_eq!(
            stats[&0],
            CtStats {
                insert_failed: 5,
                drop: 7,
                early_drop: 1,
                clash_resolve: 2
            }
        );
        assert_eq!(stats[&1].insert_failed, 10);
        assert_eq!(total(&stats).drop, 18);
        assert!(parse_proc_stat("", &[0]).is_err());
        assert!(parse_proc_stat("entries drop\nzz\n", &[0]).is_err());
    }

    #[test]
    fn cpu_lists_and_wrapping_deltas() {
        assert_eq!(parse_cpu_list("0-1").unwrap(), [0, 1]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), [0, 1, 2, 5]);
        let before = CtStats {
            drop: u32::MAX as u64,
            ..Default::default()
        };
        let after = CtStats {
            drop: 1,
            ..Default::default()
        };
        assert_eq!(after.since(&before).drop, 2);
    }
}
