//! The targets' allocator: the system's, but a single allocation above [`ALLOCATION_BYTES_MAX`]
//! aborts (a crash libFuzzer records), so that a length field believed without bound is found
//! even without a sanitizer (`-s none` has no malloc hooks, so `-malloc_limit_mb` does nothing).

use std::alloc::{GlobalAlloc, Layout, System};

/// Far above what any input of a few KiB may legitimately need.
pub const ALLOCATION_BYTES_MAX: usize = 64 << 20;

pub struct Bounded;

fn refuse(size: usize) -> ! {
    use std::io::Write;
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(b"bounded_alloc: an allocation of more than 64 MiB was requested: ");
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let _ = stderr.write_all(&digits[i..]);
    let _ = stderr.write_all(b" bytes\n");
    std::process::abort()
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            refuse(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            refuse(layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            refuse(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}
