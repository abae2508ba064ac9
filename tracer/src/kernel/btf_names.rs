//! The kernel's BTF types by name, from one pass over the raw BTF. btf-rs's mapped backend
//! scans every type for each name asked, and a start without cached facts asks a few dozen:
//! about 14 of its 30 ms (perf). The pass keeps a 32-bit hash of each name and the type's id
//! (8 bytes a type: 1 MiB for this kernel's 126,585), so a name leads to its few candidates.

use anyhow::{bail, Context as _, Result};
use xxhash_rust::xxh3::xxh3_64;

/// `BTF_MAGIC`, as the running kernel writes it (its own byte order).
const MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: name offset, info, size or type.
const TYPE_HEADER: usize = 12;

/// The named types of one BTF blob.
pub struct NameIndex {
    /// `(hash of the name, type id)`, sorted.
    entries: Vec<(u32, u32)>,
}

impl NameIndex {
    /// Indexes the BTF in `raw` (the kernel's, in its own byte order).
    pub fn build(raw: &[u8]) -> Result<Self> {
        let word = |at: usize| -> Result<u32> {
            raw.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("four bytes")))
                .with_context(|| format!("BTF cut short at byte {at}"))
        };
        if raw.get(0..2) != Some(&MAGIC.to_ne_bytes()[..]) {
            bail!("not BTF in this machine's byte order");
        }
        let header = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let (types, strings) = (header + type_off, header + str_off);
        if types + type_len > raw.len() || strings + str_len > raw.len() {
            bail!("BTF sections past its end");
        }
        let strings = &raw[strings..strings + str_len];
        let mut entries = Vec::new();
        let (mut at, mut id) = (types, 1u32);
        while at < types + type_len {
            let (name_off, info) = (word(at)? as usize, word(at + 4)?);
            let vlen = (info & 0xffff) as usize;
            // What follows the header, by kind (include/uapi/linux/btf.h).
            let trailing = match (info >> 24) & 0x1f {
                // int, var, decl_tag: one u32.
                1 | 14 | 17 => 4,
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag.
                2 | 7..=12 | 16 | 18 => 0,
                // array: element type, index type, count.
                3 => 12,
                // struct and union members, datasec entries, enum64 values: three u32 each.
                4 | 5 | 15 | 19 => 12 * vlen,
                // enum values and function parameters: two u32 each.
                6 | 13 => 8 * vlen,
                kind => bail!("BTF type {id} has kind {kind}, unknown here"),
            };
            if name_off != 0 {
                let name = strings
                    .get(name_off..)
                    .and_then(|tail| Some(&tail[..tail.iter().position(|&b| b == 0)?]))
                    .with_context(|| format!("BTF type {id}'s name"))?;
                entries.push((hash(name), id));
            }
            at += TYPE_HEADER + trailing;
            id += 1;
        }
        entries.sort_unstable();
        Ok(Self { entries })
    }

    /// The ids of the types whose name hashes like `name`, lowest first: its types', and
    /// rarely another name's (the caller checks each).
    pub fn candidates(&self, name: &str) -> impl Iterator<Item = u32> + '_ {
        let hash = hash(name.as_bytes());
        let first = self.entries.partition_point(|(h, _)| *h < hash);
        self.entries[first..]
            .iter()
            .take_while(move |(h, _)| *h == hash)
            .map(|(_, id)| *id)
    }
}

fn hash(name: &[u8]) -> u32 {
    xxh3_64(name) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name btf-rs finds in the kernel's BTF is among the index's candidates for it, at
    /// the same ids, through the whole blob: a kind read with the wrong size would shift every
    /// id after it.
    #[test]
    fn agrees_with_btf_rs_on_the_kernel_btf() {
        let path = super::super::btf::VMLINUX_BTF;
        let raw = std::fs::read(path).unwrap();
        let index = NameIndex::build(&raw).unwrap();
        let btf = btf_rs::Btf::from_file(path).unwrap();
        let name_of = |id: u32| {
            let ty = btf.resolve_type_by_id(id).ok()?;
            btf.resolve_name(ty.as_btf_type()?).ok()
        };
        for name in [
            "task_struct",
            "sk_buff",
            "btf_trace_signal_generate",
            "bpf_rdonly_cast",
            "cgroup_subsys_id",
            "upid",
            "nf_conn",
        ] {
            let theirs = btf.resolve_ids_by_name(name).unwrap();
            let ours: Vec<u32> = index
                .candidates(name)
                .filter(|&id| name_of(id).as_deref() == Some(name))
                .collect();
            assert_eq!(ours, theirs, "{name}");
        }
        for &(hash_of_name, id) in index.entries.iter().step_by(997) {
            let name = name_of(id).unwrap_or_else(|| panic!("type {id} has no name"));
            assert_eq!(hash(name.as_bytes()), hash_of_name, "type {id} `{name}`");
        }
        assert_eq!(index.candidates("no_such_type_anywhere").count(), 0);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(NameIndex::build(b"").is_err());
        assert!(NameIndex::build(&[0u8; 64]).is_err());
        let raw = std::fs::read(super::super::btf::VMLINUX_BTF).unwrap();
        assert!(NameIndex::build(&raw[..raw.len() / 2]).is_err());
    }
}
