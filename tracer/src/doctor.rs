//! `tracer doctor`: what this kernel supports, and which hook each tracer will use.

use std::process::ExitCode;

use anyhow::Result;

use crate::{
    enrich::identity::Identities,
    hooks::{self, KernelContext, LoadOptions},
    kernel::{
        btf::{KernelBtf, VMLINUX_BTF},
        offsets, preflight,
    },
    tracers::{Tracer, TracerOptions, REGISTRY},
};

fn line(what: &str, ok: bool, detail: &str) {
    println!("  {what:<30} {:<4} {detail}", if ok { "ok" } else { "no" });
}

fn detail<T>(result: &Result<T>, ok: &str) -> String {
    result
        .as_ref()
        .map_or_else(|e| format!("{e:#}"), |_| ok.to_string())
}

/// Prints the report. Exit 0 when every tracer has a usable path and containers can be named,
/// 1 when not, 2 when nothing can run (no privilege, no BTF).
pub fn run() -> Result<ExitCode> {
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown".into());
    println!("kernel: {kernel}");
    println!("basics:");
    let privileges = preflight::require_privileges();
    line(
        "privileges",
        privileges.is_ok(),
        &detail(&privileges, "can load eBPF programs"),
    );
    let btf = KernelBtf::from_sys_fs();
    line("kernel BTF", btf.is_ok(), &detail(&btf, VMLINUX_BTF));
    let (Ok(()), Ok(btf)) = (privileges, btf) else {
        println!("tracer cannot run here: fix the lines marked `no` above");
        return Ok(ExitCode::from(2));
    };
    let layout = offsets::resolve(&btf);
    line(
        "struct layout from BTF",
        layout.is_ok(),
        &detail(&layout, "every required field found"),
    );
    let Ok(_) = layout else {
        println!("tracer cannot run here: fix the lines marked `no` above");
        return Ok(ExitCode::from(2));
    };
    let identities = Identities::new();
    // Each on its own: one that cannot be built does not hide the others.
    let tracers: Vec<(&str, Result<Box<dyn Tracer>>)> = REGISTRY
        .iter()
        .map(|r| {
            (
                r.name,
                (r.make)(&btf, &identities, &TracerOptions::default()),
            )
        })
        .collect();
    let hooks: Vec<_> = tracers
        .iter()
        .filter_map(|(_, t)| t.as_ref().ok())
        .flat_map(|t| t.hooks())
        .collect();
    let kernel = KernelContext::new(&btf, &hooks)?;
    drop(btf);

    println!("program types:");
    for probe in hooks::probe_features(&kernel) {
        line(probe.feature, probe.available, &probe.detail);
    }

    let mut all_usable = true;
    for (name, tracer) in tracers {
        let tracer = match tracer {
            Ok(tracer) => tracer,
            Err(e) => {
                println!("tracer `{name}` cannot start: {e:#}");
                all_usable = false;
                continue;
            }
        };
        println!("tracer `{}`:", tracer.name());
        let ebpf = hooks::open(
            &kernel,
            LoadOptions {
                ring_buffer_bytes: 4096,
                globals: tracer.globals(),
            },
        )?;
        // Attaching for real (and detaching when `loaded` drops) is the only reliable test of
        // what this kernel accepts.
        let loaded = hooks::attach(ebpf, &tracer.hooks(), &kernel);
        for outcome in &loaded.outcomes {
            let purpose = outcome.spec.purpose;
            match outcome.used {
                Some(attach) => {
                    let program = outcome
                        .spec
                        .candidates
                        .iter()
                        .find(|c| c.attach == attach)
                        .map_or("?", |c| c.program);
                    line(
                        purpose,
                        true,
                        &format!("using {attach} (program {program})"),
                    )
                }
                None => {
                    all_usable &= !outcome.spec.required;
                    let kind = if outcome.spec.required {
                        "required"
                    } else {
                        "optional"
                    };
                    line(purpose, false, &format!("{kind}; {}", outcome.reasons()));
                }
            }
            for (attach, why) in outcome.rejected.iter().filter(|_| outcome.used.is_some()) {
                println!("  {:<30}      not using {attach}: {why}", "");
            }
        }
    }
    println!("identity:");
    let status = identities.lock().status();
    let dirs: Vec<String> = status
        .state_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    line(
        "runtime state",
        !dirs.is_empty(),
        &if dirs.is_empty() {
            "no runtime's state directory found".to_string()
        } else {
            dirs.join(", ")
        },
    );
    let verdict = status.verdict();
    all_usable &= verdict.is_ok();
    line(
        "containers and pods",
        verdict.is_ok(),
        verdict.as_ref().unwrap_or_else(|e| e),
    );
    Ok(if all_usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
