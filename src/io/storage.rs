//! `IoStorage`: the `vsr::storage::Storage` interface over the io_uring loop, for one data file
//! opened with `O_DIRECT`.
//!
//! With `durable_writes`, every `Write` carries `RWF_DSYNC` (a `WriteCached` never does; a `Sync`
//! is an `fdatasync` through the ring): this disk has no FUA, so the kernel
//! follows the write with a cache flush and completes it only once both are done, without the
//! io-wq hop an `Fsync` entry costs. The replica runs this way, so a `Write` completion means
//! its bytes are durable. `kimberlite format` writes without it and calls `fsync` once at the end.
//!
//! `IoStorage` owns the process's one ring and lends it (`io`) to the message bus. Alone (format,
//! inspect, opening the replica) it is driven through `Storage::poll`; beside the bus, the
//! server loop runs the ring itself and hands each finished disk operation to `complete`.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::io::metrics::Histogram;
use crate::io::ring::{Completed, Io, Operation, Wait};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{Completion, IoError, IoKind, IoOwner, IoRequest, IoToken, Storage};

pub struct IoStorage {
    // Declared before `file` so that it drops first: `Io`'s drop waits for operations in
    // flight, which still use the file's descriptor.
    io: Io,
    file: File,
    size_bytes: u64,
    durable_writes: bool,
    in_flight: usize,
    written_bytes: u64,
    /// Latency of the WAL's writes: prepares, and header sectors (for the metrics).
    pub journal_prepare_writes: Histogram,
    pub journal_header_writes: Histogram,
}

impl IoStorage {
    /// Storage over `file`, which should be opened with `O_DIRECT` (see `io::data_file`). Its
    /// size is read once, here.
    pub fn new(file: File, durable_writes: bool) -> std::io::Result<IoStorage> {
        let size_bytes = file.metadata()?.len();
        let io = Io::new()?;
        Ok(IoStorage {
            io,
            file,
            size_bytes,
            durable_writes,
            in_flight: 0,
            written_bytes: 0,
            journal_prepare_writes: Histogram::default(),
            journal_header_writes: Histogram::default(),
        })
    }

    /// Whether every write carries `RWF_DSYNC`.
    pub fn durable_writes(&self) -> bool {
        self.durable_writes
    }

    /// Bytes of all writes completed without error so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// The ring, shared with the message bus. Disk operations must go through `Storage::submit`
    /// so that they are counted.
    pub fn io(&mut self) -> &mut Io {
        &mut self.io
    }

    /// Turns a finished disk operation, popped from the shared ring, into its completion.
    pub fn complete(&mut self, completed: Completed) -> Completion {
        assert!(self.in_flight > 0);
        let (request, buffer) = match completed.operation {
            Operation::Read { request, buffer, .. } => (request, buffer),
            Operation::Write { request, buffer, .. } => (request, buffer),
            Operation::Flush { request, buffer, .. } => (request, buffer),
            Operation::Sync { .. } => panic!("a sync completion outside IoStorage::sync"),
            operation => panic!("a network completion routed to storage: {operation:?}"),
        };
        let result = completed.result.map(|length| assert_eq!(length, request.length));
        if request.kind.is_write() && result.is_ok() {
            self.written_bytes += request.length as u64;
            match request.token.owner {
                IoOwner::JournalPrepare => self.journal_prepare_writes.observe(completed.duration),
                IoOwner::JournalHeaders => self.journal_header_writes.observe(completed.duration),
                _ => {}
            }
        }
        self.in_flight -= 1;
        Completion { request, buffer, result }
    }

    /// Makes every completed write durable: `fdatasync` (`data_only`) or `fsync`, through the
    /// ring. Waits for it; no request may be in flight.
    pub fn sync(&mut self, data_only: bool) -> Result<(), IoError> {
        assert_eq!(self.in_flight, 0, "sync waits for its own completion only");
        assert_eq!(self.io.in_flight() + self.io.completed_count(), 0);
        let token = IoToken { owner: IoOwner::Format, index: 0 };
        self.io.submit(Operation::Sync { fd: self.file.as_raw_fd(), token, data_only });
        loop {
            self.io.run(Wait::UntilCompletion);
            if let Some(completed) = self.io.pop_completed() {
                assert!(matches!(completed.operation, Operation::Sync { .. }));
                assert_eq!(self.io.in_flight(), 0);
                return completed.result.map(|_| ());
            }
        }
    }
}

impl Storage for IoStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        request.assert_valid(&buffer);
        assert!(request.offset + request.length as u64 <= self.size_bytes, "request past the file");
        let fd = self.file.as_raw_fd();
        let operation = match request.kind {
            IoKind::Read => Operation::Read { fd, request, buffer },
            IoKind::Write => Operation::Write { fd, request, buffer, durable: self.durable_writes },
            IoKind::WriteCached => Operation::Write { fd, request, buffer, durable: false },
            IoKind::Sync => Operation::Flush { fd, request, buffer },
        };
        self.io.submit(operation);
        self.in_flight += 1;
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        let wait = if self.in_flight > 0 { Wait::UntilCompletion } else { Wait::NonBlocking };
        self.io.run(wait);
        let mut count = 0;
        while count < completions_max {
            let Some(completed) = self.io.pop_completed() else { break };
            // Network operations are driven by the server loop, never through `poll`.
            assert!(!completed.operation.is_network());
            let completion = self.complete(completed);
            completions.push(completion);
            count += 1;
        }
        assert!(count > 0 || completions_max == 0 || self.in_flight == 0);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn size(&self) -> u64 {
        self.size_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::SECTOR_SIZE;
    use crate::io::data_file;
    use crate::io::scratch::{ScratchDirectory, request};
    use crate::vsr::message_pool::MessagePool;

    const FILE_SIZE: u64 = 4 * 1024 * 1024;

    /// A byte pattern that differs between requests and between sectors of one request.
    fn pattern(index: u32, position: usize) -> u8 {
        (index as usize * 31 + position / SECTOR_SIZE * 7 + position % 251) as u8
    }

    fn poll_all(storage: &mut IoStorage) -> Vec<Completion> {
        let mut completions = Vec::new();
        while storage.in_flight() > 0 {
            storage.poll(&mut completions, usize::MAX);
        }
        completions
    }

    #[test]
    fn write_then_read_back() {
        // Goal: a durable write through IoStorage reads back identical, into a separate buffer,
        // and the written bytes are counted.
        let scratch = ScratchDirectory::new("storage-roundtrip");
        let path = scratch.path.join("data");
        let data_file = data_file::create(&path, FILE_SIZE).unwrap();
        let mut storage = IoStorage::new(data_file.file, true).unwrap();
        assert_eq!(storage.size(), FILE_SIZE);
        let pool = MessagePool::new(2, 2 * SECTOR_SIZE);
        let mut buffer = pool.get();
        for (position, byte) in buffer.buffer_mut_unique().iter_mut().enumerate() {
            *byte = pattern(1, position);
        }
        storage.submit(request(IoKind::Write, 1, 8 * SECTOR_SIZE as u64, 2 * SECTOR_SIZE), buffer);
        let completions = poll_all(&mut storage);
        assert_eq!(completions.len(), 1);
        assert_eq!(completions[0].result, Ok(()));
        assert_eq!(storage.written_bytes(), 2 * SECTOR_SIZE as u64);
        drop(completions);
        let mut buffer = pool.get();
        buffer.buffer_mut_unique().fill(0);
        storage.submit(request(IoKind::Read, 2, 8 * SECTOR_SIZE as u64, 2 * SECTOR_SIZE), buffer);
        let completions = poll_all(&mut storage);
        assert_eq!(completions[0].result, Ok(()));
        let bytes = completions[0].buffer.buffer();
        assert!(bytes.iter().enumerate().all(|(position, byte)| *byte == pattern(1, position)));
        assert_eq!(storage.sync(true), Ok(()));
    }

    #[test]
    fn concurrent_requests_at_many_offsets_complete_with_their_data() {
        // Goal: writes, then reads, of different lengths and offsets, all in flight at once, each
        // complete once and move exactly their own bytes (buffer_offset included).
        let scratch = ScratchDirectory::new("storage-concurrent");
        let data_file = data_file::create(&scratch.path.join("data"), FILE_SIZE).unwrap();
        let mut storage = IoStorage::new(data_file.file, false).unwrap();
        let sectors: [(u64, usize, usize); 8] = [
            (0, 1, 0),
            (1, 3, 1),
            (7, 16, 0),
            (40, 64, 2),
            (200, 1, 0),
            (300, 5, 3),
            (512, 256, 0),
            (900, 2, 1),
        ];
        let pool = MessagePool::new(2 * sectors.len(), 260 * SECTOR_SIZE);
        for (index, (sector, count, buffer_sector)) in sectors.iter().enumerate() {
            let mut buffer = pool.get();
            for (position, byte) in buffer.buffer_mut_unique().iter_mut().enumerate() {
                *byte = pattern(index as u32, position);
            }
            let offset = sector * SECTOR_SIZE as u64;
            let mut request = request(IoKind::Write, index as u32, offset, count * SECTOR_SIZE);
            request.buffer_offset = buffer_sector * SECTOR_SIZE;
            storage.submit(request, buffer);
        }
        assert_eq!(storage.in_flight(), sectors.len());
        let written = poll_all(&mut storage);
        assert!(written.iter().all(|completion| completion.result.is_ok()));
        drop(written);
        for (index, (sector, count, _)) in sectors.iter().enumerate() {
            let mut buffer = pool.get();
            buffer.buffer_mut_unique().fill(0xEE);
            let offset = sector * SECTOR_SIZE as u64;
            storage
                .submit(request(IoKind::Read, index as u32, offset, count * SECTOR_SIZE), buffer);
        }
        let read = poll_all(&mut storage);
        assert_eq!(read.len(), sectors.len());
        for completion in &read {
            assert_eq!(completion.result, Ok(()));
            let index = completion.request.token.index;
            let buffer_sector = sectors[index as usize].2;
            let expected = (0..completion.request.length)
                .map(|position| pattern(index, buffer_sector * SECTOR_SIZE + position));
            assert!(
                completion.buffer.buffer()[..completion.request.length]
                    .iter()
                    .copied()
                    .eq(expected)
            );
        }
    }

    #[test]
    fn read_past_the_end_of_a_truncated_file_is_end_of_file() {
        // Goal: a file cut short under us (its size read at open is stale) gives EndOfFile for a
        // read wholly or partly past its end, and no panic.
        let scratch = ScratchDirectory::new("storage-eof");
        let path = scratch.path.join("data");
        let data_file = data_file::create(&path, FILE_SIZE).unwrap();
        let mut storage = IoStorage::new(data_file.file, false).unwrap();
        let half = FILE_SIZE / 2;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(half).unwrap();
        let pool = MessagePool::new(2, 2 * SECTOR_SIZE);
        storage.submit(request(IoKind::Read, 0, half, SECTOR_SIZE), pool.get());
        storage.submit(
            request(IoKind::Read, 1, half - SECTOR_SIZE as u64, 2 * SECTOR_SIZE),
            pool.get(),
        );
        let completions = poll_all(&mut storage);
        assert_eq!(completions.len(), 2);
        assert!(completions.iter().all(|completion| completion.result == Err(IoError::EndOfFile)));
    }

    #[test]
    fn os_error_surfaces_as_errno() {
        // Goal: a write through a read-only descriptor completes with Errno(EBADF).
        let scratch = ScratchDirectory::new("storage-errno");
        let path = scratch.path.join("data");
        drop(data_file::create(&path, FILE_SIZE).unwrap());
        let data_file = data_file::open(&path, true).unwrap();
        let mut storage = IoStorage::new(data_file.file, true).unwrap();
        let pool = MessagePool::new(1, SECTOR_SIZE);
        storage.submit(request(IoKind::Write, 0, 0, SECTOR_SIZE), pool.get());
        let completions = poll_all(&mut storage);
        assert_eq!(completions[0].result, Err(IoError::Errno(libc::EBADF)));
        assert_eq!(storage.written_bytes(), 0);
    }
}
