//! The kfunc calls in the kernel programs. aya relocates no kfunc calls, so the programs
//! emit each as a raw call instruction (`BPF_PSEUDO_KFUNC_CALL`) whose immediate is a marker,
//! and the loader writes the kfunc's id in the running kernel's BTF there before loading.

use std::borrow::Cow;

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSection as _, SectionFlags};
use tracer_common::offsets::RDONLY_CAST_IMM;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg = BPF_PSEUDO_KFUNC_CALL`, `dst_reg = 0`.
const KFUNC_REGS: u8 = 0x20;
/// Instructions are 8 bytes: opcode, registers, offset (2), immediate (4).
const INSN: usize = 8;
/// `SHF_EXECINSTR`: the sections that hold instructions.
const EXECUTABLE: u64 = 0x4;

/// `object` with every `bpf_rdonly_cast` call pointed at `rdonly_cast_id`. Without an id
/// (a kernel before 6.2) the markers stay: the programs that make the call fail to load,
/// and their hooks fall back to a candidate without it.
pub fn resolve(object: &[u8], rdonly_cast_id: Option<u32>) -> Result<Cow<'_, [u8]>> {
    let Some(id) = rdonly_cast_id else {
        return Ok(Cow::Borrowed(object));
    };
    let file = object::File::parse(object).context("reading the eBPF object")?;
    let mut patched = object.to_vec();
    for section in file.sections() {
        let SectionFlags::Elf { sh_flags } = section.flags() else {
            continue;
        };
        let Some((start, len)) = section.file_range().filter(|_| sh_flags & EXECUTABLE != 0) else {
            continue;
        };
        let text = &mut patched[start as usize..(start + len) as usize];
        for insn in text.chunks_exact_mut(INSN) {
            if insn[0] == CALL
                && insn[1] == KFUNC_REGS
                && insn[4..] == RDONLY_CAST_IMM.to_le_bytes()
            {
                insn[4..].copy_from_slice(&id.to_le_bytes());
            }
        }
    }
    Ok(Cow::Owned(patched))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The markers the build left are all replaced, and nothing else changes.
    #[test]
    fn every_marker_and_only_them() {
        let object = crate::hooks::EBPF_OBJECT;
        let marker = |bytes: &[u8]| {
            bytes
                .chunks_exact(INSN)
                .filter(|i| i[0] == CALL && i[1] == KFUNC_REGS)
                .filter(|i| i[4..] == RDONLY_CAST_IMM.to_le_bytes())
                .count()
        };
        assert!(marker(object) > 0, "no bpf_rdonly_cast call in the object");
        let patched = resolve(object, Some(0x1234_5678)).unwrap();
        assert_eq!(marker(&patched), 0);
        let differing = object
            .chunks_exact(INSN)
            .zip(patched.chunks_exact(INSN))
            .filter(|(a, b)| a != b)
            .inspect(|(_, b)| assert_eq!(b[4..], 0x1234_5678u32.to_le_bytes()))
            .count();
        assert_eq!(differing, marker(object));
        assert!(matches!(resolve(object, None).unwrap(), Cow::Borrowed(_)));
    }
}
