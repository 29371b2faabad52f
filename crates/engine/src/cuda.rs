//! What tch does not expose of libtorch's CUDA side, through a small C shim
//! (`csrc/cuda_shim.cpp`, compiled by build.rs): recording GPU work once and replaying it
//! (`at::cuda::CUDAGraph`), and the caching allocator's memory statistics.
//!
//! A decode step of gemma-2-2b is about 1,500 small kernels. Launched one by one from the host
//! they cost more than the GPU needs to run them; replayed as one graph they cost one launch.
//! The shim is embedded in this crate and loaded the first time it is needed, after
//! `libtorch_cuda.so`: a binary that never uses CUDA never touches it, and one
//! libtorch_cpu-linked binary serves CPU and GPU alike. It is loaded from a sealed anonymous
//! memory file, never from a path in a shared directory, where on a shared machine another
//! user could plant or swap the file between a check and the load and run code as this one.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::dl;
use crate::error::{Error, Result};

/// The shim, or an empty slice when the build found no CUDA headers.
static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libscope_cuda_shim.so"));

type Handle = *mut c_void;
type NewFn = unsafe extern "C" fn(*mut c_char, usize) -> Handle;
type FreeFn = unsafe extern "C" fn(Handle);
type ErrorFn = unsafe extern "C" fn(Handle) -> *const c_char;
/// Every other graph entry point: 0 on success, else the reason is in `scope_graph_error`.
type CallFn = unsafe extern "C" fn(Handle) -> c_int;
/// `(device, out[4], why, size)`: 0 on success, else the reason is in `why`.
type MemoryFn = unsafe extern "C" fn(c_int, *mut i64, *mut c_char, usize) -> c_int;
/// `(device, why, size)`: 0 on success, else the reason is in `why`.
type ResetFn = unsafe extern "C" fn(c_int, *mut c_char, usize) -> c_int;

/// The shim's entry points.
struct Shim {
    new: NewFn,
    free: FreeFn,
    error: ErrorFn,
    enter: CallFn,
    exit: CallFn,
    capture_begin: CallFn,
    capture_end: CallFn,
    replay: CallFn,
    memory: MemoryFn,
    reset_peak_memory: ResetFn,
}

/// Whether CUDA graphs can be used in this process: CUDA is usable and the shim loads.
pub fn graphs_available() -> bool {
    shim().is_ok()
}

fn shim() -> std::result::Result<&'static Shim, &'static str> {
    static SHIM_API: OnceLock<std::result::Result<Shim, String>> = OnceLock::new();
    SHIM_API.get_or_init(load).as_ref().map_err(String::as_str)
}

fn graph_shim() -> Result<&'static Shim> {
    shim().map_err(|why| Error::Cuda(format!("CUDA graphs are unavailable: {why}")))
}

fn load() -> std::result::Result<Shim, String> {
    if SHIM.is_empty() {
        return Err(
            "this build found no CUDA headers (run `cargo xtask setup`, then rebuild)".into(),
        );
    }
    load_cuda_backend().map_err(|e| format!("libtorch_cuda.so: {e}"))?;
    if !tch::Cuda::is_available() {
        return Err("no CUDA device".into());
    }
    let lib = dlopen_sealed(c"scope-cuda-shim", SHIM)?;
    // SAFETY: `lib` is live, and the shim defines each name with the C signature of the field
    // it is stored in.
    unsafe {
        Ok(Shim {
            new: symbol(lib, c"scope_graph_new")?,
            free: symbol(lib, c"scope_graph_free")?,
            error: symbol(lib, c"scope_graph_error")?,
            enter: symbol(lib, c"scope_graph_enter")?,
            exit: symbol(lib, c"scope_graph_exit")?,
            capture_begin: symbol(lib, c"scope_graph_capture_begin")?,
            capture_end: symbol(lib, c"scope_graph_capture_end")?,
            replay: symbol(lib, c"scope_graph_replay")?,
            memory: symbol(lib, c"scope_cuda_memory")?,
            reset_peak_memory: symbol(lib, c"scope_cuda_reset_peak_memory")?,
        })
    }
}

/// `bytes` (a shared library) loaded from an anonymous memory file (`memfd_create`) sealed
/// against any change once written: it has no name in any directory, so no one else can
/// create, replace or rewrite it, and it leaves nothing behind. The handle is leaked on
/// purpose: the library, whose functions are kept, stays loaded for the life of the process.
fn dlopen_sealed(name: &CStr, bytes: &[u8]) -> std::result::Result<*mut c_void, String> {
    let (file, path) = sealed_memory_file(name, bytes)?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: `c_path` is NUL-terminated and names the open memory file.
    let lib = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    // The mapping outlives the descriptor.
    drop(file);
    if lib.is_null() {
        return Err(format!(
            "dlopen of the {name:?} memory file: {}",
            dl::error()
        ));
    }
    Ok(lib)
}

/// An anonymous memory file holding `bytes`, sealed against writes, growth and shrinking,
/// and its `/proc/self/fd` path (valid while the file is open).
fn sealed_memory_file(
    name: &CStr,
    bytes: &[u8],
) -> std::result::Result<(std::fs::File, PathBuf), String> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor this function owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)
        .map_err(|e| format!("writing the {name:?} memory file: {e}"))?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: `fd` is open; F_ADD_SEALS takes an int.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!(
            "sealing the {name:?} memory file: {}",
            std::io::Error::last_os_error()
        ));
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok((file, path))
}

/// The function `name` of the shim `lib` as an `F`.
///
/// # Safety
/// As [`dl::symbol`].
unsafe fn symbol<F: Copy>(lib: *mut c_void, name: &CStr) -> std::result::Result<F, String> {
    // SAFETY: passed on from the caller.
    unsafe { dl::symbol(lib, name) }
        .ok_or_else(|| format!("the shim has no {}", name.to_string_lossy()))
}

/// One CUDA graph of the current device.
///
/// Use: [`enter`](Self::enter) a side stream, run the work once for real there (libraries set
/// themselves up on first use, which a capture must not see), [`capture`](Self::capture) it,
/// [`exit`](Self::exit), then [`replay`](Self::replay) as often as needed. The tensors the
/// captured work read and wrote must stay alive and in place for as long as the graph replays:
/// a replay reads and writes the same addresses.
pub struct CudaGraph {
    shim: &'static Shim,
    handle: Handle,
    entered: bool,
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph")
            .field("entered", &self.entered)
            .finish_non_exhaustive()
    }
}

impl CudaGraph {
    /// An empty graph; fails when CUDA graphs are unavailable (see [`graphs_available`]).
    pub fn new() -> Result<Self> {
        let shim = graph_shim()?;
        let mut why = [0 as c_char; 512];
        // SAFETY: `why` is writable for its length; the shim writes a NUL-terminated message
        // there when it returns null.
        let handle = unsafe { (shim.new)(why.as_mut_ptr(), why.len()) };
        if handle.is_null() {
            // SAFETY: zero-initialised and NUL-terminated by the shim within its length.
            let why = unsafe { CStr::from_ptr(why.as_ptr()) };
            return Err(Error::Cuda(format!(
                "could not create a CUDA graph: {}",
                why.to_string_lossy()
            )));
        }
        Ok(CudaGraph {
            shim,
            handle,
            entered: false,
        })
    }

    /// Makes a side stream current (after waiting for the current one).
    pub fn enter(&mut self) -> Result<()> {
        self.call("enter a side stream", self.shim.enter)?;
        self.entered = true;
        Ok(())
    }

    /// Waits for the side stream and makes the previous stream current again.
    pub fn exit(&mut self) -> Result<()> {
        self.entered = false;
        self.call("leave the side stream", self.shim.exit)
    }

    /// Records what `work` enqueues (nothing runs); call between `enter` and `exit`.
    pub fn capture<T>(&mut self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.entered {
            return Err(Error::Cuda(
                "a CUDA graph captures on a side stream: enter first".into(),
            ));
        }
        self.call("begin the capture", self.shim.capture_begin)?;
        let result = work();
        // Always end the capture, so the stream is usable whatever `work` did.
        let ended = self.call("end the capture", self.shim.capture_end);
        let value = result?;
        ended?;
        Ok(value)
    }

    /// Launches the recorded work on the current stream.
    pub fn replay(&self) -> Result<()> {
        self.call("replay", self.shim.replay)
    }

    fn call(&self, what: &str, f: CallFn) -> Result<()> {
        // SAFETY: `self.handle` is live until drop; the shim catches every C++ exception.
        if unsafe { f(self.handle) } == 0 {
            return Ok(());
        }
        // SAFETY: the shim returns a NUL-terminated string owned by the handle.
        let why = unsafe { CStr::from_ptr((self.shim.error)(self.handle)) };
        Err(Error::Cuda(format!(
            "CUDA graph: could not {what}: {}",
            why.to_string_lossy()
        )))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if self.entered {
            let _ = self.exit();
        }
        // SAFETY: the handle came from `new` and is freed once.
        unsafe { (self.shim.free)(self.handle) }
    }
}

/// Bytes of GPU memory held by libtorch's caching allocator on one device, as
/// `torch.cuda.memory_allocated`, `max_memory_allocated`, `memory_reserved` and
/// `max_memory_reserved` report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live tensors now.
    pub allocated: i64,
    /// The most held by tensors since the process started or [`reset_peak_memory`].
    pub peak_allocated: i64,
    /// Reserved from the driver now (tensors and the allocator's cache).
    pub reserved: i64,
    /// The most reserved since the process started or [`reset_peak_memory`].
    pub peak_reserved: i64,
}

/// The caching allocator's statistics of GPU `device`.
pub fn memory_stats(device: usize) -> Result<MemoryStats> {
    let shim = memory_shim()?;
    let mut out = [0i64; 4];
    let mut why = [0 as c_char; 512];
    // SAFETY: `out` has the four slots and `why` the length the shim writes at most.
    let rc = unsafe {
        (shim.memory)(
            device_index(device)?,
            out.as_mut_ptr(),
            why.as_mut_ptr(),
            why.len(),
        )
    };
    reported("read the memory statistics", rc, &why)?;
    Ok(MemoryStats {
        allocated: out[0],
        peak_allocated: out[1],
        reserved: out[2],
        peak_reserved: out[3],
    })
}

/// Starts the peaks of [`memory_stats`] afresh for GPU `device`.
pub fn reset_peak_memory(device: usize) -> Result<()> {
    let shim = memory_shim()?;
    let mut why = [0 as c_char; 512];
    // SAFETY: `why` has the length the shim writes at most.
    let rc =
        unsafe { (shim.reset_peak_memory)(device_index(device)?, why.as_mut_ptr(), why.len()) };
    reported("reset the peak memory", rc, &why)
}

fn memory_shim() -> Result<&'static Shim> {
    shim().map_err(|why| Error::Cuda(format!("CUDA memory statistics are unavailable: {why}")))
}

fn device_index(device: usize) -> Result<c_int> {
    c_int::try_from(device).map_err(|_| Error::Cuda(format!("no CUDA device {device}")))
}

/// `Ok` for return code 0, else the shim's message from `why`.
fn reported(what: &str, rc: c_int, why: &[c_char]) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: zero-initialised, and the shim NUL-terminates what it writes within the length.
    let why = unsafe { CStr::from_ptr(why.as_ptr()) };
    Err(Error::Cuda(format!(
        "CUDA: could not {what}: {}",
        why.to_string_lossy()
    )))
}

/// Loads `libtorch_cuda.so` once, globally, so libtorch registers its CUDA backend.
/// Returns the loader's message when the library is absent (a CPU-only libtorch).
pub fn load_cuda_backend() -> std::result::Result<(), String> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(dlopen_cuda).clone()
}

fn dlopen_cuda() -> std::result::Result<(), String> {
    let name = c"libtorch_cuda.so";
    // SAFETY: `name` is a valid NUL-terminated string; the handle is intentionally leaked so the
    // library stays loaded for the life of the process (libtorch keeps pointers into it).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    Err(crate::dl::error())
}

#[cfg(test)]
#[allow(clippy::expect_used)] // tests may panic
mod tests {
    use super::*;

    /// The shim's bytes go to an anonymous, sealed file: nothing at the temporary directory's
    /// names is read (a file planted there by another user is never loaded), and not even
    /// this process can change the bytes after the check.
    #[test]
    fn the_shim_loads_from_a_sealed_memory_file_not_a_shared_path() {
        let planted = std::env::temp_dir().join(format!(
            "scope-cuda-shim-{}-{}-planted.so",
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() },
            env!("CARGO_PKG_VERSION")
        ));
        std::fs::write(&planted, b"not the shim").expect("plant a file");
        let bytes = b"\x7fELF the shim's bytes";
        let (file, path) = sealed_memory_file(c"scope-test", bytes).expect("memory file");
        let target = std::fs::read_link(&path).expect("a /proc/self/fd link");
        assert!(
            target.to_string_lossy().starts_with("/memfd:scope-test"),
            "{}",
            target.display()
        );
        assert_eq!(std::fs::read(&path).expect("read back"), bytes);
        use std::io::Write;
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        assert!(writer.write_all(b"swap").is_err(), "sealed against writes");
        assert!(file.set_len(1).is_err(), "sealed against shrinking");
        let _ = std::fs::remove_file(planted);
    }

    /// A real shared library loads through the sealed memory file and its symbols resolve.
    #[test]
    fn dlopen_sealed_loads_a_library_from_memory() {
        let libm = [
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
            "/lib64/libm.so.6",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("libm on this machine");
        let lib = dlopen_sealed(c"scope-test-libm", &libm).expect("dlopen from memory");
        // SAFETY: libm defines `cos` as double(double).
        let cos: Option<unsafe extern "C" fn(f64) -> f64> = unsafe { dl::symbol(lib, c"cos") };
        // SAFETY: as above.
        assert_eq!(cos.map(|cos| unsafe { cos(0.0) }), Some(1.0));
    }
}
