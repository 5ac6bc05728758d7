//! Small pieces every layer uses, below all of them: the seeded PRNG, the allocation guard, and
//! a hash index of ids.
//! They import nothing else from the crate, so the core, the driver and the simulator can all
//! depend on them without depending on each other.

#![forbid(unsafe_code)]

pub mod allocation_guard;
pub mod id_index;
pub mod json;
pub mod prng;
