//! Small pieces every layer uses, below all of them: the seeded PRNG and the allocation guard.
//! They import nothing else from the crate, so the core, the driver and the simulator can all
//! depend on them without depending on each other.

#![forbid(unsafe_code)]

pub mod allocation_guard;
pub mod prng;
