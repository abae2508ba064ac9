//! `tracer netns`: network namespaces, and the ones that outlive their pod.

mod discover;
mod flags;
mod inside;
pub mod snapshot;
