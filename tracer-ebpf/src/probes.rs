//! Programs that trace nothing: `tracer doctor` loads `probe_fexit` to learn whether this
//! kernel permits fexit programs, and `cargo xtask bench` attaches the others as baselines.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use tracer_common::{EventHeader, EventKind};

use crate::pipeline::{count_lost, header, submit, EVENTS};

#[fexit(function = "do_send_sig_info")]
pub fn probe_fexit(_ctx: FExitContext) -> i32 {
    0
}

/// Empty programs on the hooks the tracers use: the benchmark's baseline for what a program on
/// that hook costs before it does any work.
#[btf_tracepoint(function = "signal_generate")]
pub fn bench_sig(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn bench_skb(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The least any reported event costs on these hooks, whatever it describes: its header (the
/// clock) in a ring-buffer record, submitted as the tracers submit theirs. No filter: every
/// run reports.
#[btf_tracepoint(function = "signal_generate")]
pub fn bench_sig_header(_ctx: BtfTracePointContext) -> i32 {
    header_record(EventKind::Signal)
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn bench_skb_header(_ctx: BtfTracePointContext) -> i32 {
    header_record(EventKind::NetfilterDrop)
}

#[inline(always)]
fn header_record(kind: EventKind) -> i32 {
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count_lost(kind);
        return 0;
    };
    entry.write(header(kind));
    submit(entry);
    0
}
