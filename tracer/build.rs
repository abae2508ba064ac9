//! Builds the kernel programs (tracer-ebpf, for bpfel-unknown-none with nightly and
//! bpf-linker) so that the `tracer` binary can embed them, without their DWARF.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use object::build::elf::{Builder, SectionData};

/// The file the `tracer` binary embeds, in `OUT_DIR`.
const EMBEDDED_OBJECT: &str = "tracer-ebpf.o";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tracer-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // aya-build names the object after the eBPF crate's binary.
    let built = out_dir.join("tracer");
    let object = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let stripped = without_dwarf(&object).context("dropping the kernel programs' DWARF")?;
    std::fs::write(out_dir.join(EMBEDDED_OBJECT), stripped)?;
    Ok(())
}

/// The object without its `.debug_*` sections and their relocations. The BTF that the loader
/// and the verifier use (`.BTF`, `.BTF.ext`, with line info) was made from the DWARF and stays;
/// the DWARF itself is two thirds of the object, and aya parsed it at every start-up (0.5 ms
/// of a 12 ms warm start of `signals --pid`).
fn without_dwarf(object: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut builder = Builder::read(object)?;
    let dwarf: Vec<_> = builder
        .sections
        .iter()
        .filter(|s| s.name.starts_with(b".debug_"))
        .map(|s| s.id())
        .collect();
    for section in builder.sections.iter_mut() {
        let relocates = section.sh_info_section;
        section.delete =
            dwarf.contains(&section.id()) || relocates.is_some_and(|s| dwarf.contains(&s));
    }
    builder.delete_orphans();
    // LLVM names sections from the symbols' string table; the writer wants a table of its own.
    if !builder
        .sections
        .iter()
        .any(|s| matches!(s.data, SectionData::SectionString))
    {
        let names = builder.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    builder.write(&mut stripped)?;
    Ok(stripped)
}
