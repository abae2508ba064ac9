//! Struct layouts, enum values and type ids of the running kernel, read from its BTF.
//!
//! Every answer is kept in a [`Facts`] map, which `kernel::fact_cache` keeps between runs for
//! the same BTF: a start whose questions were all answered before parses nothing.

use std::{
    cell::{Cell, OnceCell, RefCell},
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Backend, Btf, Type};

use super::{
    btf_names::NameIndex,
    fact_cache::{Answer, Cache, Facts, Identity, BTF_FILE},
};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A kind of named type whose ids can be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedKind {
    Typedef,
    Func,
    Struct,
}

/// The bytes of `path`: mapped where the kernel allows it (6.16+ maps its BTF), else read.
/// Read, sysfs hands out a page per call: 1,350 calls for 5.5 MiB, about 2 of the 3 ms the
/// identity of a warm start took (strace).
fn read_or_map(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the kernel's BTF is read-only and never changes while the system runs. The
    // kernel maps it only privately and read-only.
    match unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) } {
        Ok(map) => Ok(Bytes::Mapped(map)),
        Err(_) => std::fs::read(path).map(Bytes::Read),
    }
}

/// A file's bytes, mapped or read.
enum Bytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Read(bytes) => bytes,
        }
    }
}

/// The kernel's type information, queried by name.
pub struct KernelBtf {
    path: PathBuf,
    /// Parsed on the first question the facts do not answer.
    btf: OnceCell<Btf>,
    /// Its types by name (see `btf_names`), indexed with the parse; `None` inside if the
    /// blob could not be indexed (btf-rs's own search is used then).
    names: OnceCell<Option<NameIndex>>,
    /// Structs found so far, by name: each is parsed with its members, once.
    structs: RefCell<HashMap<String, btf_rs::Struct>>,
    facts: RefCell<Facts>,
    /// Whether `facts` holds answers the cache does not have yet.
    learned: Cell<bool>,
    cache: Option<Cache>,
}

impl KernelBtf {
    /// The running kernel's BTF, with the answers cached for it (see `kernel::fact_cache`), or
    /// says what is missing.
    pub fn from_sys_fs() -> Result<Self> {
        let path = Path::new(VMLINUX_BTF);
        let bytes = read_or_map(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "{VMLINUX_BTF} does not exist: this kernel was built without BTF \
                     (CONFIG_DEBUG_INFO_BTF=y is needed); tracer cannot read its struct layouts"
                )
            } else {
                anyhow!(e).context(format!("reading {VMLINUX_BTF}"))
            }
        })?;
        Ok(Self::with_cache(
            path,
            Cache::configured(BTF_FILE, Identity::of(&bytes)),
        ))
    }

    /// The BTF in `path`, with the answers `cache` has for it.
    pub fn with_cache(path: &Path, cache: Option<Cache>) -> Self {
        let mut btf = Self::from_file(path);
        if let Some(cache) = cache {
            match cache.load() {
                Ok(facts) => {
                    log::info!(
                        "kernel BTF: {} facts from the cache {}",
                        facts.len(),
                        cache.path().display()
                    );
                    btf.facts = RefCell::new(facts);
                }
                Err(e) => log::info!("kernel BTF: cache not used: {e:#}"),
            }
            btf.cache = Some(cache);
        }
        btf
    }

    /// The BTF in `path`, without a cache.
    pub fn from_file(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            btf: OnceCell::new(),
            names: OnceCell::new(),
            structs: RefCell::new(HashMap::new()),
            facts: RefCell::new(Facts::new()),
            learned: Cell::new(false),
            cache: None,
        }
    }

    /// Writes the answers learned in this run to the cache, for the next start.
    pub fn remember(&self) {
        let Some(cache) = self.cache.as_ref().filter(|_| self.learned.get()) else {
            return;
        };
        match cache.store(&self.facts.borrow()) {
            Ok(()) => log::info!("kernel BTF: facts written to {}", cache.path().display()),
            Err(e) => log::info!("kernel BTF: facts not cached: {e:#}"),
        }
    }

    /// The parsed BTF. Maps the file where the kernel allows it (no up-front parse of every
    /// type: faster and smaller), else reads and parses it.
    fn btf(&self) -> Result<&Btf> {
        if let Some(btf) = self.btf.get() {
            return Ok(btf);
        }
        // The names first, their bytes let go before btf-rs maps the file (both at once would
        // count twice in the peak RSS).
        let names = read_or_map(&self.path)
            .map_err(anyhow::Error::from)
            .and_then(|raw| NameIndex::build(&raw))
            .inspect_err(|e| log::info!("kernel BTF: names not indexed: {e:#}"))
            .ok();
        let _ = self.names.set(names);
        let parsed = Btf::from_file_with_backend(&self.path, Backend::Mmap)
            .or_else(|_| Btf::from_file(&self.path))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading BTF from {}", self.path.display()))?;
        Ok(self.btf.get_or_init(|| parsed))
    }

    /// The types named `name` with their ids, lowest id first: each candidate the name index
    /// gives is parsed once, to check its name.
    fn named(&self, name: &str) -> Result<Vec<(u32, Type)>> {
        let btf = self.btf()?;
        let resolve = |id: u32| btf.resolve_type_by_id(id).ok().map(|ty| (id, ty));
        let Some(index) = self.names.get().and_then(Option::as_ref) else {
            let ids = btf.resolve_ids_by_name(name).unwrap_or_default();
            return ids
                .into_iter()
                .map(|id| resolve(id).ok_or_else(|| anyhow!("type {id} of `{name}` unreadable")))
                .collect();
        };
        Ok(index
            .candidates(name)
            .filter_map(resolve)
            .filter(|(_, ty)| {
                ty.as_btf_type()
                    .and_then(|t| btf.resolve_name(t).ok())
                    .as_deref()
                    == Some(name)
            })
            .collect())
    }

    /// The ids of the types named `name`, lowest first.
    fn ids_named(&self, name: &str) -> Result<Vec<u32>> {
        Ok(self.named(name)?.into_iter().map(|(id, _)| id).collect())
    }

    /// The types named `name`.
    fn types_named(&self, name: &str) -> Result<Vec<Type>> {
        Ok(self.named(name)?.into_iter().map(|(_, ty)| ty).collect())
    }

    /// The answer to `question`: from the facts, else found in the BTF by `find` (whose
    /// error means the BTF has no such thing) and added to the facts.
    fn answer(
        &self,
        question: String,
        find: impl FnOnce(&Self) -> Result<Answer>,
    ) -> Result<Answer> {
        if let Some(known) = self.facts.borrow().get(&question) {
            return Ok(known.clone());
        }
        self.btf()?;
        let answer = find(self).unwrap_or_else(|e| Answer::Missing(format!("{e:#}")));
        self.facts.borrow_mut().insert(question, answer.clone());
        self.learned.set(true);
        Ok(answer)
    }

    /// A value answer as a `T`.
    fn value<T: TryFrom<u64>>(answer: Answer) -> Result<T> {
        match answer {
            Answer::Value(v) => T::try_from(v).map_err(|_| anyhow!("BTF value {v} out of range")),
            Answer::Missing(why) => Err(anyhow!(why)),
            Answer::Ids(_) | Answer::Range(..) => bail!("BTF answer of the wrong kind"),
        }
    }

    /// The struct or union named `name`.
    fn composite(&self, name: &str) -> Result<btf_rs::Struct> {
        if let Some(s) = self.structs.borrow().get(name) {
            return Ok(s.clone());
        }
        let found = self
            .types_named(name)?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("this kernel's BTF has no struct named `{name}`"))?;
        self.structs
            .borrow_mut()
            .insert(name.to_string(), found.clone());
        Ok(found)
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        Self::value(self.answer(format!("size {name}"), |k| {
            Ok(Answer::Value(k.composite(name)?.size() as u64))
        })?)
    }

    /// Byte offset of `path` (e.g. `"f_path.dentry"`) inside `struct name`, looking through
    /// anonymous structs and unions the way C does.
    pub fn field_offset(&self, name: &str, path: &str) -> Result<u32> {
        Self::value(self.answer(format!("offset {name} {path}"), |k| {
            k.find_offset(name, path).map(|v| Answer::Value(v.into()))
        })?)
    }

    fn find_offset(&self, name: &str, path: &str) -> Result<u32> {
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
            let name = self.btf()?.resolve_name(member).unwrap_or_default();
            let member_type = self
                .btf()?
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
                        .btf()?
                        .resolve_chained_type(next)
                        .map_err(|e| anyhow!("{e}"))?;
                }
                _ => return Ok(t),
            }
        }
        bail!("BTF type chain too long")
    }

    /// Ids of the types of `kind` named `name` (none if there is no such type).
    pub fn ids_of(&self, name: &str, kind: NamedKind) -> Result<Vec<u32>> {
        let question = format!("ids {kind:?} {name}");
        match self.answer(question, |k| {
            let btf = k.btf()?;
            let ids = k.ids_named(name)?;
            Ok(Answer::Ids(
                ids.into_iter()
                    .filter(|&id| {
                        matches!(
                            (btf.resolve_type_by_id(id), kind),
                            (Ok(Type::Typedef(_)), NamedKind::Typedef)
                                | (Ok(Type::Func(_)), NamedKind::Func)
                                | (Ok(Type::Struct(_)), NamedKind::Struct)
                        )
                    })
                    .collect(),
            ))
        })? {
            Answer::Ids(ids) => Ok(ids),
            _ => bail!("BTF answer of the wrong kind"),
        }
    }

    /// The lowest id of the types of `kind` named `name` (the one a lookup by name finds
    /// first), if there is one.
    pub fn id_of(&self, name: &str, kind: NamedKind) -> Result<Option<u32>> {
        Ok(self.ids_of(name, kind)?.into_iter().min())
    }

    /// The value of enumerator `variant` of `enum name`.
    pub fn enum_value(&self, name: &str, variant: &str) -> Result<u64> {
        Self::value(self.answer(format!("enum {name} {variant}"), |k| {
            k.find_enum_value(name, variant).map(Answer::Value)
        })?)
    }

    fn find_enum_value(&self, name: &str, variant: &str) -> Result<u64> {
        let btf = self.btf()?;
        let types = self.types_named(name)?;
        if types.is_empty() {
            bail!("this kernel's BTF has no enum named `{name}`");
        }
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if btf.resolve_name(m).ok().as_deref() == Some(variant) {
                            return Ok(m.val() as u64);
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if btf.resolve_name(m).ok().as_deref() == Some(variant) {
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
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF));
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
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF));
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
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF));
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

    /// Every question the tracers ask at start-up (the offsets, and an absent field).
    fn ask_everything(btf: &KernelBtf) -> String {
        let offsets = crate::kernel::offsets::resolve(btf).unwrap();
        let ids = btf
            .ids_of("btf_trace_signal_generate", NamedKind::Typedef)
            .unwrap();
        let missing = btf.field_offset("task_struct", "no_such_field");
        format!("{offsets:?} {ids:?} {missing:?}")
    }

    #[test]
    fn a_cached_start_answers_as_a_parse_does_without_parsing() {
        let dir = std::env::temp_dir().join(format!("tracer-btf-facts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = std::fs::read(VMLINUX_BTF).unwrap();
        let cache = || Some(Cache::in_dir(dir.clone(), BTF_FILE, Identity::of(&bytes)));
        let cold = KernelBtf::with_cache(Path::new(VMLINUX_BTF), cache());
        let parsed = ask_everything(&cold);
        cold.remember();
        let warm = KernelBtf::with_cache(Path::new(VMLINUX_BTF), cache());
        let cached = ask_everything(&warm);
        let parsed_nothing = warm.btf.get().is_none();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(cached, parsed);
        assert!(parsed_nothing);
        assert!(!warm.learned.get());
    }

    #[test]
    fn missing_things_are_named() {
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF));
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
