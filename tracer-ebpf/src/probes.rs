//! Programs that trace nothing: `tracer doctor` loads `probe_fexit` to learn whether this
//! kernel permits fexit programs, and `cargo xtask bench` attaches the empty ones as a baseline.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};

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
