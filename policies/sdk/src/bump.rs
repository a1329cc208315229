//! The allocator of a pack on `wasm32`: a bump allocator.
//!
//! Every call runs in a fresh instance that is thrown away afterwards, so memory never needs to be
//! reused: allocating is moving a pointer, freeing does nothing (except giving back the most
//! recent block, which makes a growing `Vec` or `String` extend in place). The heap starts at the
//! linker's `__heap_base`, right after the static data, so a call's few kilobytes fit in the
//! module's initial memory without a `memory.grow` (a call into the host); beyond it, memory grows
//! a page at a time; running out of memory returns null, which aborts the pack (a trap: the host
//! denies the call). Memory never handed out is still zero (a fresh instance), so zeroed
//! allocations there are not written twice.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

const PAGE: usize = 65_536;

/// The bump allocator; see the module docs.
pub struct Bump {
    next: Cell<usize>,
    end: Cell<usize>,
    /// The highest address ever handed out: memory above it is still zero.
    high: Cell<usize>,
}

#[allow(unsafe_code)] // A linker symbol; only its address is used.
unsafe extern "C" {
    /// Where the linker placed the end of the static data and the stack: the first free byte.
    static __heap_base: u8;
}

// SAFETY: wasm32-unknown-unknown packs are single-threaded (no threads, no shared memory), so the
// cells are never accessed concurrently.
#[allow(unsafe_code)]
unsafe impl Sync for Bump {}

impl Bump {
    /// An allocator whose heap starts on first use.
    pub const fn new() -> Self {
        Self { next: Cell::new(0), end: Cell::new(0), high: Cell::new(0) }
    }

    /// Makes `[.., to)` usable, growing memory if needed; false if memory cannot grow.
    fn reserve(&self, to: usize) -> bool {
        if self.end.get() == 0 {
            // Only the address of the linker-provided symbol is taken, never its value.
            let start = core::ptr::addr_of!(__heap_base) as usize;
            self.next.set(start);
            self.high.set(start);
            self.end.set(wasm32::memory_size(0) * PAGE);
        }
        let end = self.end.get();
        if to <= end {
            return true;
        }
        let pages = (to - end).div_ceil(PAGE);
        if wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(end + pages * PAGE);
        true
    }
}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are carved from memory only this allocator hands out (above the initial memory),
// aligned as requested, never overlapping: `next` only moves back over the most recent block,
// when that block is freed or resized in place.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.reserve(0) {
            return core::ptr::null_mut();
        }
        let start = (self.next.get() + layout.align() - 1) & !(layout.align() - 1);
        match start.checked_add(layout.size()) {
            Some(end) if self.reserve(end) => {
                self.next.set(end);
                self.high.set(self.high.get().max(end));
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let high = self.high.get();
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { self.alloc(layout) };
        // Only bytes below the old high-water mark can have been written (and freed) before.
        let dirty = high.saturating_sub(ptr as usize).min(layout.size());
        if !ptr.is_null() && dirty > 0 {
            // SAFETY: `ptr..ptr + dirty` lies inside the block just allocated.
            unsafe { core::ptr::write_bytes(ptr, 0, dirty) };
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start + layout.size() == self.next.get() {
            // The most recent block: grow or shrink it where it is.
            return match start.checked_add(new_size) {
                Some(end) if self.reserve(end) => {
                    self.next.set(end);
                    self.high.set(self.high.get().max(end));
                    ptr
                }
                _ => core::ptr::null_mut(),
            };
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: `new_layout` has a non-zero size whenever `layout` had (GlobalAlloc contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap (the new one
            // lies above `next`, the old one below it).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}
