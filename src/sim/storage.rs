//! An in-memory data file with the faults of a real disk: crashes that lose or tear writes in
//! flight, and sectors that rot. It implements `Storage` for unit tests and the simulator;
//! completions come back in submission order, or in a shuffled order when a seed is given.

use std::collections::VecDeque;

use crate::constants::SECTOR_SIZE;
use crate::sim::prng::Prng;
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{Completion, IoError, IoKind, IoRequest, Storage};

pub struct MemoryStorage {
    data: Vec<u8>,
    pending: VecDeque<(IoRequest, Message)>,
    prng: Option<Prng>,
}

impl MemoryStorage {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: u64) -> MemoryStorage {
        assert_eq!(size % SECTOR_SIZE as u64, 0);
        MemoryStorage { data: vec![0; size as usize], pending: VecDeque::new(), prng: None }
    }

    /// Complete requests in an order chosen by a PRNG seeded with `seed`.
    pub fn shuffle_completions(&mut self, seed: u64) {
        self.prng = Some(Prng::new(seed));
    }

    /// The disk's bytes, for crafting and inspecting test files.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Loses every request in flight, as a power failure would: pending writes never reach
    /// the disk and their buffers are released.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// Like `crash`, but each pending write first lands partially: only its first
    /// `sectors_written` sectors reach the disk (a torn write).
    pub fn crash_tearing_writes(&mut self, sectors_written: usize) {
        for (request, buffer) in self.pending.drain(..) {
            if request.kind == IoKind::Write {
                let length = request.length.min(sectors_written * SECTOR_SIZE);
                let start = request.offset as usize;
                let source = &buffer.buffer()[request.buffer_offset..][..length];
                self.data[start..start + length].copy_from_slice(source);
            }
        }
    }

    /// Flips one bit in the sector at absolute `offset`.
    pub fn corrupt_sector(&mut self, offset: u64) {
        assert_eq!(offset % SECTOR_SIZE as u64, 0);
        self.data[offset as usize + 17] ^= 0x40;
    }

    fn complete(&mut self, request: IoRequest, mut buffer: Message) -> Completion {
        let start = request.offset as usize;
        let result = if start + request.length > self.data.len() {
            Err(IoError::EndOfFile)
        } else {
            match request.kind {
                IoKind::Write => {
                    let source = &buffer.buffer()[request.buffer_offset..][..request.length];
                    self.data[start..start + request.length].copy_from_slice(source);
                }
                IoKind::Read => {
                    let target = &mut buffer.buffer_mut_unique()[request.buffer_offset..];
                    target[..request.length]
                        .copy_from_slice(&self.data[start..start + request.length]);
                }
            }
            Ok(())
        };
        Completion { request, buffer, result }
    }
}

impl Storage for MemoryStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        request.assert_valid(&buffer);
        self.pending.push_back((request, buffer));
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        let mut count = 0;
        while count < completions_max && !self.pending.is_empty() {
            let index = match &mut self.prng {
                Some(prng) => prng.index(self.pending.len()),
                None => 0,
            };
            let (request, buffer) = self.pending.remove(index).expect("index in range");
            completions.push(self.complete(request, buffer));
            count += 1;
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }
}
