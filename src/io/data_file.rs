//! Creating and opening data files: direct I/O (`O_DIRECT`) always, an exclusive `flock` so two
//! replicas never share a file, and an fsync at open so we never read data that a crashed
//! process wrote but did not make durable (the page cache may still hold it).
//!
//! Every failure is a `DataFileError` whose message names the path and the cause in one line,
//! for an operator to act on. Nothing here panics on what the operating system returns.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vsr::storage::IoError;

/// Attempts to take the file lock. io_uring can keep a dead process's descriptor, and so its
/// lock, alive for a moment after the process exits (up to 669 ms seen after a kill -9 on a busy
/// machine): 2 s in all, so that a restart right after a crash does not fail.
const LOCK_ATTEMPTS: u32 = 40;
const LOCK_RETRY_DELAY_MS: u64 = 50;

/// `statfs` magic numbers of filesystems whose "direct I/O" is memory: accepted, not durable.
const TMPFS_MAGIC: libc::__fsword_t = 0x0102_1994;
const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;

/// An open data file, locked, with direct I/O enabled.
#[derive(Debug)]
pub struct DataFile {
    pub file: File,
    pub size_bytes: u64,
}

/// Why a data file could not be created, opened or formatted.
#[derive(Debug)]
pub enum DataFileError {
    InvalidConfig {
        path: PathBuf,
        reason: &'static str,
    },
    AlreadyExists {
        path: PathBuf,
    },
    NotFound {
        path: PathBuf,
    },
    NotRegularFile {
        path: PathBuf,
    },
    ParentMissing {
        path: PathBuf,
    },
    ParentNotDirectory {
        path: PathBuf,
    },
    ParentNotWritable {
        path: PathBuf,
    },
    PermissionDenied {
        path: PathBuf,
    },
    ReadOnlyFilesystem {
        path: PathBuf,
    },
    DirectIoUnsupported {
        path: PathBuf,
        reason: &'static str,
    },
    Locked {
        path: PathBuf,
    },
    /// Any other failure of `operation` (an OS error, or a short transfer).
    Io {
        path: PathBuf,
        operation: &'static str,
        error: IoError,
    },
}

impl DataFileError {
    pub fn path(&self) -> &Path {
        match self {
            DataFileError::InvalidConfig { path, .. }
            | DataFileError::AlreadyExists { path }
            | DataFileError::NotFound { path }
            | DataFileError::NotRegularFile { path }
            | DataFileError::ParentMissing { path }
            | DataFileError::ParentNotDirectory { path }
            | DataFileError::ParentNotWritable { path }
            | DataFileError::PermissionDenied { path }
            | DataFileError::ReadOnlyFilesystem { path }
            | DataFileError::DirectIoUnsupported { path, .. }
            | DataFileError::Locked { path }
            | DataFileError::Io { path, .. } => path,
        }
    }
}

impl std::fmt::Display for DataFileError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path().display();
        let parent = parent_directory(self.path());
        let parent = parent.display();
        match self {
            DataFileError::InvalidConfig { reason, .. } => {
                write!(formatter, "{path}: invalid configuration: {reason}")
            }
            DataFileError::AlreadyExists { .. } => {
                write!(formatter, "{path}: already exists (format never overwrites a data file)")
            }
            DataFileError::NotFound { .. } => write!(formatter, "{path}: no such data file"),
            DataFileError::NotRegularFile { .. } => {
                write!(formatter, "{path}: not a regular file")
            }
            DataFileError::ParentMissing { .. } => {
                write!(formatter, "{path}: directory {parent} does not exist")
            }
            DataFileError::ParentNotDirectory { .. } => {
                write!(formatter, "{path}: {parent} is not a directory")
            }
            DataFileError::ParentNotWritable { .. } => {
                write!(formatter, "{path}: directory {parent} is not writable")
            }
            DataFileError::PermissionDenied { .. } => {
                write!(formatter, "{path}: permission denied")
            }
            DataFileError::ReadOnlyFilesystem { .. } => {
                write!(formatter, "{path}: the filesystem is read-only")
            }
            DataFileError::DirectIoUnsupported { reason, .. } => {
                write!(formatter, "{path}: the filesystem does not support direct I/O: {reason}")
            }
            DataFileError::Locked { .. } => {
                write!(formatter, "{path}: locked by another process (is a replica running?)")
            }
            DataFileError::Io { operation, error, .. } => {
                write!(formatter, "{path}: {operation} failed: {error}")
            }
        }
    }
}

impl std::error::Error for DataFileError {}

/// Creates a new data file of `size_bytes` (its length set, its blocks not yet written: the
/// caller writes every byte) with mode 0600, locked exclusively, with direct I/O. Refuses a
/// path that exists. On failure, a file this call created is removed.
pub fn create(path: &Path, size_bytes: u64) -> Result<DataFile, DataFileError> {
    check_parent_directory(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| create_error(path, &error))?;
    // The file is ours from here on (O_EXCL): remove it if it cannot be made usable.
    let prepared = refuse_volatile_filesystem(&file, path)
        .and_then(|()| enable_direct_io(&file, path))
        .and_then(|()| lock(&file, path, true))
        .and_then(|()| {
            file.set_len(size_bytes).map_err(|error| io_error(path, "setting the length", &error))
        });
    match prepared {
        Ok(()) => Ok(DataFile { file, size_bytes }),
        Err(error) => {
            drop(file);
            let _ = std::fs::remove_file(path);
            Err(error)
        }
    }
}

/// Opens an existing data file with direct I/O, locked (shared when `read_only`, so that
/// `inspect` can run beside nothing but other readers), and fsyncs it before any read.
pub fn open(path: &Path, read_only: bool) -> Result<DataFile, DataFileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(path)
        .map_err(|error| open_error(path, &error))?;
    let metadata = file.metadata().map_err(|error| io_error(path, "stat", &error))?;
    if !metadata.is_file() {
        return Err(DataFileError::NotRegularFile { path: path.to_path_buf() });
    }
    refuse_volatile_filesystem(&file, path)?;
    lock(&file, path, !read_only)?;
    // A crashed process's writes may sit in the page cache without being durable: make them
    // durable (or fail) before trusting anything we read.
    file.sync_all().map_err(|error| io_error(path, "fsync", &error))?;
    let size_bytes = file.metadata().map_err(|error| io_error(path, "stat", &error))?.len();
    Ok(DataFile { file, size_bytes })
}

/// Makes the directory entries in `directory` durable (after creating or removing a file).
pub fn fsync_directory(directory: &Path) -> Result<(), DataFileError> {
    let file = File::open(directory).map_err(|error| io_error(directory, "open", &error))?;
    file.sync_all().map_err(|error| io_error(directory, "fsync of the directory", &error))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_parent_directory(path: &Path) -> Result<(), DataFileError> {
    let parent = parent_directory(path);
    let path = path.to_path_buf();
    match std::fs::metadata(&parent) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(DataFileError::ParentNotDirectory { path }),
        Err(error) => match error.raw_os_error() {
            Some(libc::ENOENT) => Err(DataFileError::ParentMissing { path }),
            Some(libc::ENOTDIR) => Err(DataFileError::ParentNotDirectory { path }),
            Some(libc::EACCES) => Err(DataFileError::ParentNotWritable { path }),
            _ => Err(io_error(&path, "stat of the directory", &error)),
        },
    }
}

fn create_error(path: &Path, error: &std::io::Error) -> DataFileError {
    let path_buf = path.to_path_buf();
    match error.raw_os_error() {
        Some(libc::EEXIST) => DataFileError::AlreadyExists { path: path_buf },
        Some(libc::ENOENT) => DataFileError::ParentMissing { path: path_buf },
        Some(libc::ENOTDIR) => DataFileError::ParentNotDirectory { path: path_buf },
        Some(libc::EACCES) | Some(libc::EPERM) => {
            DataFileError::ParentNotWritable { path: path_buf }
        }
        Some(libc::EROFS) => DataFileError::ReadOnlyFilesystem { path: path_buf },
        Some(libc::EISDIR) => DataFileError::AlreadyExists { path: path_buf },
        _ => io_error(path, "create", error),
    }
}

fn open_error(path: &Path, error: &std::io::Error) -> DataFileError {
    let path_buf = path.to_path_buf();
    match error.raw_os_error() {
        Some(libc::ENOENT) => DataFileError::NotFound { path: path_buf },
        Some(libc::EACCES) | Some(libc::EPERM) => {
            DataFileError::PermissionDenied { path: path_buf }
        }
        Some(libc::EROFS) => DataFileError::ReadOnlyFilesystem { path: path_buf },
        Some(libc::EISDIR) => DataFileError::NotRegularFile { path: path_buf },
        Some(libc::EINVAL) => DataFileError::DirectIoUnsupported {
            path: path_buf,
            reason: "opening with O_DIRECT was refused",
        },
        _ => io_error(path, "open", error),
    }
}

fn io_error(path: &Path, operation: &'static str, error: &std::io::Error) -> DataFileError {
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    DataFileError::Io { path: path.to_path_buf(), operation, error: IoError::Errno(errno) }
}

/// Refuses tmpfs and ramfs: recent kernels accept `O_DIRECT` there, but the data lives in
/// memory and a reboot loses every acknowledged write.
fn refuse_volatile_filesystem(file: &File, path: &Path) -> Result<(), DataFileError> {
    let mut statfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the descriptor is open for the life of `file`, and `statfs` points to writable
    // memory of the size the call fills.
    let result =
        unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(file), statfs.as_mut_ptr()) };
    if result != 0 {
        return Err(io_error(path, "statfs", &std::io::Error::last_os_error()));
    }
    // SAFETY: fstatfs returned 0, so it initialized the whole struct.
    let statfs = unsafe { statfs.assume_init() };
    let filesystem_type = statfs.f_type;
    if filesystem_type == TMPFS_MAGIC || filesystem_type == RAMFS_MAGIC {
        return Err(DataFileError::DirectIoUnsupported {
            path: path.to_path_buf(),
            reason: "tmpfs/ramfs keep data in memory only, so writes would not survive a reboot",
        });
    }
    Ok(())
}

/// Turns on `O_DIRECT` for a descriptor opened without it. Done after creation, not in the
/// create call itself, because a filesystem that refuses `O_DIRECT` fails that call only after
/// it has created the file.
fn enable_direct_io(file: &File, path: &Path) -> Result<(), DataFileError> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: F_GETFL on a descriptor that `file` keeps open reads its flags and nothing else.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io_error(path, "fcntl(F_GETFL)", &std::io::Error::last_os_error()));
    }
    // SAFETY: F_SETFL on a descriptor that `file` keeps open changes only its status flags.
    let result = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) };
    if result < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EINVAL) {
            return Err(DataFileError::DirectIoUnsupported {
                path: path.to_path_buf(),
                reason: "O_DIRECT was refused",
            });
        }
        return Err(io_error(path, "fcntl(F_SETFL, O_DIRECT)", &error));
    }
    Ok(())
}

/// `flock(LOCK_EX | LOCK_NB)` (or `LOCK_SH`), retried a few times.
fn lock(file: &File, path: &Path, exclusive: bool) -> Result<(), DataFileError> {
    for attempt in 0..LOCK_ATTEMPTS {
        let result = if exclusive { file.try_lock() } else { file.try_lock_shared() };
        match result {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if attempt + 1 < LOCK_ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(LOCK_RETRY_DELAY_MS));
                }
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(io_error(path, "flock", &error));
            }
        }
    }
    Err(DataFileError::Locked { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch::ScratchDirectory;

    #[test]
    fn create_refuses_existing_missing_and_non_directory_parents() {
        // Goal: each way a create can be refused gives its own error naming the path, and
        // leaves no file behind.
        let scratch = ScratchDirectory::new("data-file-create");
        let path = scratch.path.join("data");
        let created = create(&path, 1 << 20).unwrap();
        assert_eq!(created.size_bytes, 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let error = create(&path, 1 << 20).unwrap_err();
        assert!(matches!(error, DataFileError::AlreadyExists { .. }), "{error}");
        assert!(error.to_string().contains(&*path.to_string_lossy()));
        let missing = scratch.path.join("missing").join("data");
        let error = create(&missing, 1 << 20).unwrap_err();
        assert!(matches!(error, DataFileError::ParentMissing { .. }), "{error}");
        assert!(!missing.exists());
        let under_file = path.join("data");
        let error = create(&under_file, 1 << 20).unwrap_err();
        assert!(matches!(error, DataFileError::ParentNotDirectory { .. }), "{error}");
    }

    #[test]
    fn open_locks_out_a_second_writer_and_reports_size() {
        // Goal: open returns the size; a second writer is refused with Locked while the first
        // holds the file; readers share; a missing file is NotFound.
        let scratch = ScratchDirectory::new("data-file-open");
        let path = scratch.path.join("data");
        drop(create(&path, 2 << 20).unwrap());
        let writer = open(&path, false).unwrap();
        assert_eq!(writer.size_bytes, 2 << 20);
        let error = open(&path, false).unwrap_err();
        assert!(matches!(error, DataFileError::Locked { .. }), "{error}");
        drop(writer);
        let reader = open(&path, true).unwrap();
        let second_reader = open(&path, true).unwrap();
        assert!(matches!(open(&path, false), Err(DataFileError::Locked { .. })));
        drop((reader, second_reader));
        let error = open(&scratch.path.join("nothing"), false).unwrap_err();
        assert!(matches!(error, DataFileError::NotFound { .. }), "{error}");
        fsync_directory(&scratch.path).unwrap();
    }
}
