//! A shared mapping of a file, and handles to what lies in it: the one place where the
//! memory of every ring, and of whatever a transport keeps beside it, is argued valid.
//!
//! Memory in a mapping is valid for as long as the mapping is mapped; [`Shared`] holds the
//! mapping while it points into it, so a `Shared` is as safe to use as a reference. What
//! lies there is written by other processes too, so it may only be a [`Plain`] type:
//! integers, atomics, and structs of them, valid whatever bytes a peer writes.

use std::ffi::c_void;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

use super::fault::{self, Region};

/// A shared mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Where the SIGBUS handler marks a file shrunk under the mapping; `None` for
    /// anonymous memory, which no one can shrink.
    region: Option<&'static Region>,
}

// SAFETY: the mapping is plain memory, reached only as `Plain` values (atomics and
// integers) through `at` and `Shared`, or as ring bytes whose use the ring protocol orders.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// A type that may lie in memory that other processes write.
///
/// # Safety
/// Every bit pattern is a valid value; it holds no pointers and no padding the compiler
/// adds (integers, atomics, arrays and `repr(C)` structs of them, padded by hand); and its
/// non-atomic fields are written only before the memory is shared (through
/// [`Mapping::write`]), so that a `&T` may be read from any thread.
pub unsafe trait Plain: Sync {}

// SAFETY: integers and atomics of integers are valid for any bits.
unsafe impl Plain for AtomicU8 {}
// SAFETY: as above.
unsafe impl Plain for AtomicU32 {}
// SAFETY: as above.
unsafe impl Plain for AtomicU64 {}
// SAFETY: counters and padding, all integers (`repr(C)`).
unsafe impl Plain for super::spsc::Control {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset`, shared and writable. A process that
    /// shrinks the file under the mapping does not kill this one: see
    /// [`truncated`](Self::truncated).
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
        let mut map = Mapping::mapped(ptr, len);
        map.region = Some(fault::watch(map.ptr.as_ptr(), len));
        Ok(map)
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether another process shrank the file under the mapping: what lay past its new
    /// end now reads as zeroes, private to this process. A transport that sees it closes
    /// what lives in the mapping with an error.
    #[inline]
    pub fn truncated(&self) -> bool {
        self.region.is_some_and(Region::truncated)
    }

    /// Anonymous shared memory of `len` bytes, zeroed: for tests of what lives in a mapping.
    #[cfg(any(test, fuzzing))]
    pub fn anonymous(len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; nothing else is placed at its address.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )?
        };
        Ok(Mapping::mapped(ptr, len))
    }

    /// The mapping `mmap` just made of `len` bytes at `ptr`, to unmap on drop.
    fn mapped(ptr: *mut c_void, len: usize) -> Mapping {
        Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
            region: None,
        }
    }

    /// The `T` at `offset`. Panics unless it lies inside the mapping and is aligned.
    #[inline]
    pub fn at<T: Plain>(&self, offset: usize) -> &T {
        // SAFETY: in bounds and aligned (checked); any bits are a valid `T` (`Plain`); the
        // borrow of `self` keeps it mapped.
        unsafe { self.ptr_to::<T>(offset).as_ref() }
    }

    /// Writes `value` at `offset`. Panics as [`at`](Self::at) does.
    ///
    /// # Safety
    /// Nobody else can reach the memory yet (a segment being built under a private name,
    /// say): `&mut self` keeps out references through this mapping, but not other
    /// mappings of the same file, in this process or another.
    pub unsafe fn write<T: Plain>(&mut self, offset: usize, value: T) {
        // SAFETY: in bounds and aligned (checked); nobody else reaches the memory (per the
        // contract).
        unsafe { self.ptr_to::<T>(offset).write(value) }
    }

    /// `count` values of `T` from `offset`: a ring's data area seen as words. Panics
    /// unless they lie inside the mapping and are aligned.
    #[inline]
    pub fn slice<T: Plain>(&self, offset: usize, count: usize) -> &[T] {
        let bytes = count
            .checked_mul(size_of::<T>())
            .expect("a slice that fits memory");
        assert!(offset <= self.len && bytes <= self.len - offset);
        let first = self.ptr_to::<T>(offset);
        // SAFETY: `count` values from `first` lie in the mapping and are aligned
        // (checked); any bits are valid `T`s (`Plain`); the borrow of `self` keeps them
        // mapped.
        unsafe { std::slice::from_raw_parts(first.as_ptr(), count) }
    }

    /// The `T` at `offset`, holding the mapping. Panics as [`at`](Self::at) does.
    pub fn get<T: Plain>(self: &Arc<Self>, offset: usize) -> Shared<T> {
        Shared {
            ptr: self.ptr_to(offset),
            map: self.clone(),
        }
    }

    /// `len` bytes at `offset`, holding the mapping: a ring's data area. Panics unless they
    /// lie inside the mapping.
    pub fn bytes(self: &Arc<Self>, offset: usize, len: usize) -> SharedBytes {
        assert!(offset <= self.len && len <= self.len - offset);
        SharedBytes {
            // SAFETY: in bounds (asserted), so not null.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) },
            len,
            _map: self.clone(),
        }
    }

    fn ptr_to<T: Plain>(&self, offset: usize) -> NonNull<T> {
        assert!(
            offset <= self.len
                && size_of::<T>() <= self.len - offset
                && (self.ptr.as_ptr() as usize + offset) % align_of::<T>() == 0,
            "a {} at {offset} does not fit a mapping of {} bytes",
            std::any::type_name::<T>(),
            self.len
        );
        // SAFETY: in bounds (asserted), so not null.
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(region) = self.region {
            region.release();
        }
        // SAFETY: unmaps exactly what `new` mapped; every reference into it borrows `self`,
        // and every `Shared` and `SharedBytes` holds it.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// A `T` in a mapping, which it keeps mapped: usable as a `&T` from any thread, for as
/// long as it lives.
pub struct Shared<T> {
    ptr: NonNull<T>,
    map: Arc<Mapping>,
}

impl<T> Shared<T> {
    /// Whether the file was shrunk under its mapping: see [`Mapping::truncated`].
    #[inline]
    pub fn truncated(&self) -> bool {
        self.map.truncated()
    }

    /// A part of the `T`, holding the same mapping: `slot.project(|s| &s.replies)`.
    pub fn project<U: Plain>(&self, part: impl for<'a> FnOnce(&'a T) -> &'a U) -> Shared<U> {
        Shared {
            // A reference `part` returns lives as long as the `&T` it was given: it is in
            // the mapping (or static), valid while `map` is held.
            ptr: NonNull::from(part(self)),
            map: self.map.clone(),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: built by `Mapping::get` (in bounds, aligned, `Plain`) or `project` (a
        // reference into the same memory, or a `'static` one); `map` keeps it mapped.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            ptr: self.ptr,
            map: self.map.clone(),
        }
    }
}

// SAFETY: a `Shared<T>` is a `&T` that holds its memory, and `&T` crosses threads when
// `T: Sync` (atomics, and structs of them).
unsafe impl<T: Sync> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Shared<T> {}

/// Bytes in a mapping, which they keep mapped: a ring's data area. Who may read or write
/// which of them, and when, is the ring's protocol to order.
pub struct SharedBytes {
    ptr: NonNull<u8>,
    len: usize,
    _map: Arc<Mapping>,
}

// SAFETY: the bytes stay mapped while `_map` is held, on any thread; which side touches
// which bytes when is ordered by the ring's atomics (`spsc`), not by Rust ownership, as
// between processes it must be.
unsafe impl Send for SharedBytes {}
// SAFETY: as above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// The first byte.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }
}
