//! The bytes of a freshly formatted data file, and the loop that writes them through any
//! `Storage`. Every byte of the file is written (no holes, no unwritten extents): superblock
//! copies, a reserved header in every WAL slot of both rings, and zeros everywhere else.

use zerocopy::IntoBytes;

use crate::constants::{
    FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT, HEADER_SIZE, SECTOR_SIZE, SUPERBLOCK_COPIES,
    SUPERBLOCK_COPY_SIZE, SUPERBLOCK_HEADER_SIZE,
};
use crate::vsr::journal::reserved_header;
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::MessagePool;
use crate::vsr::storage::{IoError, IoKind, IoOwner, IoRequest, IoToken, Storage};
use crate::vsr::superblock::SuperBlockHeader;

/// Fills `buffer` with the formatted bytes of the file range starting at `offset`.
pub fn fill_range(config: &Config, offset: u64, buffer: &mut [u8]) {
    assert_eq!(offset % SECTOR_SIZE as u64, 0);
    assert_eq!(buffer.len() % SECTOR_SIZE, 0);
    let layout = Layout::new(config);
    buffer.fill(0);
    let mut superblock = SuperBlockHeader::format(config);
    for (index, sector) in buffer.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        let sector_offset = offset + (index * SECTOR_SIZE) as u64;
        match layout.zone_of(sector_offset) {
            Some(Zone::Superblock) => {
                let copy = sector_offset / SUPERBLOCK_COPY_SIZE as u64;
                assert!((copy as usize) < SUPERBLOCK_COPIES);
                superblock.copy = copy as u16;
                let within = (sector_offset % SUPERBLOCK_COPY_SIZE as u64) as usize;
                // The header, then the session trailer: every session free, all zeros.
                if within < SUPERBLOCK_HEADER_SIZE {
                    sector.copy_from_slice(&superblock.as_bytes()[within..within + SECTOR_SIZE]);
                }
            }
            Some(Zone::WalHeaders) => {
                let first_slot =
                    (sector_offset - layout.zone_offset(Zone::WalHeaders)) / HEADER_SIZE as u64;
                for (entry, bytes) in sector.chunks_exact_mut(HEADER_SIZE).enumerate() {
                    let slot = first_slot + entry as u64;
                    if slot < layout.journal_slot_count {
                        bytes.copy_from_slice(reserved_header(config.cluster, slot).as_bytes());
                    }
                }
            }
            Some(Zone::WalPrepares) => {
                let zone_offset = sector_offset - layout.zone_offset(Zone::WalPrepares);
                if zone_offset.is_multiple_of(layout.message_size_max) {
                    let slot = zone_offset / layout.message_size_max;
                    let header = reserved_header(config.cluster, slot);
                    sector[..HEADER_SIZE].copy_from_slice(header.as_bytes());
                }
            }
            Some(Zone::ClientReplies) | Some(Zone::Grid) | None => {}
        }
    }
}

/// Writes the whole formatted file through `storage`, `FORMAT_WRITES_IN_FLIGHT` writes of
/// `FORMAT_WRITE_SIZE` at a time. The caller makes the result durable (fsync) afterwards.
pub fn format<S: Storage>(
    storage: &mut S,
    pool: &MessagePool,
    config: &Config,
) -> Result<(), IoError> {
    assert!(pool.buffer_size() >= FORMAT_WRITE_SIZE);
    assert!(pool.free_count() >= FORMAT_WRITES_IN_FLIGHT);
    let layout = Layout::new(config);
    let file_size = layout.file_size();
    assert!(storage.size() >= file_size);
    let mut offset: u64 = 0;
    let mut completions = Vec::with_capacity(FORMAT_WRITES_IN_FLIGHT);
    let mut result = Ok(());
    loop {
        while result.is_ok() && offset < file_size && storage.in_flight() < FORMAT_WRITES_IN_FLIGHT
        {
            let length = (file_size - offset).min(FORMAT_WRITE_SIZE as u64) as usize;
            let mut buffer = pool.get();
            fill_range(config, offset, &mut buffer.buffer_mut_unique()[..length]);
            let request = IoRequest {
                token: IoToken { owner: IoOwner::Format, index: 0 },
                kind: IoKind::Write,
                zone: layout.zone_of(offset).unwrap_or(Zone::Grid),
                offset,
                length,
                buffer_offset: 0,
            };
            storage.submit(request, buffer);
            offset += length as u64;
        }
        if storage.in_flight() == 0 {
            break;
        }
        completions.clear();
        storage.poll(&mut completions, FORMAT_WRITES_IN_FLIGHT);
        for completion in completions.drain(..) {
            assert_eq!(completion.request.token.owner, IoOwner::Format);
            if let Err(error) = completion.result {
                result = result.and(Err(error));
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::storage::MemoryStorage;
    use crate::vsr::header::ClusterId;
    use crate::vsr::header::Header;
    use crate::vsr::header::ReplicaIndex;
    use zerocopy::FromBytes;

    fn small_config() -> Config {
        Config::small(ClusterId(9), ReplicaIndex(1), 3)
    }

    #[test]
    fn formatted_file_has_superblocks_and_reserved_slots() {
        // Goal: format writes four valid superblock copies and a reserved header in every slot
        // of both WAL rings, and zeros elsewhere.
        let config = small_config();
        let layout = Layout::new(&config);
        let mut storage = MemoryStorage::new(layout.file_size());
        storage.bytes_mut().fill(0xAA);
        let pool = MessagePool::new(FORMAT_WRITES_IN_FLIGHT, FORMAT_WRITE_SIZE);
        format(&mut storage, &pool, &config).unwrap();
        let bytes = storage.bytes();
        for copy in 0..SUPERBLOCK_COPIES {
            let sector = &bytes[copy * SUPERBLOCK_COPY_SIZE..][..SUPERBLOCK_HEADER_SIZE];
            let superblock = SuperBlockHeader::read_from_bytes(sector).unwrap();
            assert!(superblock.valid_checksum());
            assert_eq!(usize::from(superblock.copy), copy);
            assert_eq!(superblock.config(), config);
        }
        for slot in 0..layout.journal_slot_count {
            let expected = reserved_header(config.cluster, slot);
            let at = layout.offset(Zone::WalHeaders, slot * HEADER_SIZE as u64) as usize;
            assert_eq!(Header::read_from_bytes(&bytes[at..at + HEADER_SIZE]).unwrap(), expected);
            let at = layout.offset(Zone::WalPrepares, slot * layout.message_size_max) as usize;
            assert_eq!(Header::read_from_bytes(&bytes[at..at + HEADER_SIZE]).unwrap(), expected);
        }
        let grid = layout.zone_offset(Zone::Grid) as usize;
        assert!(bytes[grid..].iter().all(|byte| *byte == 0));
    }
}
