//! The kernel types aya looks up when it loads a `tp_btf` or `fexit` program.
//!
//! aya needs a `Btf` for those loads only to find one type id by name: the typedef
//! `btf_trace_<tracepoint>`, or the traced function. Parsing the whole kernel BTF into aya's
//! form for that costs about 27 ms and a few MiB at every start (measured with `cargo xtask
//! bench`), on top of the parse aya's loader does anyway. This builds an aya `Btf` holding
//! just those types, at their ids in the kernel's BTF (the ids before them are placeholders),
//! which is all the lookup reads; the kernel checks the ids against its own BTF.

use super::btf::{KernelBtf, NamedKind};
use anyhow::{anyhow, Context as _, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;

/// A type aya will look up.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// `tp_btf/<name>`: the typedef `btf_trace_<name>`.
    Tracepoint(&'a str),
    /// `fentry`/`fexit` on a kernel function.
    Function(&'a str),
}

/// Builds the minimal BTF for `targets`; targets this kernel lacks are left out (loading
/// their program then fails with aya's "unknown type" error, which the hook probe reports).
pub fn minimal(btf: &KernelBtf, targets: &[Target<'_>]) -> Result<aya::Btf> {
    let mut found: Vec<(u32, u32, String)> = Vec::new(); // (id, kind, name)
    for target in targets {
        let (name, kind, code) = match target {
            Target::Tracepoint(tp) => (format!("btf_trace_{tp}"), NamedKind::Typedef, KIND_TYPEDEF),
            Target::Function(f) => (f.to_string(), NamedKind::Func, KIND_FUNC),
        };
        for id in btf.ids_of(&name, kind)? {
            if !found.iter().any(|(i, ..)| *i == id) {
                found.push((id, code, name.clone()));
            }
        }
    }
    found.sort_unstable();
    aya::Btf::parse(&encode(&found), aya::Endianness::default())
        .map_err(|e| anyhow!("{e}"))
        .context("building the BTF used to attach programs")
}

/// Raw BTF: an `int` at id 1, placeholders (pointers to it), and the named types at their ids.
fn encode(types: &[(u32, u32, String)]) -> Vec<u8> {
    let mut strings = b"\0int\0".to_vec();
    let mut section = Vec::new();
    let mut put = |words: &[u32]| words.iter().for_each(|w| section.extend(w.to_ne_bytes()));
    // id 1: a 32-bit signed int.
    put(&[1, KIND_INT << 24, 4, 0x0100_0020]);
    let mut next_id = 2;
    for (id, kind, name) in types {
        while next_id < *id {
            put(&[0, KIND_PTR << 24, 1]);
            next_id += 1;
        }
        let name_off = strings.len() as u32;
        strings.extend(name.as_bytes());
        strings.push(0);
        put(&[name_off, kind << 24, 1]);
        next_id += 1;
    }
    let mut raw = Vec::with_capacity(24 + section.len() + strings.len());
    raw.extend(BTF_MAGIC.to_ne_bytes());
    raw.extend([1u8, 0]); // version, flags
    for word in [
        24u32,
        0,
        section.len() as u32,
        section.len() as u32,
        strings.len() as u32,
    ] {
        raw.extend(word.to_ne_bytes());
    }
    raw.extend(section);
    raw.extend(strings);
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aya_finds_the_targets_at_their_kernel_ids() {
        let btf = KernelBtf::from_file(std::path::Path::new(super::super::btf::VMLINUX_BTF));
        let minimal = minimal(
            &btf,
            &[
                Target::Tracepoint("signal_generate"),
                Target::Function("do_send_sig_info"),
            ],
        )
        .unwrap();
        let full = aya::Btf::from_sys_fs().unwrap();
        for (name, kind) in [
            ("btf_trace_signal_generate", aya_obj::btf::BtfKind::Typedef),
            ("do_send_sig_info", aya_obj::btf::BtfKind::Func),
        ] {
            assert_eq!(
                minimal.id_by_type_name_kind(name, kind).unwrap(),
                full.id_by_type_name_kind(name, kind).unwrap(),
                "{name}"
            );
        }
    }
}
