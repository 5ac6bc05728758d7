//! Fuzz target bodies, shared by the cargo-fuzz crate in `fuzz/` and by the corpus replay test
//! that runs under `cargo test`, so CI replays every committed input.
//!
//! Each target feeds untrusted bytes to a validator and checks what must hold whatever the
//! bytes: no panic, and anything accepted is internally consistent.

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::HEADER_SIZE;
use crate::vsr::header::Header;

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
}
