//! Reading a stored blob's file for serving, in as few hops to the blocking pool as it takes.
//!
//! A small blob whose bytes the page cache holds is read on the calling thread, as nginx reads
//! a static file: an `open` and one `preadv2(RWF_NOWAIT)`, which the kernel refuses rather than
//! wait for the disk. Everything else (a big blob, a small one not in the page cache, a kernel
//! or file system that cannot say) takes one hop to the blocking pool, which opens, reads or
//! verifies, and hands back the bytes or the open file. A warm read among more blobs than the
//! memory tier holds used to take five hops (open, verify, seek, two reads), each a thread
//! switch on a busy core.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::ids::Digest;

/// Blobs up to this size are read whole (and go to the memory tier); bigger ones are served
/// from their open file.
pub(super) const WHOLE: u64 = 64 << 10;

/// A blob's file, opened and (if asked) verified.
#[derive(Debug)]
pub(super) enum Opened {
    /// A small blob's bytes.
    Whole(Vec<u8>),
    /// A big blob's file, its cursor at the start.
    File(File),
    /// The file does not hash to its name, or is shorter than its recorded size.
    Corrupt,
}

/// A small blob's bytes straight from the page cache, on the calling thread. `None` when the
/// blob is big, when some of its bytes would have to come from the disk, or when the kernel
/// cannot read without waiting: the caller then takes the blocking way (`open`).
pub(super) fn cached(
    path: &Path,
    size: u64,
    verify: Option<&Digest>,
) -> Option<io::Result<Opened>> {
    if size > WHOLE {
        return None;
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    let bytes = read_nowait(&file, size as usize)?;
    Some(Ok(checked(bytes, verify)))
}

/// The blocking way: opens the file; a small blob is read whole, a big one is verified by
/// positional reads (its cursor stays at the start) and handed back open.
pub(super) fn open(path: &Path, size: u64, verify: Option<&Digest>) -> io::Result<Opened> {
    let file = File::open(path)?;
    if size <= WHOLE {
        let mut buf = vec![0u8; size as usize];
        return match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Ok(checked(buf, verify)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Opened::Corrupt),
            Err(e) => Err(e),
        };
    }
    if let Some(d) = verify {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = file.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        if at != size || Digest::from_hasher(hasher) != *d {
            return Ok(Opened::Corrupt);
        }
    }
    Ok(Opened::File(file))
}

fn checked(bytes: Vec<u8>, verify: Option<&Digest>) -> Opened {
    match verify {
        Some(d) if Digest::of(&bytes) != *d => Opened::Corrupt,
        _ => Opened::Whole(bytes),
    }
}

/// Reads `len` bytes from the start of `file` only if the page cache holds them all.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_nowait(file: &File, len: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: the iovec points at `len` writable bytes of `buf`'s spare capacity, and the
    // kernel writes at most `len` bytes there.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    if usize::try_from(n).ok()? != len {
        // EAGAIN (not all cached), EOPNOTSUPP (no RWF_NOWAIT here), or a short read: the
        // blocking way reads it again and tells a short file apart.
        return None;
    }
    // SAFETY: the kernel initialised exactly `len` bytes.
    unsafe { buf.set_len(len) };
    Some(buf)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_nowait(_file: &File, _len: usize) -> Option<Vec<u8>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(dir: &Path, bytes: &[u8]) -> (std::path::PathBuf, Digest) {
        let d = Digest::of(bytes);
        let path = dir.join(d.hex());
        std::fs::write(&path, bytes).unwrap();
        (path, d)
    }

    #[test]
    fn a_small_blob_comes_whole_and_verified_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![7u8; 5000];
        let (path, d) = blob(dir.path(), &bytes);
        match open(&path, 5000, Some(&d)).unwrap() {
            Opened::Whole(b) => assert_eq!(b, bytes),
            other => panic!("{other:?}"),
        }
        // Just written, so the page cache holds it; a kernel without RWF_NOWAIT says None.
        if let Some(r) = cached(&path, 5000, Some(&d)) {
            match r.unwrap() {
                Opened::Whole(b) => assert_eq!(b, bytes),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_damaged_or_short_file_is_corrupt_and_a_missing_one_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (path, d) = blob(dir.path(), &[1u8; 3000]);
        std::fs::write(&path, [2u8; 3000]).unwrap();
        assert!(matches!(
            open(&path, 3000, Some(&d)).unwrap(),
            Opened::Corrupt
        ));
        if let Some(r) = cached(&path, 3000, Some(&d)) {
            assert!(matches!(r.unwrap(), Opened::Corrupt));
        }
        // Without verification the bytes are trusted, but a file shorter than its recorded
        // size is still caught (the page-cache read declines, the blocking read sees the end).
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert!(cached(&path, 3000, None).is_none());
        assert!(matches!(open(&path, 3000, None).unwrap(), Opened::Corrupt));
        let gone = dir.path().join("gone");
        let e = open(&gone, 10, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            cached(&gone, 10, None).unwrap().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_big_blob_is_verified_and_handed_back_open_at_its_start() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..(WHOLE as usize * 3)).map(|i| (i % 251) as u8).collect();
        let (path, d) = blob(dir.path(), &bytes);
        let size = bytes.len() as u64;
        assert!(
            cached(&path, size, Some(&d)).is_none(),
            "big blobs take the blocking way"
        );
        let Opened::File(mut f) = open(&path, size, Some(&d)).unwrap() else {
            panic!("a big blob comes as its file")
        };
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, bytes);
        let mut damaged = bytes.clone();
        damaged[size as usize - 1] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            open(&path, size, Some(&d)).unwrap(),
            Opened::Corrupt
        ));
        // Unverified, a big blob is served as the file it is.
        assert!(matches!(open(&path, size, None).unwrap(), Opened::File(_)));
    }
}
