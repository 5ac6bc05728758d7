//! Structs of named `u64` counters: the replica's metrics and the simulator's, which a
//! campaign prints by name so that a path it never reached is visible.

/// A struct of `u64` counters that can list them by name (the simulator prints every one at the
/// end of a run, so that a path a campaign never reached shows as 0) and add them up.
macro_rules! counters {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident { $($(#[$meta:meta])* pub $field:ident: u64,)* }
    ) => {
        $(#[$struct_meta])*
        pub struct $name { $($(#[$meta])* pub $field: u64,)* }

        impl $name {
            pub const COUNTER_COUNT: usize = [$(stringify!($field)),*].len();

            /// Every counter with its name, in declaration order.
            pub fn counters(&self) -> [(&'static str, u64); Self::COUNTER_COUNT] {
                [$((stringify!($field), self.$field)),*]
            }

            /// Adds `other`'s counters to these.
            pub fn add(&mut self, other: &$name) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

pub(crate) use counters;
