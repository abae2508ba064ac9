//! Struct layouts and enum values of the running kernel, read from its BTF.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Backend, Btf, Type};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's type information, queried by name.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Reads the running kernel's BTF, or says what is missing.
    pub fn from_sys_fs() -> Result<Self> {
        if !Path::new(VMLINUX_BTF).exists() {
            bail!(
                "{VMLINUX_BTF} does not exist: this kernel was built without BTF \
                 (CONFIG_DEBUG_INFO_BTF=y is needed); tracer cannot read its struct layouts"
            );
        }
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Maps the file where the kernel allows it (no up-front parse of every type: faster and
    /// smaller), else reads and parses it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading BTF from {}", path.display()))?;
        Ok(Self { btf })
    }

    /// The struct or union named `name`.
    fn composite(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("this kernel's BTF has no type named `{name}`"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("this kernel's BTF has no struct named `{name}`"))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        Ok(self.composite(name)?.size() as u32)
    }

    /// Byte offset of `path` (e.g. `"f_path.dentry"`) inside `struct name`, looking through
    /// anonymous structs and unions the way C does.
    pub fn field_offset(&self, name: &str, path: &str) -> Result<u32> {
        let mut current = self.composite(name)?;
        let mut bits = 0u32;
        let mut fields = path.split('.').peekable();
        while let Some(field) = fields.next() {
            let (offset, member_type) = self
                .find_member(&current, field)?
                .ok_or_else(|| anyhow!("this kernel's `struct {name}` has no field `{path}`"))?;
            bits += offset;
            if fields.peek().is_some() {
                current = match self.skip_modifiers(member_type)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    other => bail!("`{name}.{path}`: `{field}` is a {}", other.name()),
                };
            }
        }
        if !bits.is_multiple_of(8) {
            bail!("`{name}.{path}` is a bit field");
        }
        Ok(bits / 8)
    }

    /// The named member of `s` (descending into anonymous members): bit offset and type.
    fn find_member(&self, s: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>> {
        for member in &s.members {
            let name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self
                .btf
                .resolve_chained_type(member)
                .map_err(|e| anyhow!("{e}"))?;
            if name == field {
                return Ok(Some((member.bit_offset(), member_type)));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) =
                    self.skip_modifiers(member_type)?
                {
                    if let Some((offset, t)) = self.find_member(&inner, field)? {
                        return Ok(Some((member.bit_offset() + offset, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn skip_modifiers(&self, mut t: Type) -> Result<Type> {
        for _ in 0..32 {
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let next = t
                        .as_btf_type()
                        .ok_or_else(|| anyhow!("BTF type without a target"))?;
                    t = self
                        .btf
                        .resolve_chained_type(next)
                        .map_err(|e| anyhow!("{e}"))?;
                }
                _ => return Ok(t),
            }
        }
        bail!("BTF type chain too long")
    }

    /// Ids of the types named `name` (none if there is no such type).
    pub fn ids_by_name(&self, name: &str) -> Vec<u32> {
        self.btf.resolve_ids_by_name(name).unwrap_or_default()
    }

    /// The type with id `id`.
    pub fn type_by_id(&self, id: u32) -> Option<Type> {
        self.btf.resolve_type_by_id(id).ok()
    }

    /// The value of enumerator `variant` of `enum name`.
    pub fn enum_value(&self, name: &str, variant: &str) -> Result<u64> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("this kernel's BTF has no enum named `{name}`"))?;
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok().as_deref() == Some(variant) {
                            return Ok(m.val() as u64);
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok().as_deref() == Some(variant) {
                            return Ok(m.val());
                        }
                    }
                }
                _ => {}
            }
        }
        bail!("this kernel's `enum {name}` has no value `{variant}`")
    }
}

#[cfg(test)]
mod tests {
    //! The resolver checked against `bpftool btf dump ... format raw`, an independent reading of
    //! the same kernel BTF.

    use std::{collections::HashMap, process::Command};

    use super::*;

    /// `[id] KIND 'name' ...` headers and their `'member' type_id=N bits_offset=M` lines.
    struct RawDump {
        by_name: HashMap<String, u32>,
        members: HashMap<u32, Vec<(String, u32, u32)>>,
        enum_values: HashMap<String, i64>,
    }

    fn raw_dump() -> RawDump {
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let mut dump = RawDump {
            by_name: HashMap::new(),
            members: HashMap::new(),
            enum_values: HashMap::new(),
        };
        let mut current = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ").unwrap();
                current = id.parse().unwrap();
                let mut words = rest.split(' ');
                let kind = words.next().unwrap();
                let name = words.next().unwrap_or("").trim_matches('\'');
                if matches!(kind, "STRUCT" | "UNION") {
                    dump.by_name.entry(name.to_string()).or_insert(current);
                }
            } else if let Some(member) = line.strip_prefix('\t') {
                let name = member.split('\'').nth(1).unwrap_or("").to_string();
                let field = |key: &str| {
                    member
                        .split(' ')
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse::<i64>().ok())
                };
                if let (Some(t), Some(bits)) = (field("type_id="), field("bits_offset=")) {
                    dump.members
                        .entry(current)
                        .or_default()
                        .push((name, t as u32, bits as u32));
                } else if let Some(val) = field("val=") {
                    dump.enum_values.insert(name, val);
                }
            }
        }
        dump
    }

    impl RawDump {
        /// Bit offset of `field` in type `id`, looking through `(anon)` members.
        fn bits_in(&self, id: u32, field: &str) -> Option<u32> {
            self.members.get(&id)?.iter().find_map(|(name, t, bits)| {
                if name == field {
                    Some(*bits)
                } else if name == "(anon)" {
                    self.bits_in(*t, field).map(|inner| bits + inner)
                } else {
                    None
                }
            })
        }

        /// Offset of a member, in bytes.
        fn offset(&self, strukt: &str, field: &str) -> u32 {
            self.bits_in(self.by_name[strukt], field)
                .unwrap_or_else(|| panic!("{strukt}.{field} not in bpftool's dump"))
                / 8
        }
    }

    #[test]
    fn offsets_match_bpftool() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let dump = raw_dump();
        for (strukt, field) in [
            ("task_struct", "pid"),
            ("task_struct", "tgid"),
            ("task_struct", "comm"),
            ("task_struct", "real_parent"),
            ("task_struct", "group_leader"),
            ("task_struct", "start_time"),
            ("task_struct", "thread_pid"),
            ("pid", "level"),
            ("pid", "numbers"),
            ("css_set", "dfl_cgrp"),
            ("mm_struct", "exe_file"),
        ] {
            assert_eq!(
                btf.field_offset(strukt, field).unwrap(),
                dump.offset(strukt, field),
                "{strukt}.{field}"
            );
        }
    }

    #[test]
    fn nested_and_anonymous_members() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let dump = raw_dump();
        // `file.f_path.dentry`: a named nested struct.
        assert_eq!(
            btf.field_offset("file", "f_path.dentry").unwrap(),
            dump.offset("file", "f_path") + dump.offset("path", "dentry")
        );
        // `kernel_siginfo.si_code` lives in an anonymous struct: the resolver looks through it.
        assert_eq!(
            btf.field_offset("kernel_siginfo", "si_code").unwrap(),
            dump.offset("kernel_siginfo", "si_code")
        );
    }

    #[test]
    fn enum_values_match_bpftool() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let dump = raw_dump();
        for variant in ["memory_cgrp_id", "SKB_DROP_REASON_NETFILTER_DROP"] {
            let expected = dump.enum_values[variant];
            let name = if variant.starts_with("SKB") {
                "skb_drop_reason"
            } else {
                "cgroup_subsys_id"
            };
            assert_eq!(
                btf.enum_value(name, variant).unwrap() as i64,
                expected,
                "{variant}"
            );
        }
    }

    #[test]
    fn missing_things_are_named() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let e = btf
            .field_offset("task_struct", "no_such_field")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("task_struct") && e.contains("no_such_field"),
            "{e}"
        );
        let e = btf
            .field_offset("no_such_struct", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_struct"), "{e}");
        let e = btf
            .enum_value("skb_drop_reason", "NOPE")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOPE"), "{e}");
    }
}
