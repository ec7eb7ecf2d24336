//! LaminarDB's handle layer and C ABI.
//!
//! Two faces of one set of handles:
//! - the **handle layer** — [`Db`], [`Config`], [`Writer`], [`QueryStream`], [`Subscription`],
//!   [`PushSubscription`] and the engine's `Error` — which the Python and Node packages link as a
//!   Rust crate, so every language shares the same status codes, error texts, config keys and
//!   subscription rules;
//! - the **`laminar_*` C exports**, one-to-one over the handle layer, declared in
//!   `include/laminar.h` (generated from this crate by cbindgen; `tests/header.rs` fails when the
//!   committed header is stale).
//!
//! Every export runs inside [`error::guard`]: a panic becomes `LAMINAR_INTERNAL`, NULL required
//! pointers and invalid UTF-8 become `LAMINAR_INVALID_ARGUMENT`, and nothing unwinds into C.
//!
//! The library never writes to stderr: messages go through the `log` facade to the sink of
//! [`logging`] (`laminar_set_log_callback` in C), or nowhere.

// The `extern "C"` exports document their contracts per argument (NULL, ownership, threads,
// lifetimes) in the comments cbindgen copies into include/laminar.h, in C's terms; a Rust
// `# Safety` heading on each would only repeat them.
#![allow(clippy::missing_safety_doc)]

pub mod arrow;
pub mod config;
pub mod db;
pub mod error;
pub mod function;
pub mod logging;
pub mod subscription;
pub mod writer;

use std::ffi::c_char;

pub use config::Config;
pub use db::{Db, QueryStream};
pub use error::{laminar_status, status_name};
pub use laminar_core::{Error, ErrorKind, Next, PushEvent, Result};
pub use subscription::{PushSubscription, Subscription};
pub use writer::Writer;

/// Major version of the header (`LAMINAR_VERSION_MAJOR`); `laminar_version_number()` tells the
/// library's at run time.
pub const LAMINAR_VERSION_MAJOR: u32 = 0;
/// Minor version of the header.
pub const LAMINAR_VERSION_MINOR: u32 = 1;
/// Patch version of the header.
pub const LAMINAR_VERSION_PATCH: u32 = 0;
/// `MAJOR * 1000000 + MINOR * 1000 + PATCH`; compare with `laminar_version_number()` to check
/// that the header and the library agree.
pub const LAMINAR_VERSION_NUMBER: u32 = 1000;

/// The library's version, `"MAJOR.MINOR.PATCH"`. Static; do not free.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub extern "C" fn laminar_version() -> *const c_char {
    const V: &std::ffi::CStr =
        match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the crate version contains a NUL"), // evaluated at compile time
        };
    V.as_ptr()
}

/// The library's version as a number (`LAMINAR_VERSION_NUMBER` of the header it was built with).
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub extern "C" fn laminar_version_number() -> u32 {
    LAMINAR_VERSION_NUMBER
}

/// Bytes in front of each block `laminar_free` releases: the block's total size.
const HEADER: usize = 16;

/// Copies `s` into a NUL-terminated block that the caller releases with [`laminar_free`].
pub(crate) fn alloc_c_string(s: &str) -> laminar_core::Result<*mut c_char> {
    let total = HEADER + s.len() + 1;
    let layout = std::alloc::Layout::from_size_align(total, HEADER)
        .map_err(|e| laminar_core::Error::internal(format!("cannot allocate {total} bytes of text: {e}")))?;
    // SAFETY: `layout` has a non-zero size.
    let base = unsafe { std::alloc::alloc(layout) };
    if base.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `base` points to `total` writable bytes: the size, the text, a NUL; an interior
    // NUL in `s` would only end the C string early.
    unsafe {
        (base as *mut usize).write(total);
        std::ptr::copy_nonoverlapping(s.as_ptr(), base.add(HEADER), s.len());
        base.add(HEADER + s.len()).write(0);
        Ok(base.add(HEADER) as *mut c_char)
    }
}

/// Releases memory the library handed to the caller as raw memory (the text of
/// `laminar_db_metrics_text`). NULL is a no-op. Handles have their own destroy functions; do
/// not pass them here, nor memory from another allocator.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_free(ptr: *mut std::ffi::c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from `alloc_c_string` (caller contract): HEADER bytes before it hold
    // the block's size, and the block was allocated with that size and HEADER alignment.
    unsafe {
        let base = (ptr as *mut u8).sub(HEADER);
        let total = (base as *const usize).read();
        std::alloc::dealloc(base, std::alloc::Layout::from_size_align_unchecked(total, HEADER));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_macros_match_the_crate_version() {
        let v: Vec<u32> = env!("CARGO_PKG_VERSION").split('.').map(|p| p.parse().unwrap()).collect();
        assert_eq!(v, vec![LAMINAR_VERSION_MAJOR, LAMINAR_VERSION_MINOR, LAMINAR_VERSION_PATCH]);
        assert_eq!(LAMINAR_VERSION_NUMBER, v[0] * 1_000_000 + v[1] * 1000 + v[2]);
        let s = unsafe { std::ffi::CStr::from_ptr(laminar_version()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(laminar_version_number(), LAMINAR_VERSION_NUMBER);
    }
}
