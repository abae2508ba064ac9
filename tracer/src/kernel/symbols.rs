//! What the kernel publishes about itself besides BTF: function addresses (/proc/kallsyms) and
//! the record layout of classic tracepoints (their tracefs `format` files).

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};

use super::preflight::TRACEFS;

/// The symbols of the text of /proc/kallsyms (`addr type name`). Zero addresses
/// (kptr_restrict hides them from the unprivileged) count as unknown.
fn symbols(kallsyms: &str) -> Vec<(u64, &str, &str)> {
    kallsyms
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
            Some((addr, fields.next()?, fields.next()?))
        })
        .collect()
}

/// `[start, end)` of the kernel function `name` among `symbols`: it ends where the next
/// symbol starts.
fn range_of(symbols: &[(u64, &str, &str)], name: &str) -> Option<(u64, u64)> {
    let start = symbols
        .iter()
        .find(|(addr, kind, symbol)| *addr != 0 && matches!(*kind, "t" | "T") && *symbol == name)?
        .0;
    let end = symbols
        .iter()
        .map(|(addr, _, _)| *addr)
        .filter(|&addr| addr > start)
        .min()?;
    Some((start, end))
}

/// `[start, end)` of the kernel function `name` from the text of /proc/kallsyms.
fn find_function(kallsyms: &str, name: &str) -> Option<(u64, u64)> {
    range_of(&symbols(kallsyms), name)
}

/// `[start, end)` of the kernel function `name`.
pub fn function_range(name: &str) -> Result<(u64, u64)> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    find_function(&kallsyms, name)
        .ok_or_else(|| anyhow!("/proc/kallsyms has no address for function `{name}`"))
}

/// `[start, end)` of each of the kernel functions `names` that /proc/kallsyms has (a function
/// the compiler inlined everywhere has none), read once.
pub fn function_ranges<'a>(names: &[&'a str]) -> Result<Vec<(&'a str, u64, u64)>> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let symbols = symbols(&kallsyms);
    Ok(names
        .iter()
        .filter_map(|name| range_of(&symbols, name).map(|(start, end)| (*name, start, end)))
        .collect())
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
        // It ends where the next symbol in address order starts, wherever that is listed.
        assert_eq!(
            find_function(kallsyms, "cleanup_net"),
            Some((0xffffffff81e523c0, 0xffffffff81e52710))
        );
        assert_eq!(find_function(kallsyms, "cleanup_list"), None);
        assert_eq!(find_function(kallsyms, "hidden"), None);
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
