//! An in-memory data file with the faults of a real disk: crashes that lose or tear writes in
//! flight, crashes that lose completed cached writes no flush has covered yet (`cache_model`),
//! sectors that rot, and slow-disk spells in which nothing completes. It implements
//! `Storage` for unit tests and the simulator; completions come back in submission order, or in a
//! shuffled order when a seed is given.
//!
//! By default every request is done the moment it is submitted (unit tests poll until idle).
//! The simulator also gives it a latency: each request then becomes due a number of ticks after
//! its submission, drawn from a seeded PRNG, and `poll` returns only due requests, so it may
//! return none while requests are in flight (the simulator's clock, not `poll`, moves time).

use std::collections::VecDeque;

use crate::constants::{IO_OPERATIONS_DISK_MAX, SECTOR_SIZE};
use crate::stdx::prng::Prng;
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{Completion, IoError, IoKind, IoRequest, Storage};

/// How long requests take, in ticks: uniform in `[min_ticks, 2 * mean_ticks - min_ticks]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub min_ticks: u64,
    pub mean_ticks: u64,
}

impl Latency {
    pub const ZERO: Latency = Latency { min_ticks: 0, mean_ticks: 0 };

    /// One draw from the distribution.
    pub fn sample(&self, prng: &mut Prng) -> u64 {
        assert!(self.min_ticks <= self.mean_ticks);
        let spread = 2 * (self.mean_ticks - self.min_ticks);
        self.min_ticks + prng.next_u64() % (spread + 1)
    }
}

struct Pending {
    request: IoRequest,
    buffer: Message,
    /// The tick from which the request may complete.
    due_tick: u64,
    /// A `Sync`: cached writes whose sequence is below this had completed when it was
    /// submitted, so it covers them.
    flush_sequence: u64,
}

/// A completed `WriteCached` that no flush has covered yet: a crash may lose it.
struct CachedWrite {
    offset: u64,
    length: usize,
    sequence: u64,
    /// Where in `CacheModel::before` the bytes it overwrote are kept.
    before_start: usize,
}

/// The disk's volatile write cache: completed cached writes not yet flushed, with the bytes
/// each overwrote, kept in a ring of bytes allocated once (the simulator counts a replica's
/// allocations, its disk's included). When the ring has no room for the next write, the
/// oldest writes are taken as written back to the media, as a real cache eventually does.
struct CacheModel {
    writes: VecDeque<CachedWrite>,
    before: Vec<u8>,
    /// Where the next write's before-image goes, unless it must wrap to the start.
    before_next: usize,
    sequence_next: u64,
    /// At a crash: sectors already settled at a version newer than the write being undone.
    settled: Vec<u64>,
    metrics: CacheMetrics,
}

crate::vsr::counters::counters! {
/// What the cache model saw, for a campaign's coverage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheMetrics {
    /// Cached writes a flush made durable.
    pub writes_flushed: u64,
    /// Cached writes taken as written back because the model's cache ran out of room.
    pub writes_written_back: u64,
    /// Sectors of cached writes a crash lost (they went back to what they held before).
    pub sectors_lost: u64,
    /// Sectors of cached writes that survived a crash unflushed.
    pub sectors_kept: u64,
    /// Sectors of unflushed cached writes that a durable write then covered (grid repair over
    /// a block state sync wrote, say).
    pub sectors_overwritten_durably: u64,
}
}

struct Timing {
    latency: Latency,
    prng: Prng,
}

/// Unreadable spots a simulated disk keeps at once.
const UNREADABLE_MAX: usize = 8;

pub struct MemoryStorage {
    data: Vec<u8>,
    pending: VecDeque<Pending>,
    prng: Option<Prng>,
    timing: Option<Timing>,
    tick: u64,
    /// A slow-disk spell: nothing completes before this tick.
    stalled_until_tick: u64,
    /// Without it, a cached write is durable once it completes.
    cache: Option<CacheModel>,
    /// Reads that touch one of these byte ranges fail with EIO (unreadable spots of the
    /// media), until a write covers the range (the drive remaps it).
    unreadable: Vec<std::ops::Range<u64>>,
}

impl MemoryStorage {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: u64) -> MemoryStorage {
        assert_eq!(size % SECTOR_SIZE as u64, 0);
        MemoryStorage {
            data: vec![0; size as usize],
            // As many as the io_uring driver can have in flight, so that submitting never
            // allocates (the simulator counts a replica's allocations, its disk's included).
            pending: VecDeque::with_capacity(IO_OPERATIONS_DISK_MAX),
            prng: None,
            timing: None,
            tick: 0,
            stalled_until_tick: 0,
            cache: None,
            unreadable: Vec::with_capacity(UNREADABLE_MAX),
        }
    }

    /// Makes the disk `size` bytes (new ones zero): another data file in place of this one,
    /// for a replica that is down (nothing in flight).
    pub fn resize(&mut self, size: u64) {
        assert!(self.pending.is_empty());
        assert!(size.is_multiple_of(SECTOR_SIZE as u64));
        self.data.resize(size as usize, 0);
        self.unreadable.retain(|range| range.end <= size);
    }

    /// From now on, every read that touches `range` fails with EIO, as an unreadable spot of
    /// the media does, until a write covers it (a drive remaps a sector it writes). At most
    /// `UNREADABLE_MAX` spots at once: the oldest gives way.
    pub fn unreadable(&mut self, range: std::ops::Range<u64>) {
        assert!(range.start < range.end && range.end <= self.data.len() as u64);
        if self.unreadable.len() == UNREADABLE_MAX {
            self.unreadable.remove(0);
        }
        self.unreadable.push(range);
    }

    /// From now on, completed cached writes stay in a volatile cache that a crash may lose,
    /// until a `Sync` submitted after them completes. The cache holds `size` bytes of writes
    /// (each at most that large).
    pub fn cache_model(&mut self, size: usize) {
        assert!(size > 0);
        assert!(size.is_multiple_of(SECTOR_SIZE));
        let sectors = size / SECTOR_SIZE;
        self.cache = Some(CacheModel {
            writes: VecDeque::with_capacity(sectors),
            before: vec![0; size],
            before_next: 0,
            sequence_next: 0,
            settled: Vec::with_capacity(sectors),
            metrics: CacheMetrics::default(),
        });
    }

    pub fn cache_metrics(&self) -> CacheMetrics {
        self.cache.as_ref().map(|cache| cache.metrics).unwrap_or_default()
    }

    /// Cached writes a crash could lose now.
    pub fn cached_unflushed(&self) -> usize {
        self.cache.as_ref().map_or(0, |cache| cache.writes.len())
    }

    /// A cached write completed: keep what it overwrites until a flush covers it.
    fn cache_write(&mut self, request: &IoRequest) {
        let Some(cache) = &mut self.cache else { return };
        let length = request.length;
        assert!(length <= cache.before.len(), "a cached write larger than the model's cache");
        let before_start =
            if cache.before_next + length <= cache.before.len() { cache.before_next } else { 0 };
        let overlaps = |write: &CachedWrite| {
            write.before_start < before_start + length
                && before_start < write.before_start + write.length
        };
        // Oldest first (written back, which a real cache may do at any time) until none is in
        // the way: writes take the ring in order, so those in the way are among the oldest.
        while cache.writes.iter().any(overlaps) {
            cache.writes.pop_front().expect("a write in the way");
            cache.metrics.writes_written_back += 1;
        }
        cache.before_next = before_start + length;
        let start = request.offset as usize;
        cache.before[before_start..][..length].copy_from_slice(&self.data[start..start + length]);
        let sequence = cache.sequence_next;
        cache.sequence_next += 1;
        cache.writes.push_back(CachedWrite {
            offset: request.offset,
            length: request.length,
            sequence,
            before_start,
        });
    }

    /// A `Sync` submitted when the cache's sequence was `flush_sequence` completed: every
    /// cached write that had completed by then is on the media.
    fn cache_flush(&mut self, flush_sequence: u64) {
        let Some(cache) = &mut self.cache else { return };
        while cache.writes.front().is_some_and(|write| write.sequence < flush_sequence) {
            cache.writes.pop_front().expect("checked");
            cache.metrics.writes_flushed += 1;
        }
    }

    /// A durable write landed over sectors that unflushed cached writes hold: it is newer than
    /// all of them and on the media, so whatever a crash does to those writes, the sectors keep
    /// its bytes. Their before-images take them: a lost cached write now goes back to them.
    fn cache_durable_write(&mut self, request: &IoRequest, source: &[u8]) {
        let Some(cache) = &mut self.cache else { return };
        let end = request.offset + request.length as u64;
        for write in &cache.writes {
            let overlap_start = write.offset.max(request.offset);
            let overlap_end = (write.offset + write.length as u64).min(end);
            if overlap_start >= overlap_end {
                continue;
            }
            let length = (overlap_end - overlap_start) as usize;
            let from = (overlap_start - request.offset) as usize;
            let to = write.before_start + (overlap_start - write.offset) as usize;
            cache.before[to..to + length].copy_from_slice(&source[from..from + length]);
            cache.metrics.sectors_overwritten_durably += (length / SECTOR_SIZE) as u64;
        }
    }

    /// A power failure's effect on the cache: each sector of the unflushed cached writes ends
    /// with one of the versions written to it since the last flush, or with what it held before
    /// them, as `prng` picks (without a PRNG every unflushed write is lost). Called before the
    /// writes in flight land, which are newer.
    fn cache_crash(&mut self, mut prng: Option<&mut Prng>) {
        let Some(cache) = &mut self.cache else { return };
        // Newest first: a sector kept at a version stops there; one lost goes back to the
        // version before, which an older write may in turn keep or lose.
        cache.settled.clear();
        while let Some(write) = cache.writes.pop_back() {
            for sector in 0..write.length / SECTOR_SIZE {
                let start = write.offset + (sector * SECTOR_SIZE) as u64;
                if cache.settled.contains(&start) {
                    continue;
                }
                if prng.as_mut().is_some_and(|prng| prng.chance(1, 2)) {
                    cache.settled.push(start);
                    cache.metrics.sectors_kept += 1;
                    continue;
                }
                let before = write.before_start + sector * SECTOR_SIZE;
                self.data[start as usize..][..SECTOR_SIZE]
                    .copy_from_slice(&cache.before[before..][..SECTOR_SIZE]);
                cache.metrics.sectors_lost += 1;
            }
        }
    }

    /// Complete requests in an order chosen by a PRNG seeded with `seed`.
    pub fn shuffle_completions(&mut self, seed: u64) {
        self.prng = Some(Prng::new(seed));
    }

    /// Requests submitted from now on take `latency` ticks (drawn from a PRNG seeded with
    /// `seed`) before `poll` returns them.
    pub fn set_latency(&mut self, latency: Latency, seed: u64) {
        assert!(latency.min_ticks <= latency.mean_ticks);
        self.timing = Some(Timing { latency, prng: Prng::new(seed) });
    }

    /// Moves the disk's clock to `tick` (which never goes back).
    pub fn set_tick(&mut self, tick: u64) {
        assert!(tick >= self.tick);
        self.tick = tick;
    }

    /// A slow-disk spell: requests in flight and submitted from now on complete no earlier
    /// than `tick` (a disk that stalls under a firmware hiccup or a neighbour's load).
    pub fn stall_until(&mut self, tick: u64) {
        self.stalled_until_tick = self.stalled_until_tick.max(tick);
    }

    /// The disk is in a slow-disk spell.
    pub fn stalled(&self) -> bool {
        self.tick < self.stalled_until_tick
    }

    /// Ends a slow-disk spell now.
    pub fn stall_end(&mut self) {
        self.stalled_until_tick = 0;
    }

    /// Requests that `poll` would return now.
    pub fn due_count(&self) -> usize {
        if self.stalled() {
            return 0;
        }
        self.pending.iter().filter(|pending| pending.due_tick <= self.tick).count()
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
        self.cache_crash(None);
        self.pending.clear();
    }

    /// Like `crash`, but each pending write first lands partially: only its first
    /// `sectors_written` sectors reach the disk (a torn write).
    pub fn crash_tearing_writes(&mut self, sectors_written: usize) {
        self.cache_crash(None);
        for pending in self.pending.drain(..) {
            let request = pending.request;
            if request.kind.is_write() {
                let length = request.length.min(sectors_written * SECTOR_SIZE);
                let start = request.offset as usize;
                let source = &pending.buffer.buffer()[request.buffer_offset..][..length];
                self.data[start..start + length].copy_from_slice(source);
            }
        }
    }

    /// Like `crash`, but each sector of each pending write independently reaches the disk or
    /// not, with the chances chosen by `prng`: writes are lost, land whole, or tear anywhere.
    /// Returns the number of sectors that landed.
    pub fn crash_tearing_writes_randomly(&mut self, prng: &mut Prng) -> usize {
        self.cache_crash(Some(prng));
        let mut sectors_landed = 0;
        for pending in self.pending.drain(..) {
            let request = pending.request;
            if !request.kind.is_write() {
                continue;
            }
            // Per write: how likely each of its sectors is to have reached the disk.
            let land_per_mille = match prng.index(3) {
                0 => 0,
                1 => 1000,
                _ => prng.next_u64() % 1001,
            };
            for sector in 0..request.length / SECTOR_SIZE {
                if !prng.chance(land_per_mille, 1000) {
                    continue;
                }
                let start = request.offset as usize + sector * SECTOR_SIZE;
                let source = request.buffer_offset + sector * SECTOR_SIZE;
                let source = &pending.buffer.buffer()[source..][..SECTOR_SIZE];
                self.data[start..start + SECTOR_SIZE].copy_from_slice(source);
                sectors_landed += 1;
            }
        }
        sectors_landed
    }

    /// Flips one bit in the sector at absolute `offset`: in byte 100, which every checksum
    /// covers (a header's, a superblock copy's, a grid block's).
    pub fn corrupt_sector(&mut self, offset: u64) {
        assert_eq!(offset % SECTOR_SIZE as u64, 0);
        self.data[offset as usize + 100] ^= 0x40;
    }

    fn complete(&mut self, pending: Pending) -> Completion {
        let Pending { request, mut buffer, flush_sequence, .. } = pending;
        let start = request.offset as usize;
        let result = if start + request.length > self.data.len() {
            Err(IoError::EndOfFile)
        } else {
            match request.kind {
                IoKind::Write | IoKind::WriteCached => {
                    let end = (start + request.length) as u64;
                    self.unreadable
                        .retain(|range| !(start as u64 <= range.start && range.end <= end));
                    if request.kind == IoKind::WriteCached {
                        self.cache_write(&request);
                    }
                    let source = &buffer.buffer()[request.buffer_offset..][..request.length];
                    if request.kind == IoKind::Write {
                        self.cache_durable_write(&request, source);
                    }
                    self.data[start..start + request.length].copy_from_slice(source);
                }
                IoKind::Sync => self.cache_flush(flush_sequence),
                IoKind::Read
                    if self.unreadable.iter().any(|range| {
                        range.start < (start + request.length) as u64 && (start as u64) < range.end
                    }) =>
                {
                    return Completion { request, buffer, result: Err(IoError::Errno(libc::EIO)) };
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

    /// The index in `pending` of the next request to complete, if one is due.
    fn next_due(&mut self) -> Option<usize> {
        let due_count = self.due_count();
        if due_count == 0 {
            return None;
        }
        let chosen = match &mut self.prng {
            Some(prng) => prng.index(due_count),
            None => 0,
        };
        let tick = self.tick;
        let index = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, pending)| pending.due_tick <= tick)
            .nth(chosen)
            .map(|(index, _)| index);
        assert!(index.is_some());
        index
    }
}

impl Storage for MemoryStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        request.assert_valid(&buffer);
        let delay = match &mut self.timing {
            Some(timing) => timing.latency.sample(&mut timing.prng),
            None => 0,
        };
        let flush_sequence = self.cache.as_ref().map_or(0, |cache| cache.sequence_next);
        let due_tick = self.tick + delay;
        self.pending.push_back(Pending { request, buffer, due_tick, flush_sequence });
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        let mut count = 0;
        while count < completions_max {
            let Some(index) = self.next_due() else {
                break;
            };
            let pending = self.pending.remove(index).expect("index in range");
            completions.push(self.complete(pending));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsr::layout::Zone;
    use crate::vsr::message_pool::MessagePool;
    use crate::vsr::storage::{IoOwner, IoToken};

    fn write_request(offset: u64, sectors: usize) -> IoRequest {
        IoRequest {
            token: IoToken { owner: IoOwner::Benchmark, index: 0 },
            kind: IoKind::Write,
            zone: Zone::Grid,
            offset,
            length: sectors * SECTOR_SIZE,
            buffer_offset: 0,
        }
    }

    /// Submits a write of `sectors` sectors of `byte` and completes it.
    fn write_now(storage: &mut MemoryStorage, pool: &MessagePool, kind: IoKind, byte: u8) {
        let mut buffer = pool.get();
        buffer.buffer_mut_unique().fill(byte);
        let request = IoRequest { kind, ..write_request(0, 2) };
        storage.submit(request, buffer);
        let mut completions = Vec::new();
        storage.poll(&mut completions, 1);
        assert!(completions.pop().expect("completed at once").result.is_ok());
    }

    #[test]
    fn a_crash_loses_unsynced_cached_writes_but_never_a_durable_write_over_them() {
        // Goal: the cache model loses a completed cached write at a crash unless a sync
        // covered it, and a durable write over an unflushed cached one survives the crash
        // whatever happens to the cached write.
        let pool = MessagePool::new(2, 2 * SECTOR_SIZE);
        let sector = |storage: &MemoryStorage| storage.bytes()[0];
        for (synced, durable_after) in [(false, false), (true, false), (false, true)] {
            let mut storage = MemoryStorage::new(8 * SECTOR_SIZE as u64);
            storage.cache_model(4 * SECTOR_SIZE);
            write_now(&mut storage, &pool, IoKind::WriteCached, 0xC1);
            if synced {
                let sync = IoRequest { kind: IoKind::Sync, length: 0, ..write_request(0, 1) };
                storage.submit(sync, pool.get());
                let mut completions = Vec::new();
                storage.poll(&mut completions, 1);
                assert_eq!(storage.cached_unflushed(), 0);
            }
            if durable_after {
                write_now(&mut storage, &pool, IoKind::Write, 0xD2);
            }
            storage.crash();
            let expected = match (synced, durable_after) {
                (true, _) => 0xC1,
                (false, true) => 0xD2,
                (false, false) => 0,
            };
            assert_eq!(sector(&storage), expected, "synced {synced} durable {durable_after}");
        }
    }

    #[test]
    fn latency_holds_requests_until_they_are_due() {
        // Goal: with a latency, a request completes only once the disk's clock reaches its due
        // tick, and never before `min_ticks`.
        let pool = MessagePool::new(4, SECTOR_SIZE);
        let mut storage = MemoryStorage::new(16 * SECTOR_SIZE as u64);
        storage.set_latency(Latency { min_ticks: 2, mean_ticks: 4 }, 7);
        for index in 0..4 {
            storage.submit(write_request(index * SECTOR_SIZE as u64, 1), pool.get());
        }
        let mut completions = Vec::new();
        let mut tick = 0;
        while storage.in_flight() > 0 {
            storage.poll(&mut completions, 16);
            if tick < 2 {
                assert!(completions.is_empty());
            }
            tick += 1;
            storage.set_tick(tick);
        }
        assert_eq!(completions.len(), 4);
        assert!(tick <= 7);
    }

    #[test]
    fn random_tearing_lands_some_sectors_and_releases_every_buffer() {
        // Goal: a crash with random tearing writes a subset of the pending sectors and drops
        // every request, returning the buffers to their pool.
        let pool = MessagePool::new(8, 4 * SECTOR_SIZE);
        let mut storage = MemoryStorage::new(64 * SECTOR_SIZE as u64);
        let mut prng = Prng::new(3);
        let mut landed = 0;
        for round in 0..8 {
            for index in 0..4u64 {
                let mut buffer = pool.get();
                buffer.buffer_mut_unique().fill(0xAA);
                let offset = (index * 4 + round % 2) * SECTOR_SIZE as u64;
                storage.submit(write_request(offset, 4), buffer);
            }
            landed += storage.crash_tearing_writes_randomly(&mut prng);
            assert_eq!(storage.in_flight(), 0);
            assert_eq!(pool.free_count(), 8);
        }
        let written = storage.bytes().chunks(SECTOR_SIZE).filter(|sector| sector[0] == 0xAA);
        assert!(written.count() > 0);
        assert!(landed > 0 && landed < 8 * 16);
    }

    #[test]
    fn slow_disk_spell_holds_every_completion_until_it_ends() {
        // Goal: during a spell nothing completes, requests in flight before it included;
        // afterwards they all do.
        let pool = MessagePool::new(4, SECTOR_SIZE);
        let mut storage = MemoryStorage::new(16 * SECTOR_SIZE as u64);
        storage.submit(write_request(0, 1), pool.get());
        storage.stall_until(5);
        storage.submit(write_request(SECTOR_SIZE as u64, 1), pool.get());
        let mut completions = Vec::new();
        for tick in 0..5 {
            storage.set_tick(tick);
            storage.poll(&mut completions, 16);
            assert!(completions.is_empty() && storage.stalled());
        }
        storage.set_tick(5);
        storage.poll(&mut completions, 16);
        assert_eq!(completions.len(), 2);
        assert!(!storage.stalled());
    }
}
