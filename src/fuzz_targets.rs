//! Fuzz target bodies, shared by the cargo-fuzz crate in `fuzz/` and by the corpus replay test
//! that runs under `cargo test`, so CI replays every committed input.
//!
//! Each target feeds untrusted bytes to a validator and checks what must hold whatever the
//! bytes: no panic, and anything accepted is internally consistent.

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{HEADER_SIZE, SUPERBLOCK_COPIES, SUPERBLOCK_COPY_SIZE};
use crate::sim::storage::MemoryStorage;
use crate::vsr::header::Header;
use crate::vsr::layout::Config;
use crate::vsr::superblock::{SuperBlock, SuperBlockHeader};

/// Header decoding and validation. The fuzzer rarely forges a CRC, so the input is also
/// re-checksummed and validated again, which drives `invalid()` through every command.
pub fn header_decode(data: &[u8]) {
    if let Ok(header) = Header::decode(data) {
        assert!(header.valid_checksum());
        assert_eq!(header.invalid(), None);
        assert_eq!(header.as_bytes(), &data[..HEADER_SIZE]);
    }
    let Ok((mut header, _)) = Header::read_from_prefix(data) else {
        assert!(data.len() < HEADER_SIZE);
        return;
    };
    header.set_checksum();
    match Header::decode(header.as_bytes()) {
        Ok(decoded) => {
            assert_eq!(decoded, header);
            assert!(decoded.command().is_some());
            assert!(decoded.size as usize >= HEADER_SIZE);
        }
        Err(reason) => {
            assert!(!reason.is_empty());
            assert_eq!(header.invalid(), Some(reason));
        }
    }
}

/// Superblock open from arbitrary bytes. The first input byte picks the starting image: odd
/// means the raw bytes are the whole superblock zone; even means a valid image (a formatted
/// superblock after a few updates) with the input applied as byte patches, which reaches the
/// quorum and chain rules far more often than random sectors do.
pub fn superblock_open(data: &[u8]) {
    let Some((mode, input)) = data.split_first() else {
        return;
    };
    let zone_size = SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE;
    let mut storage = MemoryStorage::new(zone_size as u64);
    if mode % 2 == 1 {
        for (index, byte) in storage.bytes_mut().iter_mut().enumerate() {
            *byte = input.get(index % input.len().max(1)).copied().unwrap_or(0);
        }
    } else {
        superblock_valid_image(&mut storage, mode / 2 % 4);
        for patch in input.chunks_exact(3) {
            let offset = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % zone_size;
            storage.bytes_mut()[offset] ^= patch[2] | 1;
        }
    }
    let mut read_only = SuperBlock::new();
    read_only.open_read_only(&mut storage);
    let read_only_result = read_only.complete_blocking(&mut storage);
    match SuperBlock::open_blocking(&mut storage) {
        Ok(superblock) => {
            assert!(read_only_result.is_ok());
            let working = superblock.working();
            assert!(working.valid_checksum());
            assert_eq!(working.invalid(), None);
            assert_eq!(working, read_only.working());
            // After open, every copy was repaired to the working superblock.
            let reopened = SuperBlock::open_blocking(&mut storage).expect("repaired file opens");
            assert_eq!(reopened.working(), working);
        }
        Err(error) => {
            assert!(read_only_result.is_err());
            assert!(!error.to_string().contains('\n'));
        }
    }
}

/// Formats the superblock zone and applies `updates` updates.
fn superblock_valid_image(storage: &mut MemoryStorage, updates: u8) {
    let config = Config::new(5, 1, 3);
    let mut superblock = SuperBlockHeader::format(&config);
    for copy in 0..SUPERBLOCK_COPIES {
        superblock.copy = copy as u16;
        let offset = copy * SUPERBLOCK_COPY_SIZE;
        storage.bytes_mut()[offset..offset + SUPERBLOCK_COPY_SIZE]
            .copy_from_slice(superblock.as_bytes());
    }
    let mut superblock = SuperBlock::open_blocking(storage).expect("formatted image opens");
    for update in 0..updates {
        let mut state = superblock.working().vsr_state();
        state.view += u32::from(update) + 1;
        state.commit_max += 3;
        superblock.update_blocking(storage, &state).expect("update of a healthy image");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `target` on every file in `fuzz/corpus/<name>/`, and checks there is at least one.
    fn replay(name: &str, target: fn(&[u8])) {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
        let mut count = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            target(&data);
            count += 1;
        }
        assert!(count > 0, "{} holds no corpus", directory.display());
    }

    #[test]
    fn header_decode_corpus_replays() {
        // Goal: every committed header_decode input (seeds and minimized crashers) passes.
        replay("header_decode", super::header_decode);
    }

    #[test]
    fn superblock_open_corpus_replays() {
        // Goal: every committed superblock_open input (seeds and minimized crashers) passes.
        replay("superblock_open", super::superblock_open);
    }
}
