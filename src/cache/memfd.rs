//! Memory-tier blobs big enough that copying them into the socket costs more than handing the
//! kernel their pages: held in a sealed in-memory file (`memfd`), mapped read-only for
//! everything that wants bytes, and sent with `sendfile` from the file by the plain HTTP/1
//! writer (`server::h1`). The seals (no write, no shrink, no grow) make the mapping as immutable
//! as heap bytes, and mean it can never fault on a truncated file.
//!
//! Each such blob holds one descriptor, so their number is bounded by an eighth of the
//! process's descriptor limit (at most `MAX_FILES`; the server leaves that many out of its
//! connection ceiling); past it, or where `memfd_create` is not available, blobs stay on the
//! heap as before.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Blobs at least this big are held in a memfd (below it, one copy costs less than the
/// `sendfile` call's own work).
pub const MIN_BYTES: usize = 16 << 10;
/// Most memfds held at once, whatever the descriptor limit.
const MAX_FILES: usize = 16_384;

/// A blob's bytes, mapped from a sealed memfd, with the file for `sendfile`.
#[derive(Clone, Debug)]
pub struct Mapped {
    pub bytes: Bytes,
    pub fd: Arc<OwnedFd>,
}

impl Mapped {
    /// A sealed copy of `bytes`, or `None` when no memfd is to be had (the limit is reached,
    /// or the system refuses): the caller keeps the heap bytes.
    pub fn copy_of(bytes: &[u8]) -> Option<Mapped> {
        if bytes.len() < MIN_BYTES || REFUSED.load(Ordering::Relaxed) || !reserve() {
            return None;
        }
        match seal(bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                release();
                // Out of descriptors or memory: maybe not next time. Anything else (no
                // memfd_create, no sealing, a sandbox refusing them): not again.
                let passing = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
                );
                if !passing && !REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "memfds refused: the memory tier keeps every blob on the heap");
                }
                None
            }
        }
    }
}

/// Writes `bytes` into a new memfd, seals it and maps it. The reservation is the caller's and
/// passes to the mapping.
fn seal(bytes: &[u8]) -> io::Result<Mapped> {
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"chartbridge-blob".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(raw) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: an open descriptor and a valid command.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Arc::new(OwnedFd::from(file));
    // SAFETY: a read-only shared mapping of the whole (sealed, non-empty) file.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mapping = Mapping {
        ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
        len: bytes.len(),
        _fd: fd.clone(),
    };
    Ok(Mapped {
        bytes: Bytes::from_owner(mapping),
        fd,
    })
}

/// A read-only mapping of a sealed memfd; unmapped (and its reservation released) when the
/// last `Bytes` pointing into it is dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _fd: Arc<OwnedFd>,
}

// SAFETY: the mapped memory is read-only and cannot change (the file is sealed against writes,
// shrinking and growing), so sharing it between threads is as safe as sharing `&[u8]`.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `seal` mapped; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        release();
    }
}

static HELD: AtomicUsize = AtomicUsize::new(0);
/// Set when the system refuses memfds for good.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Most memfds held at once: an eighth of the soft descriptor limit when first asked (the
/// server asks right after raising it), at most `MAX_FILES`.
pub fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid out-pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return 0;
        }
        usize::try_from(r.rlim_cur / 8)
            .unwrap_or(usize::MAX)
            .min(MAX_FILES)
    })
}

fn reserve() -> bool {
    let max = limit();
    HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    })
    .is_ok()
}

fn release() {
    HELD.fetch_sub(1, Ordering::AcqRel);
}

/// How many memfds are held now (for tests).
#[cfg(test)]
pub fn held() -> usize {
    HELD.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_reads_back_and_refuses_writes() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let m = Mapped::copy_of(&data).expect("memfd available");
        assert_eq!(&m.bytes[..], &data[..]);
        assert_eq!(&m.bytes.slice(100..200)[..], &data[100..200]);
        let fd = m.fd.as_raw_fd();
        // SAFETY: an open descriptor.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        // SAFETY: writes one byte from a valid buffer; refused by the seal.
        let w = unsafe { libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(w, -1, "a sealed blob cannot be written");
        // SAFETY: shrinking an open descriptor; refused by the seal.
        assert_eq!(unsafe { libc::ftruncate(fd, 10) }, -1);
        // the file holds the same bytes as the mapping
        let mut back = vec![0u8; data.len()];
        // SAFETY: reads into a buffer of that length.
        let n = unsafe { libc::pread(fd, back.as_mut_ptr().cast(), back.len(), 0) };
        assert_eq!(n as usize, data.len());
        assert_eq!(back, data);
    }

    #[test]
    fn small_blobs_stay_on_the_heap_and_a_dropped_copy_is_released() {
        assert!(Mapped::copy_of(&[1u8; MIN_BYTES - 1]).is_none());
        let m = Mapped::copy_of(&[2u8; MIN_BYTES]).expect("memfd available");
        assert!(held() >= 1);
        let bytes = m.bytes.clone();
        drop(m);
        assert_eq!(bytes[MIN_BYTES - 1], 2, "the bytes outlive the entry");
        drop(bytes);
    }
}
