//! Loading the kernel programs and attaching them: each tracer names the hooks it needs, each
//! with its candidates in order of preference; the first candidate this kernel accepts is used,
//! and what happened to the others is kept for `tracer doctor` and `--verbose`.

use std::{collections::HashMap, fmt, path::Path};

use anyhow::{anyhow, Result};
use aya::{
    programs::{
        kprobe::KProbeError, trace_point::TracePointError, BtfTracePoint, FExit, Program,
        ProgramError, TracePoint,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};

use tracer_common::offsets::KernelOffsets;

use crate::kernel::{
    btf::{KernelBtf, NamedKind},
    kfuncs, offsets, preflight,
};

/// The function `tracer doctor`'s fexit probe attaches to.
const FEXIT_PROBE_TARGET: &str = "do_send_sig_info";

/// The compiled kernel programs (tracer-ebpf), embedded at build time (see build.rs).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// Ring buffer shared by all programs.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU counts of records that did not fit in the ring buffer, by event kind.
pub const LOST_MAP: &str = "LOST";

/// How a program attaches to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// BTF-typed raw tracepoint (`tp_btf/<name>`): typed arguments, no record fill.
    TpBtf(&'static str),
    /// Classic tracepoint (`tracepoint/<category>/<name>`), attached through tracefs.
    TracePoint(&'static str, &'static str),
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attach::TpBtf(name) => write!(f, "tp_btf:{name}"),
            Attach::TracePoint(category, name) => write!(f, "tracepoint:{category}:{name}"),
        }
    }
}

/// One way to provide a hook: a program of the object and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub program: &'static str,
    pub attach: Attach,
}

/// Something a tracer needs from the kernel, with the ways to get it, best first.
#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    /// What the hook is for, in a few words ("signal generation").
    pub purpose: &'static str,
    pub candidates: &'static [Candidate],
    /// A tracer without a required hook cannot run; an optional one only loses detail.
    pub required: bool,
}

/// What happened when a hook was attached.
pub struct HookOutcome {
    pub spec: HookSpec,
    /// The candidate in use, if any.
    pub used: Option<Attach>,
    /// Candidates that failed, with the reason.
    pub rejected: Vec<(Attach, String)>,
}

/// The loaded object and its attached programs. Dropping it detaches everything: programs
/// are never pinned, so nothing outlives the process.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub outcomes: Vec<HookOutcome>,
}

/// Settings every run shares, and each tracer's globals.
pub struct LoadOptions<'a> {
    pub ring_buffer_bytes: u32,
    /// `(global name, bytes)` pairs, e.g. the tracers' filters.
    pub globals: Vec<(&'static str, aya::GlobalData<'a>)>,
}

/// What loading needs from the running kernel's BTF: the struct offsets the programs read, and
/// the ids of the types `tp_btf` and `fexit` programs attach to (`btf_trace_<tracepoint>` or
/// the function), by name. The `KernelBtf` can be dropped once this is built.
pub struct KernelContext {
    offsets: KernelOffsets,
    attach_ids: HashMap<String, u32>,
    /// The kfunc `bpf_rdonly_cast`'s id (6.2+), written into the programs' calls to it.
    rdonly_cast_id: Option<u32>,
}

impl KernelContext {
    pub fn new(btf: &KernelBtf, hooks: &[HookSpec]) -> Result<Self> {
        let mut targets: Vec<(String, NamedKind)> = hooks
            .iter()
            .flat_map(|spec| spec.candidates)
            .filter_map(|c| match c.attach {
                Attach::TpBtf(name) => Some((tracepoint_type(name), NamedKind::Typedef)),
                Attach::TracePoint(..) => None,
            })
            .collect();
        targets.push((FEXIT_PROBE_TARGET.to_string(), NamedKind::Func));
        let mut attach_ids = HashMap::new();
        for (name, kind) in targets {
            // A name this kernel lacks is left out, and its program fails to load (see
            // `attach_id`).
            if let Some(id) = btf.id_of(&name, kind)? {
                attach_ids.insert(name, id);
            }
        }
        let kernel = Self {
            offsets: offsets::resolve(btf)?,
            attach_ids,
            rdonly_cast_id: btf.id_of("bpf_rdonly_cast", NamedKind::Func)?,
        };
        // Every command asks the BTF its last question here.
        btf.remember();
        Ok(kernel)
    }

    /// The kernel BTF id of `type_name`, looked up in `new`.
    fn attach_id(&self, type_name: &str) -> Result<u32> {
        self.attach_ids
            .get(type_name)
            .copied()
            .ok_or_else(|| anyhow!("not found in this kernel (its BTF has no {type_name})"))
    }
}

/// The typedef a `tp_btf` program for `tracepoint` attaches to.
fn tracepoint_type(tracepoint: &str) -> String {
    format!("btf_trace_{tracepoint}")
}

/// Opens the object with this kernel's offsets and the given globals.
pub fn open(kernel: &KernelContext, options: LoadOptions<'_>) -> Result<Ebpf> {
    preflight::raise_memlock_limit();
    // No BTF for relocations: the programs have none (aya has no CO-RE for Rust programs;
    // offsets come from OFFSETS). `EbpfLoader::new` would parse the whole kernel BTF anyway:
    // 12 of the 57 ms `signals --pid` took to start (strace).
    let mut loader = EbpfLoader::with_btf(None);
    loader
        .override_global("OFFSETS", &kernel.offsets, true)
        .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes);
    for (name, value) in options.globals {
        loader.override_global(name, value, true);
    }
    loader.load(&kfuncs::resolve(EBPF_OBJECT, kernel.rdonly_cast_id)?).map_err(|e| {
        anyhow!(e).context("creating the tracer's eBPF maps (is this kernel older than 5.8, without ring buffers?)")
    })
}

/// Attaches one program per spec, trying candidates in order, and records what happened.
pub fn attach(ebpf: Ebpf, specs: &[HookSpec], kernel: &KernelContext) -> Loaded {
    let mut loaded = Loaded {
        ebpf,
        outcomes: Vec::new(),
    };
    let mut preloaded = preload(&mut loaded.ebpf, specs, kernel);
    for spec in specs {
        let outcome = attach_one(&mut loaded.ebpf, *spec, kernel, &mut preloaded);
        loaded.outcomes.push(outcome);
    }
    loaded
}

/// Loads every spec's first candidate at once, a thread each: the kernel verifies programs
/// independently of each other, and verifying is most of a start-up (`signal_generate` and
/// `mark_victim` took 19 and 9 ms one after the other). What each load gave is kept for
/// [`attach_candidate`]; later candidates are loaded only if needed.
fn preload(
    ebpf: &mut Ebpf,
    specs: &[HookSpec],
    kernel: &KernelContext,
) -> HashMap<&'static str, Result<()>> {
    let firsts: HashMap<&str, Attach> = specs
        .iter()
        .filter_map(|spec| spec.candidates.first())
        .map(|c| (c.program, c.attach))
        .collect();
    std::thread::scope(|scope| {
        let loads: Vec<_> = ebpf
            .programs_mut()
            .filter_map(|(name, program)| {
                let (&name, &attach) = firsts.get_key_value(name)?;
                Some((name, scope.spawn(move || load(program, attach, kernel))))
            })
            .collect();
        loads
            .into_iter()
            .map(|(name, load)| {
                let loaded = load
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("loading {name} panicked")));
                (name, loaded)
            })
            .collect()
    })
}

impl HookOutcome {
    /// Every candidate's reason for failing, on one line.
    pub fn reasons(&self) -> String {
        self.rejected
            .iter()
            .map(|(a, why)| format!("{a}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Loaded {
    /// Fails if a required hook has no usable candidate, naming every reason; warns about
    /// optional hooks that are missing.
    pub fn require_usable(self) -> Result<Self> {
        for outcome in self.outcomes.iter().filter(|o| o.used.is_none()) {
            if outcome.spec.required {
                return Err(anyhow!(
                    "this kernel offers no hook for {} ({}); `tracer doctor` shows every hook's status",
                    outcome.spec.purpose,
                    outcome.reasons()
                ));
            }
            log::warn!(
                "no hook for {} on this kernel ({}); continuing without it",
                outcome.spec.purpose,
                outcome.reasons()
            );
        }
        Ok(self)
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    spec: HookSpec,
    kernel: &KernelContext,
    preloaded: &mut HashMap<&'static str, Result<()>>,
) -> HookOutcome {
    let mut outcome = HookOutcome {
        spec,
        used: None,
        rejected: Vec::new(),
    };
    for candidate in spec.candidates {
        match attach_candidate(ebpf, candidate, kernel, preloaded.remove(candidate.program)) {
            Ok(()) => {
                outcome.used = Some(candidate.attach);
                break;
            }
            Err(e) => outcome.rejected.push((candidate.attach, format!("{e:#}"))),
        }
    }
    outcome
}

/// Attaches `candidate`'s program, loading it first unless `preloaded` says how its load went.
fn attach_candidate(
    ebpf: &mut Ebpf,
    candidate: &Candidate,
    kernel: &KernelContext,
    preloaded: Option<Result<()>>,
) -> Result<()> {
    let program = ebpf
        .program_mut(candidate.program)
        .ok_or_else(|| anyhow!("program {} is not in the object", candidate.program))?;
    match preloaded {
        Some(loaded) => loaded?,
        None => load(program, candidate.attach, kernel)?,
    }
    match candidate.attach {
        Attach::TpBtf(_) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.attach().map_err(explain)?;
        }
        Attach::TracePoint(category, name) => {
            let program: &mut TracePoint = program.try_into()?;
            program.attach(category, name).map_err(explain)?;
        }
    }
    Ok(())
}

/// Loads `program` (the kernel verifies it) for attaching at `attach`.
fn load(program: &mut Program, attach: Attach, kernel: &KernelContext) -> Result<()> {
    match attach {
        Attach::TpBtf(name) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program
                .load_by_id(kernel.attach_id(&tracepoint_type(name))?)
                .map_err(explain)?;
        }
        Attach::TracePoint(..) => {
            preflight::ensure_tracefs()?;
            let program: &mut TracePoint = program.try_into()?;
            program.load().map_err(explain)?;
        }
    }
    Ok(())
}

/// The errno the kernel answered a load or attach with, where the error carries one.
fn errno_of(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::LoadError { io_error, .. }
        | ProgramError::SyscallError(SyscallError { io_error, .. })
        | ProgramError::TracePointError(TracePointError::FileError { io_error, .. })
        | ProgramError::KProbeError(KProbeError::FileError { io_error, .. }) => {
            io_error.raw_os_error()
        }
        _ => None,
    }
}

/// Turns the common load and attach errors into what they mean, by their errno.
fn explain(e: ProgramError) -> anyhow::Error {
    match (errno_of(&e), &e) {
        (Some(libc::EPERM), _) => {
            anyhow!(
                "not permitted (EPERM): the kernel (lockdown or an LSM) refuses this program type"
            )
        }
        (Some(libc::ENOENT), _) => anyhow!("not found in this kernel (ENOENT)"),
        (
            _,
            ProgramError::LoadError {
                io_error,
                verifier_log,
            },
        ) => {
            // The whole verifier log can be thousands of lines; its end says what failed.
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(4).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow!(
                "the verifier rejected the program ({io_error}): {}",
                tail.join(" | ")
            )
        }
        (Some(libc::EINVAL), _) => {
            anyhow!("this kernel does not support attaching it here (EINVAL): {e}")
        }
        _ => anyhow!(e),
    }
}

/// A benchmark's program on a tracer's hook (named by its tracepoint).
macro_rules! bench_hook {
    ($tracepoint:literal, $program:literal) => {
        HookSpec {
            purpose: $tracepoint,
            candidates: &[Candidate {
                program: $program,
                attach: Attach::TpBtf($tracepoint),
            }],
            required: true,
        }
    };
}

/// Empty programs on the tracers' hooks, for `cargo xtask bench` (`tracer bench-hook`): what a
/// program there costs before it does any work.
pub const EMPTY_HOOKS: &[HookSpec] = &[
    bench_hook!("signal_generate", "bench_sig"),
    bench_hook!("kfree_skb", "bench_skb"),
];

/// Programs on the same hooks writing only an event's header into the ring buffer
/// (`tracer bench-hook --header-record`): the least any reported event costs there.
pub const HEADER_HOOKS: &[HookSpec] = &[
    bench_hook!("signal_generate", "bench_sig_header"),
    bench_hook!("kfree_skb", "bench_skb_header"),
];

/// Kernel features the tracers could use, probed for `tracer doctor`.
pub struct FeatureProbe {
    pub feature: &'static str,
    pub available: bool,
    pub detail: String,
}

/// Probes the attachment methods this build knows, whether or not a tracer uses them yet, so
/// that `doctor` can say why a faster hook is not used.
pub fn probe_features(kernel: &KernelContext) -> Vec<FeatureProbe> {
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let mut probes = vec![FeatureProbe {
        feature: "kprobe",
        available: kprobe_pmu.exists(),
        detail: if kprobe_pmu.exists() {
            "kprobe PMU present".into()
        } else {
            format!(
                "{} is missing: kernel built without CONFIG_KPROBES",
                kprobe_pmu.display()
            )
        },
    }];
    let fexit = match open(
        kernel,
        LoadOptions {
            ring_buffer_bytes: 4096,
            globals: Vec::new(),
        },
    )
    .and_then(|mut ebpf| probe_fexit(&mut ebpf, kernel))
    {
        Ok(()) => FeatureProbe {
            feature: "fentry/fexit",
            available: true,
            detail: "a test fexit program loaded".into(),
        },
        Err(e) => FeatureProbe {
            feature: "fentry/fexit",
            available: false,
            detail: format!("{e:#}"),
        },
    };
    probes.push(fexit);
    let tracefs = preflight::ensure_tracefs();
    probes.push(FeatureProbe {
        feature: "tracepoint",
        available: tracefs.is_ok(),
        detail: match tracefs {
            Ok(()) => format!("tracefs at {}", preflight::TRACEFS),
            Err(e) => format!("{e:#}"),
        },
    });
    probes
}

fn probe_fexit(ebpf: &mut Ebpf, kernel: &KernelContext) -> Result<()> {
    let program: &mut FExit = ebpf
        .program_mut("probe_fexit")
        .ok_or_else(|| anyhow!("probe_fexit is not in the object"))?
        .try_into()?;
    program
        .load_by_id(kernel.attach_id(FEXIT_PROBE_TARGET)?)
        .map_err(explain)?;
    Ok(())
}

#[cfg(test)]
mod explain_tests {
    use std::io;

    use super::*;

    fn syscall(errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn errors_are_explained_by_their_errno() {
        let said = |e: ProgramError| format!("{:#}", explain(e));
        assert!(said(syscall(libc::EPERM)).starts_with("not permitted (EPERM)"));
        assert!(said(syscall(libc::EINVAL)).contains("(EINVAL)"));
        let missing = ProgramError::TracePointError(TracePointError::FileError {
            filename: "/sys/kernel/tracing/events/x/y/id".into(),
            io_error: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(said(missing).starts_with("not found in this kernel"));
        let refused = ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(libc::EPERM),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        assert!(said(refused).starts_with("not permitted (EPERM)"));
        let rejected = ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(
                "0: (b7) r0 = 0\n1: (95) exit\nR1 invalid mem access 'scalar'\nprocessed 2 insns"
                    .into(),
            ),
        };
        let text = said(rejected);
        assert!(
            text.starts_with("the verifier rejected the program"),
            "{text}"
        );
        assert!(
            text.ends_with("R1 invalid mem access 'scalar' | processed 2 insns"),
            "{text}"
        );
        // An errno the kernel did not give (a message that merely mentions one) is not taken.
        let other = said(ProgramError::NotLoaded);
        assert!(!other.contains("EPERM"), "{other}");
    }
}

#[cfg(test)]
mod attach_id_tests {
    use aya_obj::btf::BtfKind;

    use super::*;

    /// The ids programs are loaded by are the ones aya's own lookup by name finds in the
    /// whole kernel BTF.
    #[test]
    fn attach_ids_are_what_aya_finds_by_name() {
        let btf = KernelBtf::from_file(Path::new(crate::kernel::btf::VMLINUX_BTF));
        let spec = HookSpec {
            purpose: "test",
            candidates: &[Candidate {
                program: "signal_generate",
                attach: Attach::TpBtf("signal_generate"),
            }],
            required: true,
        };
        let kernel = KernelContext::new(&btf, &[spec]).unwrap();
        let full = aya::Btf::from_sys_fs().unwrap();
        for (name, kind) in [
            ("btf_trace_signal_generate", BtfKind::Typedef),
            (FEXIT_PROBE_TARGET, BtfKind::Func),
        ] {
            assert_eq!(
                kernel.attach_id(name).unwrap(),
                full.id_by_type_name_kind(name, kind).unwrap(),
                "{name}"
            );
        }
        let missing = kernel
            .attach_id("btf_trace_no_such_tracepoint")
            .unwrap_err();
        assert!(format!("{missing}").starts_with("not found in this kernel"));
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    /// Every way of providing the signals and conntrack tracers' hooks verifies on this
    /// kernel (6.18, which has every helper and kfunc they use), the fallbacks for older
    /// kernels included: a fallback is otherwise never loaded here. With the configuration a
    /// run gives them: what the verifier walks depends on it (sizes to copy, options on).
    #[test]
    fn every_candidate_loads() {
        let specs = [
            crate::tracers::signals::HOOKS,
            crate::tracers::conntrack::HOOKS,
        ]
        .concat();
        let btf = KernelBtf::from_file(Path::new(crate::kernel::btf::VMLINUX_BTF));
        let kernel = KernelContext::new(&btf, &specs).unwrap();
        // Every option on: a namespace filter and the drop's stack.
        let (conntrack, ..) =
            crate::tracers::conntrack::kernel_config(&btf, Some(1), true).unwrap();
        for candidate in specs.iter().flat_map(|spec| spec.candidates) {
            let options = LoadOptions {
                ring_buffer_bytes: 4096,
                globals: vec![("CONNTRACK_CONFIG", (&conntrack).into())],
            };
            let mut ebpf = open(&kernel, options).unwrap();
            let program = ebpf.program_mut(candidate.program).unwrap();
            load(program, candidate.attach, &kernel)
                .unwrap_or_else(|e| panic!("{}: {e:#}", candidate.program));
        }
    }
}
