//! Kernel programs of `tracer`. Each tracer has one module; `pipeline` holds what they share
//! (the ring buffer, the lost-event counters) and `task` reads kernel structs through the
//! offsets the loader resolved from BTF.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod conntrack;
mod netns;
mod percpu;
mod pipeline;
mod probes;
mod signals;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
