//! The kernel's own list of network namespaces (`net_namespace_list`), with each one's
//! reference counts: the only way to see a namespace that nothing in userspace holds (an
//! orphan TCP socket keeps it, for example). No iterator or kprobe is needed: a BTF tracepoint
//! on `task_rename` walks the list when this process renames one of its threads to the name
//! it already has, and leaves the result in an array map.

use std::{
    ffi::CStr,
    os::fd::AsFd as _,
    sync::{Mutex, PoisonError},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData},
    Ebpf, Pod,
};
use serde::Serialize;
use tracer_common::netns::{
    CensusConfig, CensusEntry, CENSUS_COMPLETE_SLOT, CENSUS_LEN_SLOT, CENSUS_MAX,
};

use crate::{
    hooks::{self, Attach, Candidate, HookSpec, KernelContext, LoadOptions, Loaded},
    kernel::btf::KernelBtf,
};

/// The census's program, optional: the netns tracer attaches it with its own (`serve` and
/// `record` walk that one), a snapshot alone (`tracer netns`) loads it alone.
pub const HOOK: HookSpec = HookSpec {
    purpose: "netns census (kernel list)",
    candidates: &[Candidate {
        program: "netns_census",
        attach: Attach::TpBtf("task_rename"),
    }],
    required: false,
};

/// The kernel's reference counts of one namespace.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct KernelRefs {
    /// `net->ns.__ns_ref`: what keeps the namespace alive (processes, files, mounts, sockets
    /// and the kernel's own users); 0 once its teardown is queued. Null when this kernel's
    /// layout is unknown.
    pub refs: Option<u32>,
    /// `net->passive`: what keeps its memory alive.
    pub passive: Option<u32>,
}

/// One namespace of the kernel's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub inode: u64,
    pub cookie: u64,
    pub refs: KernelRefs,
}

impl From<CensusEntry> for Listed {
    fn from(e: CensusEntry) -> Self {
        let known = |v: u32| (v != u32::MAX).then_some(v);
        Self {
            inode: e.inum.into(),
            cookie: e.cookie,
            refs: KernelRefs {
                refs: known(e.refs),
                passive: known(e.passive),
            },
        }
    }
}

/// The settings the census program is loaded with: this process alone triggers it.
pub fn config() -> CensusConfig {
    CensusConfig {
        tgid: std::process::id(),
    }
}

const NO_MAP: &str = "the census's maps are not in the object";

/// One walk at a time in this process: the program walks at a rename of any of its threads and
/// writes the same maps, whoever asked (`--watch`'s follower, `serve`'s census thread).
static WALKING: Mutex<()> = Mutex::new(());

/// A handle of its own on the object's array `name` (a duplicated fd): each user of the run's
/// census has one, and the object keeps its own.
fn own_handle<V: Pod>(ebpf: &Ebpf, name: &str) -> Result<Array<MapData, V>> {
    let Some(Map::Array(data)) = ebpf.map(name) else {
        bail!(NO_MAP);
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating a census map's fd")?;
    Ok(Array::try_from(Map::Array(MapData::from_fd(fd)?))?)
}

/// The census: its program's maps, read after each walk. The program is loaded once per run
/// and walks again at each rename: by the session's object when the netns tracer is part of
/// the run (`--watch`, `serve`, `record` each adopt it), by an object of its own for a snapshot
/// alone (`tracer netns`).
pub struct KernelCensus {
    lens: Array<MapData, u32>,
    entries: Array<MapData, CensusEntry>,
    /// The object loaded for the census alone, if it was; dropping it detaches the program.
    _own: Option<Loaded>,
}

impl KernelCensus {
    /// Loads the program for the census alone, for this process only. Fails, saying why,
    /// where this kernel refuses it.
    pub fn load() -> Result<Self> {
        let btf = KernelBtf::from_sys_fs()?;
        let kernel = KernelContext::new(&btf, &[HOOK])?;
        drop(btf);
        let config = config();
        let ebpf = hooks::open(
            &kernel,
            LoadOptions {
                ring_buffer_bytes: 4096,
                globals: vec![("NETNS_CENSUS_CONFIG", (&config).into())],
            },
        )?;
        let loaded = hooks::attach(ebpf, &[HOOK], &kernel);
        if let Some(outcome) = loaded.outcomes.iter().find(|o| o.used.is_none()) {
            bail!("{}", outcome.reasons());
        }
        let mut census = Self::adopt(&loaded.ebpf)?;
        census._own = Some(loaded);
        Ok(census)
    }

    /// The census of a run's object, whose netns tracer loaded and attached the program (with
    /// [`config`]): handles of its own on the maps; the program stays the object's (detached
    /// with it).
    pub fn adopt(ebpf: &Ebpf) -> Result<Self> {
        let program = HOOK.candidates[0].program;
        ebpf.program(program)
            .and_then(|p| p.fd().ok())
            .with_context(|| {
                format!("{program} is not loaded (`tracer doctor` shows the census hook's status)")
            })?;
        Ok(Self {
            lens: own_handle(ebpf, "NETNS_CENSUS_LEN")?,
            entries: own_handle(ebpf, "NETNS_CENSUS")?,
            _own: None,
        })
    }

    /// Every namespace on the kernel's list now.
    pub fn walk(&mut self) -> Result<Vec<Listed>> {
        let _alone = WALKING.lock().unwrap_or_else(PoisonError::into_inner);
        // A stale result must not pass for a fresh one.
        self.lens.set(CENSUS_LEN_SLOT, 0, 0)?;
        self.lens.set(CENSUS_COMPLETE_SLOT, 0, 0)?;
        rename_to_same_name()?;
        let len = self.lens.get(&CENSUS_LEN_SLOT, 0)?;
        if len == 0 {
            // It knows this process by its pid in the initial pid namespace.
            bail!(
                "the census program did not run when this thread was renamed (run the tracer \
                 in the host's pid namespace: hostPID in a pod)"
            );
        }
        if self.lens.get(&CENSUS_COMPLETE_SLOT, 0)? != 1 {
            bail!(
                "the kernel's namespace list could not be read whole ({len} read, at most \
                 {CENSUS_MAX})"
            );
        }
        (0..len)
            .map(|i| Ok(Listed::from(self.entries.get(&i, 0)?)))
            .collect()
    }
}

/// Renames the calling thread to the name it has: `task_rename` fires (the kernel does not
/// compare), nothing changes.
fn rename_to_same_name() -> Result<()> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_GET_NAME)");
    }
    let name = CStr::from_bytes_until_nul(&name).context("thread name without NUL")?;
    // SAFETY: a NUL-terminated name of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    Ok(())
}
