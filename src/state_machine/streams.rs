//! The streams table: every stream's few words of state, in a fixed array of `streams_max`
//! entries in creation order, found through an open-addressing index (linear probing, load at
//! most 1/2). Nothing is ever removed and nothing grows: all three arrays are allocated by
//! `Streams::new`.
//!
//! Per stream: tenant, next offset, chain checksum, how many grid blocks hold its events, where
//! its events in the open block start, and its skip-list frontier (`levels` block pointers).
//! No per-event or per-block location is kept in memory: the rest of a stream's index is the
//! skip pointers inside the grid blocks themselves.

use crate::state_machine::types::BlockPointer;
use crate::vsr::header::Checksum;

/// A stream's state. `open_*` describe its events in the open (not yet sealed) block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    pub id: u64,
    pub tenant: u64,
    pub offset_next: u64,
    /// Sealed blocks holding events of the stream: the ordinal of the newest.
    pub blocks: u64,
    pub chain: Checksum,
    /// Byte offset, in the open block, of the stream's first record there.
    pub open_record_first: u32,
    /// The stream's events in the open block (the last ones it has).
    pub open_event_count: u32,
}

impl Stream {
    /// The offset of the stream's first event in the open block (= end of its sealed events).
    pub fn sealed_end(&self) -> u64 {
        self.offset_next - u64::from(self.open_event_count)
    }
}

const INDEX_EMPTY: u32 = u32::MAX;

pub struct Streams {
    entries: Vec<Stream>,
    /// `levels` pointers per entry.
    frontiers: Vec<BlockPointer>,
    /// Open-addressing slots holding entry indexes, a power of two at least twice the entries.
    index: Vec<u32>,
    levels: usize,
    streams_max: u32,
}

impl Streams {
    pub fn new(streams_max: u32, levels: usize) -> Streams {
        assert!(streams_max > 0);
        assert!(streams_max < INDEX_EMPTY);
        assert!(levels > 0);
        let entries_max = streams_max as usize;
        let slots = (entries_max * 2).next_power_of_two();
        Streams {
            entries: Vec::with_capacity(entries_max),
            frontiers: vec![BlockPointer::default(); entries_max * levels],
            index: vec![INDEX_EMPTY; slots],
            levels,
            streams_max,
        }
    }

    /// The bytes `new` allocates.
    pub fn memory_bytes(streams_max: u32, levels: usize) -> usize {
        let entries_max = streams_max as usize;
        let slots = (entries_max * 2).next_power_of_two();
        entries_max * (size_of::<Stream>() + levels * size_of::<BlockPointer>())
            + slots * size_of::<u32>()
    }

    /// Forgets every stream (before loading a checkpoint).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.frontiers.fill(BlockPointer::default());
        self.index.fill(INDEX_EMPTY);
    }

    pub fn count(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.streams_max
    }

    fn slot_first(&self, id: u64) -> usize {
        let bits = self.index.len().trailing_zeros();
        // Fibonacci hashing: the top bits of a multiplication by 2^64 / golden ratio.
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - bits)) as usize
    }

    /// The entry index of stream `id`, if it exists. At most `streams_max + 1` probes: the
    /// index always has empty slots.
    pub fn lookup(&self, id: u64) -> Option<u32> {
        let mask = self.index.len() - 1;
        let mut slot = self.slot_first(id);
        loop {
            let entry = self.index[slot];
            if entry == INDEX_EMPTY {
                return None;
            }
            if self.entries[entry as usize].id == id {
                return Some(entry);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Adds a stream with no events; the caller checked it is new and the table is not full.
    pub fn insert(&mut self, id: u64, tenant: u64, chain: Checksum) -> u32 {
        assert!(!self.is_full());
        assert!(self.lookup(id).is_none());
        let entry = self.count();
        let mask = self.index.len() - 1;
        let mut slot = self.slot_first(id);
        while self.index[slot] != INDEX_EMPTY {
            slot = (slot + 1) & mask;
        }
        self.index[slot] = entry;
        assert!(self.entries.len() < self.entries.capacity());
        self.entries.push(Stream { id, tenant, chain, ..Stream::default() });
        entry
    }

    pub fn get(&self, entry: u32) -> &Stream {
        &self.entries[entry as usize]
    }

    pub fn get_mut(&mut self, entry: u32) -> &mut Stream {
        &mut self.entries[entry as usize]
    }

    pub fn frontier(&self, entry: u32) -> &[BlockPointer] {
        assert!(entry < self.count());
        &self.frontiers[entry as usize * self.levels..][..self.levels]
    }

    pub fn frontier_mut(&mut self, entry: u32) -> &mut [BlockPointer] {
        assert!(entry < self.count());
        &mut self.frontiers[entry as usize * self.levels..][..self.levels]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_finds_every_stream_and_misses_others() {
        // Goal: at full load every inserted id is found at its entry and absent ids end a probe.
        let mut streams = Streams::new(100, 4);
        for id in 1..=100u64 {
            assert_eq!(streams.insert(id * 7919, id, Checksum(0)), (id - 1) as u32);
        }
        assert!(streams.is_full());
        for id in 1..=100u64 {
            assert_eq!(streams.lookup(id * 7919), Some((id - 1) as u32));
            assert_eq!(streams.get((id - 1) as u32).tenant, id);
            assert_eq!(streams.lookup(id * 7919 + 1), None);
        }
        streams.reset();
        assert_eq!(streams.count(), 0);
        assert_eq!(streams.lookup(7919), None);
    }
}
