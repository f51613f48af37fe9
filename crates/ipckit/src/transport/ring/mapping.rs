//! A shared mapping of a file: the memory every ring lives in.

use std::ffi::c_void;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// A shared mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; what may be done with it concurrently is governed
// by the atomics and ring protocol placed in it.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset`, shared and writable.
    pub fn new(fd: impl AsFd, offset: usize, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a file we opened read-write; nothing else in
        // this process is placed at the address the kernel picks.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset as u64,
            )?
        };
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    /// The first byte.
    pub fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// `T` at `offset`.
    ///
    /// # Safety
    /// `offset` is aligned for `T`, `T` fits inside the mapping, and every bit pattern is
    /// a valid `T` (the types used here are integers and atomics).
    pub unsafe fn at<T>(&self, offset: usize) -> &T {
        assert!(offset + size_of::<T>() <= self.len && offset % align_of::<T>() == 0);
        // SAFETY: in bounds and aligned (asserted); valid per the caller.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; references into it borrow `self`.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}
