#![no_std]
// The programs are the `tracer` binary of this crate (src/main.rs). This empty library lets
// tracer/build.rs depend on the crate, so cargo rebuilds the programs when they change.
