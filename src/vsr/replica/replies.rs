//! The latest reply of every client session: kept in memory, one sector per session, and in
//! the client_replies zone, whose slots have the same size and order.
//!
//! - Executing a write stores its reply in the session's sector (`reply_store`), from which a
//!   retry of that request is answered again (`reply_again`). A write's reply fits in one
//!   sector: the bodies that would need more are refused (`APPEND_BATCHES_MAX`,
//!   `CREATE_STREAMS_MAX`), so a session costs 4 KiB of memory and of disk, not a
//!   `message_size_max` buffer of each.
//! - The zone gets the replies only at a checkpoint (`client_replies_write`), in chunks of
//!   consecutive sectors, each chunk that holds a reply changed since the last checkpoint
//!   written once, before the superblock update that syncs them: a reply of an op after the
//!   durable checkpoint is made again by the replay at open.
//! - The open reads back every chunk that holds a session's reply (`client_replies_read`); a
//!   chunk whose read fails is read again a sector at a time, so that an unreadable spot costs
//!   the replies it holds, not its neighbours'. A sector that does not hold the reply its
//!   session record names (overwritten by a later op, unreadable, or lost) is forgotten, and a
//!   retry of that request gets an eviction.

use super::{Destination, Replica};
use crate::constants::{CLIENT_REPLIES_IOS_MAX, HEADER_SIZE, REPLY_SIZE_MAX, SECTOR_SIZE};
use crate::vsr::header::{Checksum, ClientId, Command, EvictionReason, Header};
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::{Message, Sector};
use zerocopy::IntoBytes;

use crate::vsr::storage::{Completion, IoKind, IoOwner, IoRequest, IoToken, Storage};

static_assertions::const_assert_eq!(REPLY_SIZE_MAX, SECTOR_SIZE);

/// Marks the token of a one-sector read (its index is then the session's slot), as opposed to a
/// chunk's (whose index is the chunk's).
const TOKEN_SECTOR: u32 = 1 << 31;

/// One sector per session: its latest reply, if known.
pub(super) struct ReplyStore {
    sectors: Vec<Sector>,
    /// The sector holds the reply its session record names.
    known: Vec<bool>,
    /// The sector changed since the zone last got it.
    dirty: Vec<bool>,
    /// Sessions per chunk of zone I/O (one message buffer).
    chunk_slots: usize,
    /// Chunk writes or reads in flight (at most `CLIENT_REPLIES_IOS_MAX`).
    pub(super) ios: usize,
    /// The open: the next chunk to consider reading.
    read_chunk_next: usize,
    /// The open: sessions whose chunk could not be read, to read a sector at a time.
    read_sectors: Vec<usize>,
}

impl ReplyStore {
    pub(super) fn new(clients_max: usize, message_size_max: usize) -> ReplyStore {
        assert!(clients_max > 0);
        assert!(message_size_max >= SECTOR_SIZE && message_size_max.is_multiple_of(SECTOR_SIZE));
        ReplyStore {
            sectors: vec![Sector([0; SECTOR_SIZE]); clients_max],
            known: vec![false; clients_max],
            dirty: vec![false; clients_max],
            chunk_slots: message_size_max / SECTOR_SIZE,
            ios: 0,
            read_chunk_next: 0,
            read_sectors: Vec::with_capacity(clients_max),
        }
    }

    /// Session `slot`'s reply, if known.
    fn get(&self, slot: usize) -> Option<&[u8]> {
        self.known[slot].then(|| &self.sectors[slot].0[..])
    }

    fn store(&mut self, slot: usize, reply: &[u8]) {
        assert!(reply.len() <= REPLY_SIZE_MAX);
        let sector = &mut self.sectors[slot].0;
        sector[..reply.len()].copy_from_slice(reply);
        sector[reply.len()..].fill(0);
        self.known[slot] = true;
        self.dirty[slot] = true;
    }

    /// Forgets every reply (state sync replaced the sessions they belonged to).
    pub(super) fn forget_all(&mut self) {
        assert_eq!(self.ios, 0);
        self.known.fill(false);
        self.dirty.fill(false);
    }

    fn chunk_count(&self) -> usize {
        self.sectors.len().div_ceil(self.chunk_slots)
    }

    fn chunk_slots(&self, chunk: usize) -> std::ops::Range<usize> {
        let start = chunk * self.chunk_slots;
        start..(start + self.chunk_slots).min(self.sectors.len())
    }
}

impl Replica {
    /// Records `reply` as session `slot`'s latest, in the session table and in memory; the
    /// next checkpoint writes it to the zone.
    pub(super) fn reply_store(&mut self, slot: usize, reply: &Message) {
        let reply_header = *reply.header();
        assert_eq!(reply_header.command(), Some(Command::Reply));
        self.sessions.commit_reply(
            slot,
            reply_header.request,
            reply_header.op,
            reply_header.checksum,
            reply_header.size,
        );
        // Paired with `reply_again`: the slot is the client's, and holds the reply recorded.
        assert_eq!(self.sessions.get(slot).client, reply_header.client);
        assert_eq!(Checksum::from(self.sessions.get(slot).reply_checksum), reply_header.checksum);
        // Replies are written to the zone only by the checkpoint (commits wait for it).
        assert_eq!(self.replies.ios, 0);
        self.replies.store(slot, &reply.buffer()[..reply_header.size as usize]);
    }

    /// A retry of session `slot`'s latest committed request: its stored reply again, or an
    /// eviction if that reply was lost.
    pub(super) fn reply_again(&mut self, slot: usize, request: &Header) {
        let record = *self.sessions.get(slot);
        assert_eq!(record.client, request.client, "the session slot is the client's");
        let checksum = Checksum::from(record.reply_checksum);
        let Some(stored) = self.replies.get(slot).filter(|bytes| reply_matches(bytes, checksum))
        else {
            // The stored reply was lost with the disk copy: the client must start over.
            return self.send_eviction(request.client, EvictionReason::SessionEvicted);
        };
        let size = record.reply_size as usize;
        let mut reply = self.pool.get_small();
        reply.buffer_mut_unique()[..size].copy_from_slice(&stored[..size]);
        assert_eq!(reply.header().client, request.client);
        self.metrics.replies_resent += 1;
        self.send(Destination::Client(request.client), reply);
    }

    /// The checkpoint: writes every chunk that holds a reply changed since the last one, up to
    /// `CLIENT_REPLIES_IOS_MAX` at a time. Returns whether all of them are written.
    pub(super) fn client_replies_write<S: Storage>(&mut self, storage: &mut S) -> bool {
        for chunk in 0..self.replies.chunk_count() {
            if self.replies.ios == CLIENT_REPLIES_IOS_MAX {
                break;
            }
            // Only the run from the chunk's first changed reply to its last: 64 sessions in use
            // of 1,024 wrote a whole 1 MiB chunk at every checkpoint, which commits wait for.
            let chunk_slots = self.replies.chunk_slots(chunk);
            let dirty = &self.replies.dirty[chunk_slots.clone()];
            let Some(first) = dirty.iter().position(|dirty| *dirty) else {
                continue;
            };
            let last = dirty.iter().rposition(|dirty| *dirty).expect("one is dirty");
            let slots = chunk_slots.start + first..chunk_slots.start + last + 1;
            self.replies.dirty[slots.clone()].fill(false);
            let mut buffer = self.pool.get();
            let sectors = self.replies.sectors[slots.clone()].as_bytes();
            buffer.buffer_mut_unique()[..sectors.len()].copy_from_slice(sectors);
            self.replies.ios += 1;
            // The checkpoint's superblock update, which waits for it, syncs it first.
            let mut request = self.client_replies_io(chunk as u32, slots);
            request.kind = IoKind::WriteCached;
            storage.submit(request, buffer);
        }
        self.replies.ios == 0 && !self.replies.dirty.contains(&true)
    }

    /// The open: reads the chunks that hold a session's reply, up to `CLIENT_REPLIES_IOS_MAX`
    /// at a time. Returns whether every one was read.
    pub(super) fn client_replies_read<S: Storage>(&mut self, storage: &mut S) -> bool {
        while self.replies.ios < CLIENT_REPLIES_IOS_MAX
            && let Some(slot) = self.replies.read_sectors.pop()
        {
            self.replies.ios += 1;
            let request = self.client_replies_io(TOKEN_SECTOR | slot as u32, slot..slot + 1);
            storage.submit(request, self.pool.get());
        }
        while self.replies.ios < CLIENT_REPLIES_IOS_MAX
            && self.replies.read_chunk_next < self.replies.chunk_count()
        {
            let chunk = self.replies.read_chunk_next;
            self.replies.read_chunk_next += 1;
            if self.replies.chunk_slots(chunk).any(|slot| self.reply_stored(slot)) {
                self.replies.ios += 1;
                let request = self.client_replies_io(chunk as u32, self.replies.chunk_slots(chunk));
                storage.submit(request, self.pool.get());
            }
        }
        self.replies.ios == 0
            && self.replies.read_sectors.is_empty()
            && self.replies.read_chunk_next == self.replies.chunk_count()
    }

    /// Whether session `slot`'s record says the zone holds a reply of it.
    fn reply_stored(&self, slot: usize) -> bool {
        let record = self.sessions.get(slot);
        record.client != ClientId(0) && record.reply_size as usize >= HEADER_SIZE
    }

    /// A read of the sectors of sessions `slots` (a chunk, or one session's), under token
    /// `index`; the checkpoint turns it into a write.
    fn client_replies_io(&self, index: u32, slots: std::ops::Range<usize>) -> IoRequest {
        let offset = self.layout.offset(Zone::ClientReplies, (slots.start * SECTOR_SIZE) as u64);
        IoRequest {
            token: IoToken { owner: IoOwner::ClientReplies, index },
            kind: IoKind::Read,
            zone: Zone::ClientReplies,
            offset,
            length: slots.len() * SECTOR_SIZE,
            buffer_offset: 0,
        }
    }

    pub(super) fn client_replies_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        completion: Completion,
    ) {
        assert_eq!(completion.request.token.owner, IoOwner::ClientReplies);
        assert!(self.replies.ios > 0);
        self.replies.ios -= 1;
        match completion.request.kind {
            IoKind::Write | IoKind::Sync => unreachable!("client replies are written cached"),
            IoKind::WriteCached => {
                if completion.result.is_err() {
                    return self.fail("a client reply write failed");
                }
                self.checkpoint_progress(storage);
            }
            IoKind::Read => {
                let index = completion.request.token.index;
                let ok = completion.result.is_ok();
                let bytes = completion.buffer.buffer();
                if index & TOKEN_SECTOR != 0 {
                    // An unreadable sector loses its reply: a retry of it gets an eviction.
                    let slot = (index & !TOKEN_SECTOR) as usize;
                    if ok {
                        self.client_reply_take(slot, &bytes[..SECTOR_SIZE]);
                    }
                } else if ok {
                    self.client_replies_read_chunk(index as usize, bytes);
                } else {
                    self.metrics.client_replies_chunks_unreadable += 1;
                    for slot in self.replies.chunk_slots(index as usize) {
                        if self.reply_stored(slot) {
                            self.replies.read_sectors.push(slot);
                        }
                    }
                }
                self.client_replies_read_progress(storage);
            }
        }
    }

    /// Takes each reply of a chunk read at open that is the one its session record names.
    fn client_replies_read_chunk(&mut self, chunk: usize, bytes: &[u8]) {
        for (index, slot) in self.replies.chunk_slots(chunk).enumerate() {
            self.client_reply_take(slot, &bytes[index * SECTOR_SIZE..][..SECTOR_SIZE]);
        }
    }

    /// Takes session `slot`'s sector read at open if it is the reply its record names.
    fn client_reply_take(&mut self, slot: usize, sector: &[u8]) {
        assert!(!self.replies.known[slot], "each slot is read once, at open");
        let record = *self.sessions.get(slot);
        if record.client != ClientId(0)
            && reply_matches(sector, Checksum::from(record.reply_checksum))
        {
            self.replies.sectors[slot].0.copy_from_slice(sector);
            self.replies.known[slot] = true;
        }
    }
}

/// Whether `bytes` start with the valid reply whose header checksum is `checksum`.
fn reply_matches(bytes: &[u8], checksum: Checksum) -> bool {
    let Some(header) = Header::from_prefix(bytes) else {
        return false;
    };
    if !header.valid_checksum() || header.checksum != checksum {
        return false;
    }
    let size = header.size as usize;
    size >= HEADER_SIZE
        && size <= bytes.len()
        && header.valid_checksum_body(&bytes[HEADER_SIZE..size])
}
