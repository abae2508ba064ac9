//! What the kernel publishes about itself besides BTF: function addresses (/proc/kallsyms) and
//! the record layout of classic tracepoints (their tracefs `format` files).

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use anyhow::{anyhow, Context as _, Result};

use super::{
    fact_cache::{Answer, Cache, Facts, Identity, KALLSYMS_FILE},
    preflight::TRACEFS,
};

/// `[start, end)` of each of `names` that is a function in `kallsyms` (its text: `addr type
/// name` lines), in the order of `names`: it ends where the next symbol in address order
/// starts, wherever that is listed. Zero addresses (kptr_restrict hides them from the
/// unprivileged) count as unknown. Only the addresses are kept while reading (the file is
/// several MiB of text: kept whole, it set the peak RSS of a start).
fn ranges_in<'a>(
    mut kallsyms: impl BufRead,
    names: &[&'a str],
) -> io::Result<Vec<(&'a str, u64, u64)>> {
    let mut addresses = Vec::new();
    let mut starts: Vec<Option<u64>> = vec![None; names.len()];
    let mut line = String::new();
    while {
        line.clear();
        kallsyms.read_line(&mut line)? != 0
    } {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(symbol)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        addresses.push(addr);
        if addr != 0 && matches!(kind, "t" | "T") {
            if let Some(i) = names.iter().position(|n| *n == symbol) {
                starts[i].get_or_insert(addr);
            }
        }
    }
    Ok(names
        .iter()
        .zip(starts)
        .filter_map(|(name, start)| {
            let start = start?;
            let end = addresses.iter().copied().filter(|&a| a > start).min()?;
            Some((*name, start, end))
        })
        .collect())
}

/// `[start, end)` of each of the kernel functions `names` that /proc/kallsyms has (a function
/// the compiler inlined everywhere has none). The answers are kept for this boot (see
/// `kernel::fact_cache`): the kernel formats the whole file anew at each read, about 40 ms
/// of a start. Names the cache lacks are looked up in one read.
pub fn function_ranges<'a>(names: &[&'a str]) -> Result<Vec<(&'a str, u64, u64)>> {
    let cache = boot_id().and_then(|id| Cache::configured(KALLSYMS_FILE, Identity::of(&id)));
    let mut known = match cache.as_ref().map(Cache::load) {
        Some(Ok(facts)) => facts,
        Some(Err(e)) => {
            log::info!("kallsyms: cache not used: {e:#}");
            Facts::new()
        }
        None => Facts::new(),
    };
    let unknown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !known.contains_key(&question(name)))
        .collect();
    if !unknown.is_empty() {
        let file = File::open("/proc/kallsyms").context("opening /proc/kallsyms")?;
        let found = ranges_in(BufReader::with_capacity(256 << 10, file), &unknown)
            .context("reading /proc/kallsyms")?;
        for name in &unknown {
            let answer = match found.iter().find(|(n, _, _)| n == name) {
                Some(&(_, start, end)) => Answer::Range(start, end),
                None => Answer::Missing(format!("/proc/kallsyms has no function `{name}`")),
            };
            known.insert(question(name), answer);
        }
        // Hidden addresses (all zero, kptr_restrict) say nothing about this boot: not kept.
        if let Some(cache) = cache.filter(|_| !found.is_empty()) {
            if let Err(e) = cache.store(&known) {
                log::info!("kallsyms: not cached: {e:#}");
            }
        }
    }
    Ok(names
        .iter()
        .filter_map(|name| match known.get(&question(name)) {
            Some(&Answer::Range(start, end)) => Some((*name, start, end)),
            _ => None,
        })
        .collect())
}

/// The cache's question for function `name`.
fn question(name: &str) -> String {
    format!("function {name}")
}

/// This boot's id: function addresses change at every boot (KASLR), so it is the cached
/// addresses' identity. `None` (no cache) if unreadable.
fn boot_id() -> Option<Vec<u8>> {
    std::fs::read("/proc/sys/kernel/random/boot_id").ok()
}

/// `[start, end)` of each of the kernel functions `names`, all of them or an error naming the
/// first missing.
pub fn all_function_ranges<const N: usize>(names: [&str; N]) -> Result<[(u64, u64); N]> {
    let found = function_ranges(&names)?;
    let mut ranges = [(0, 0); N];
    for (range, name) in ranges.iter_mut().zip(names) {
        let (_, start, end) = found
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| anyhow!("/proc/kallsyms has no address for function `{name}`"))?;
        *range = (*start, *end);
    }
    Ok(ranges)
}

/// Offset of `field` in a tracepoint record, from the text of its `format` file
/// (`field:unsigned long unshare_flags; offset:16; size:8; signed:0;`, tab-separated).
fn find_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let (declaration, rest) = line.trim().strip_prefix("field:")?.split_once(';')?;
        let name = declaration.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|offset| offset.parse().ok())
    })
}

/// Offset of `field` in the records of tracepoint `category:name` (tracefs must be mounted).
pub fn tracepoint_field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let format =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    find_field_offset(&format, field)
        .ok_or_else(|| anyhow!("{} has no field `{field}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_only() {
        let kallsyms = "ffffffff81e523b0 t __pfx_cleanup_net\n\
                        ffffffff81e52710 T net_drop_ns\n\
                        ffffffff81e523c0 t cleanup_net\n\
                        ffffffff82000000 d cleanup_list\n\
                        0000000000000000 t hidden";
        let names = ["cleanup_net", "cleanup_list", "hidden", "net_drop_ns"];
        // It ends where the next symbol in address order starts, wherever that is listed; the
        // last one has nothing after it.
        assert_eq!(
            ranges_in(kallsyms.as_bytes(), &names).unwrap(),
            [
                ("cleanup_net", 0xffffffff81e523c0, 0xffffffff81e52710),
                ("net_drop_ns", 0xffffffff81e52710, 0xffffffff82000000)
            ]
        );
    }

    #[test]
    fn reads_tracepoint_field_offsets() {
        let format = "name: sys_enter_unshare\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:unsigned long unshare_flags;\toffset:16;\tsize:8;\tsigned:0;\n";
        assert_eq!(find_field_offset(format, "unshare_flags"), Some(16));
        assert_eq!(find_field_offset(format, "__syscall_nr"), Some(8));
        assert_eq!(find_field_offset(format, "nope"), None);
    }
}
