//! Scratch directories for tests that need real files. They live under `target/` in the
//! current directory, on the same filesystem as the crate (never `/tmp`, which may be a tmpfs
//! without real direct I/O), and are removed when dropped.

use std::path::PathBuf;

use crate::vsr::layout::Zone;
use crate::vsr::storage::{IoKind, IoOwner, IoRequest, IoToken};

/// A raw disk request of a test: `length` bytes at `offset`, into the buffer's start.
pub fn request(kind: IoKind, index: u32, offset: u64, length: usize) -> IoRequest {
    IoRequest {
        token: IoToken { owner: IoOwner::Benchmark, index },
        kind,
        zone: Zone::Grid,
        offset,
        length,
        buffer_offset: 0,
    }
}

pub struct ScratchDirectory {
    pub path: PathBuf,
}

impl ScratchDirectory {
    /// An empty directory unique to `name` and this process.
    pub fn new(name: &str) -> ScratchDirectory {
        let root = std::env::current_dir().expect("current directory").join("target");
        let path = root.join("io-tests").join(format!("{name}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).expect("remove a stale scratch directory");
        }
        std::fs::create_dir_all(&path).expect("create the scratch directory");
        ScratchDirectory { path }
    }
}

impl Drop for ScratchDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
