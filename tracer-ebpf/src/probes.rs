//! Programs that are never attached: `tracer doctor` loads them to learn whether this kernel
//! permits a program type.

use aya_ebpf::{macros::fexit, programs::FExitContext};

#[fexit(function = "do_send_sig_info")]
pub fn probe_fexit(_ctx: FExitContext) -> i32 {
    0
}
