//! Dynamically loaded libraries: libtorch's CUDA backend ([`crate::cuda`]), the CUDA-graph
//! shim ([`crate::cuda`]) and the OpenMP runtime libtorch loaded (the fused CPU kernels'
//! threads).

use std::ffi::{c_void, CStr};

/// The function `name` in `lib` (a `dlopen` handle, or `RTLD_DEFAULT` for every object
/// loaded in the process) as an `F`; `None` when there is no such symbol.
///
/// # Safety
/// `lib` must be a live handle from `dlopen` or a pseudo-handle, and `F` a function-pointer
/// type matching the symbol's definition.
pub unsafe fn symbol<F: Copy>(lib: *mut c_void, name: &CStr) -> Option<F> {
    // SAFETY: the caller passes a live handle; `name` is NUL-terminated.
    let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if f.is_null() || std::mem::size_of::<F>() != std::mem::size_of::<*mut c_void>() {
        return None;
    }
    // SAFETY: `F` is a function pointer of the symbol's signature (the caller's promise), and
    // the sizes match.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&f) })
}

/// The last `dlopen`/`dlsym` error of this thread.
pub fn error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated thread-local string.
    unsafe {
        let err = libc::dlerror();
        if err.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(err).to_string_lossy().into_owned()
        }
    }
}
