//! Counting of allocations, the proof of static allocation: once a thread arms the guard, the
//! global allocator (`io::allocator`) counts that thread's allocations here. The replica arms it
//! when startup ends; a test drives the replica and asserts the count stayed zero.
//!
//! Counting is per thread (a `const` thread-local, which never allocates), so tests running in
//! parallel don't see each other's allocations. In production an allocation after arming is
//! logged once rather than aborting: the test is the proof, the log is the alarm.

use std::cell::Cell;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS_ARMED: Cell<u64> = const { Cell::new(0) };
    static BYTES_ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

/// Called by the global allocator for every allocation of `size` bytes; neither allocates nor
/// unwinds.
pub fn count(size: usize) {
    // `try_with` because the allocator runs while thread-locals are torn down.
    let armed = ARMED.try_with(|armed| armed.get()).unwrap_or(false);
    let _ = BYTES_ALLOCATED.try_with(|bytes| bytes.set(bytes.get() + size as u64));
    if armed && size > 0 {
        let _ = ALLOCATIONS_ARMED.try_with(|count| count.set(count.get() + 1));
    }
}

/// Starts counting this thread's allocations (startup is over).
pub fn arm() {
    ARMED.with(|armed| armed.set(true));
    ALLOCATIONS_ARMED.with(|count| count.set(0));
}

/// Stops counting (shutdown, or the end of a test).
pub fn disarm() {
    ARMED.with(|armed| armed.set(false));
}

/// Bytes this thread has allocated so far (frees not subtracted): what startup allocated, read
/// when it ends.
pub fn bytes_allocated() -> u64 {
    BYTES_ALLOCATED.with(|bytes| bytes.get())
}

/// Allocations this thread made since `arm`.
pub fn allocations_since_armed() -> u64 {
    ALLOCATIONS_ARMED.with(|count| count.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_armed_and_only_this_thread() {
        // Goal: the guard sees an allocation made after arming, and none before.
        let before = vec![1u8; 64];
        arm();
        assert_eq!(allocations_since_armed(), 0);
        let during = std::hint::black_box(vec![2u8; 64]);
        let counted = allocations_since_armed();
        disarm();
        drop(during);
        drop(before);
        assert_eq!(counted, 1);
    }
}
