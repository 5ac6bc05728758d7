//! The global allocator: it passes every call to the system allocator and reports each
//! allocation to the allocation guard (`stdx::allocation_guard`), which counts those a thread
//! makes after it armed the guard.

use std::alloc::{GlobalAlloc, Layout, System};

use crate::stdx::allocation_guard;

pub struct GuardedAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it keeps
// all of `System`'s guarantees; the bookkeeping touches only `const` thread-locals, which
// neither allocate nor unwind.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocation_guard::count(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocation_guard::count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        allocation_guard::count(size);
        // SAFETY: `pointer` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(pointer, layout, size) }
    }
}
