//! `kimberlite format` on a real disk: create the data file, write every byte of it through
//! `vsr::format::format` over `IoStorage`, then make the file and its directory entry durable.
//!
//! Every byte is written rather than `fallocate`d or left as a hole, so that later overwrites in
//! the replica's hot path find allocated, written blocks and pay no metadata writes (measured:
//! overwrites complete inline; writes into unwritten extents add metadata I/O to each commit).
//! A format that fails after creating the file removes it: a half-written data file must never
//! be mistaken for a formatted one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::constants::{FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT};
use crate::io::data_file::{self, DataFileError};
use crate::io::storage::IoStorage;
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::MessagePool;
use crate::vsr::storage::IoError;
use crate::vsr::superblock::SuperBlock;

/// Where one zone lives in the new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneExtent {
    pub zone: Zone,
    pub offset: u64,
    pub size_bytes: u64,
}

/// What a format did.
#[derive(Debug)]
pub struct FormatReport {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub written_bytes: u64,
    /// From creating the file to the directory fsync, both included.
    pub elapsed: Duration,
    pub zones: [ZoneExtent; Zone::ALL.len()],
}

/// Creates and formats the data file at `path` for `config`. Refuses an invalid config and an
/// existing path; removes the file again if anything fails after creating it.
pub fn format_file(path: &Path, config: &Config) -> Result<FormatReport, DataFileError> {
    format_file_with(path, config, false)
}

/// `format_file` for a replica that replaces one whose data file was lost: the superblock is
/// marked `log_lost`, so the replica takes no part in view changes until it holds the
/// cluster's log (it acknowledged prepares that its new, empty log does not have).
pub fn format_file_rejoin(path: &Path, config: &Config) -> Result<FormatReport, DataFileError> {
    assert!(config.replica_count > 1);
    format_file_with(path, config, true)
}

fn format_file_with(
    path: &Path,
    config: &Config,
    log_lost: bool,
) -> Result<FormatReport, DataFileError> {
    if let Some(reason) = config.invalid() {
        return Err(DataFileError::InvalidConfig { path: path.to_path_buf(), reason });
    }
    let layout = Layout::new(config);
    let size_bytes = layout.file_size();
    let start = Instant::now();
    let data_file = data_file::create(path, size_bytes)?;
    assert_eq!(data_file.size_bytes, size_bytes);
    let written_bytes = match write_and_sync(path, data_file, config, log_lost) {
        Ok(written_bytes) => written_bytes,
        Err(error) => {
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
    };
    assert_eq!(written_bytes, size_bytes, "format writes every byte");
    let zones = Zone::ALL.map(|zone| ZoneExtent {
        zone,
        offset: layout.zone_offset(zone),
        size_bytes: layout.zone_size(zone),
    });
    Ok(FormatReport {
        path: path.to_path_buf(),
        size_bytes,
        written_bytes,
        elapsed: start.elapsed(),
        zones,
    })
}

/// Writes the formatted bytes, fsyncs the file, closes it and fsyncs its directory. Returns the
/// bytes written.
fn write_and_sync(
    path: &Path,
    data_file: data_file::DataFile,
    config: &Config,
    log_lost: bool,
) -> Result<u64, DataFileError> {
    let io_error = |operation: &'static str, error: IoError| DataFileError::Io {
        path: path.to_path_buf(),
        operation,
        error,
    };
    let mut storage = IoStorage::new(data_file.file, false).map_err(|error| {
        io_error("io_uring setup", IoError::Errno(error.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    let pool = MessagePool::new(FORMAT_WRITES_IN_FLIGHT, FORMAT_WRITE_SIZE);
    crate::vsr::format::format(&mut storage, &pool, config)
        .map_err(|error| io_error("writing the formatted file", error))?;
    let written_bytes = storage.written_bytes();
    if log_lost {
        let mut superblock = SuperBlock::open_blocking(&mut storage)
            .map_err(|_| io_error("reading back the new superblock", IoError::Errno(libc::EIO)))?;
        let mut state = superblock.working().vsr_state();
        state.log_lost = 1;
        superblock
            .update_blocking(&mut storage, &state, None)
            .map_err(|_| io_error("marking the superblock log_lost", IoError::Errno(libc::EIO)))?;
    }
    // fsync, not fdatasync: the file's length and block map are new metadata.
    storage.sync(false).map_err(|error| io_error("fsync", error))?;
    drop(storage);
    data_file::fsync_directory(&data_file::parent_directory(path))?;
    Ok(written_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::SECTOR_SIZE;
    use crate::io::scratch::ScratchDirectory;
    use crate::vsr::format::fill_range;
    use crate::vsr::header::ClusterId;
    use crate::vsr::header::ReplicaIndex;

    fn small_config() -> Config {
        Config::small(ClusterId(5), ReplicaIndex(0), 1)
    }

    #[test]
    fn format_file_writes_exactly_the_formatted_bytes() {
        // Goal: the file has Layout::file_size bytes, each equal to vsr::format::fill_range, and
        // it opens afterwards with that size.
        let scratch = ScratchDirectory::new("format-bytes");
        let path = scratch.path.join("0_0.kimberlite");
        let config = small_config();
        let report = format_file(&path, &config).unwrap();
        let layout = Layout::new(&config);
        assert_eq!(report.size_bytes, layout.file_size());
        assert_eq!(report.written_bytes, layout.file_size());
        assert_eq!(report.zones[2].zone, Zone::WalPrepares);
        assert_eq!(report.zones[2].size_bytes, 64 * 12288);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, layout.file_size());
        let mut expected = vec![0; 64 * SECTOR_SIZE];
        for (index, chunk) in bytes.chunks(expected.len()).enumerate() {
            let expected = &mut expected[..chunk.len()];
            fill_range(&config, (index * 64 * SECTOR_SIZE) as u64, expected);
            assert!(chunk == expected, "bytes differ in chunk {index}");
        }
        let opened = data_file::open(&path, true).unwrap();
        assert_eq!(opened.size_bytes, layout.file_size());
    }

    #[test]
    fn format_refuses_existing_path_missing_parent_and_tmpfs() {
        // Goal: each refusal is its own error, names the path, leaves no file, and does not
        // panic; an existing file is left untouched.
        let scratch = ScratchDirectory::new("format-refusals");
        let config = small_config();
        let existing = scratch.path.join("existing");
        std::fs::write(&existing, b"precious").unwrap();
        let error = format_file(&existing, &config).unwrap_err();
        assert!(matches!(error, DataFileError::AlreadyExists { .. }), "{error}");
        assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
        let missing = scratch.path.join("no-such-directory").join("data");
        let error = format_file(&missing, &config).unwrap_err();
        assert!(matches!(error, DataFileError::ParentMissing { .. }), "{error}");
        assert!(error.to_string().contains("no-such-directory"), "{error}");
        let invalid = Config { journal_slot_count: 3, ..config };
        let error = format_file(&scratch.path.join("invalid"), &invalid).unwrap_err();
        assert!(matches!(error, DataFileError::InvalidConfig { .. }), "{error}");
        assert!(!scratch.path.join("invalid").exists());
        let shared_memory = Path::new("/dev/shm");
        if is_tmpfs(shared_memory) {
            let path = shared_memory.join(format!("kimberlite-format-test-{}", std::process::id()));
            let error = format_file(&path, &config).unwrap_err();
            assert!(matches!(error, DataFileError::DirectIoUnsupported { .. }), "{error}");
            assert!(!path.exists(), "the refused file was removed");
        }
    }

    fn is_tmpfs(path: &Path) -> bool {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return false };
        let path = path.to_string_lossy();
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(&*path) && fields.next() == Some("tmpfs")
        })
    }
}
