//! A fixed pool of sector-aligned buffers, allocated once at startup and handed out as
//! reference-counted `Message` handles.
//!
//! A handle is a counted reference to one buffer. Cloning it never allocates; dropping the last
//! handle puts the buffer back on the pool's free list (whose capacity was reserved at init, so
//! that push never allocates either). A buffer can only be written through a handle that is its
//! only reference (`buffer_mut` returns `None` otherwise), which is what makes it safe to give a
//! clone to the disk or the network while the protocol keeps reading its own.
//!
//! # Sizing
//!
//! The replica's pool holds `messages_max_replica()` buffers of `message_size_max` bytes. The
//! worst case it must cover, when every user holds as many messages as its own limit allows:
//!
//! ```text
//!   journal writes in flight                     JOURNAL_IOPS_WRITE_MAX
//! + journal reads in flight (replay, repair)     JOURNAL_IOPS_READ_MAX
//! + uncommitted prepares (a backup keeps up to PIPELINE_BACKUP_MAX, the primary fewer)
//!                                                PIPELINE_BACKUP_MAX
//! + queued client requests                       CLIENTS_MAX
//! + client_replies zone chunks read or written    CLIENT_REPLIES_IOS_MAX
//! + event-store reads in flight                  GRID_READS_MAX
//! + per connection: one receive buffer and a send queue of CONNECTION_SEND_QUEUE_MAX
//!                                                CONNECTIONS_MAX * (1 + CONNECTION_SEND_QUEUE_MAX)
//! + the larger send queues of peer replicas
//!                        (REPLICAS_MAX - 1) * (REPLICA_SEND_QUEUE_MAX - CONNECTION_SEND_QUEUE_MAX)
//! + messages received and not yet handled (the bus inbox)   CONNECTIONS_MAX
//! + one do_view_change per replica               REPLICAS_MAX
//! + state sync: chunk reads served, chunk writes  SYNC_READS_MAX + SYNC_WRITES_MAX
//! + the grid scrubber's chunk reads             GRID_SCRUB_READS_MAX
//! + slack for messages built and sent in one step  MESSAGES_SLACK
//! ```
//!
//! An empty pool is therefore a bug in that accounting: `get` asserts.

use std::cell::RefCell;
use std::rc::Rc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::{
    CLIENT_REPLIES_IOS_MAX, CLIENTS_MAX, CONNECTION_SEND_QUEUE_MAX, CONNECTIONS_MAX,
    GRID_READS_MAX, GRID_SCRUB_READS_MAX, HEADER_SIZE, JOURNAL_IOPS_READ_MAX,
    JOURNAL_IOPS_WRITE_MAX, MESSAGES_SLACK, PIPELINE_BACKUP_MAX, REPLICA_SEND_QUEUE_MAX,
    REPLICAS_MAX, SECTOR_SIZE, SYNC_READS_MAX, SYNC_WRITES_MAX,
};
use crate::vsr::header::Header;

/// The number of buffers a replica's message pool holds (see the module docs).
pub const fn messages_max_replica() -> usize {
    JOURNAL_IOPS_WRITE_MAX
        + JOURNAL_IOPS_READ_MAX
        + PIPELINE_BACKUP_MAX
        + CLIENTS_MAX
        + CLIENT_REPLIES_IOS_MAX
        + GRID_READS_MAX
        + CONNECTIONS_MAX * (1 + CONNECTION_SEND_QUEUE_MAX)
        + (REPLICAS_MAX - 1) * (REPLICA_SEND_QUEUE_MAX - CONNECTION_SEND_QUEUE_MAX)
        + CONNECTIONS_MAX
        + REPLICAS_MAX
        + SYNC_READS_MAX
        + SYNC_WRITES_MAX
        + GRID_SCRUB_READS_MAX
        + MESSAGES_SLACK
}

/// One disk sector: the unit of alignment for every buffer that meets `O_DIRECT`.
#[repr(C, align(4096))]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Sector(pub [u8; SECTOR_SIZE]);

static_assertions::assert_eq_size!(Sector, [u8; SECTOR_SIZE]);
static_assertions::const_assert_eq!(std::mem::align_of::<Sector>(), SECTOR_SIZE);

struct Buffer {
    sectors: Box<[Sector]>,
}

struct FreeList {
    buffers: Vec<Rc<Buffer>>,
    size_bytes: usize,
    count: usize,
}

/// A fixed set of equally sized, sector-aligned buffers.
#[derive(Clone)]
pub struct MessagePool {
    free: Rc<RefCell<FreeList>>,
}

impl MessagePool {
    /// Allocates `count` buffers of `size_bytes` each. This is the only allocation the pool makes.
    pub fn new(count: usize, size_bytes: usize) -> MessagePool {
        assert!(count > 0);
        assert!(size_bytes > 0);
        assert_eq!(size_bytes % SECTOR_SIZE, 0);
        let mut buffers = Vec::with_capacity(count);
        for _ in 0..count {
            let sectors = vec![Sector([0; SECTOR_SIZE]); size_bytes / SECTOR_SIZE];
            let sectors = sectors.into_boxed_slice();
            buffers.push(Rc::new(Buffer { sectors }));
        }
        MessagePool { free: Rc::new(RefCell::new(FreeList { buffers, size_bytes, count })) }
    }

    /// Takes a buffer from the pool. Its contents are whatever its last user left: callers
    /// write before they read.
    ///
    /// Panics if the pool is empty: pools are sized for their worst case, so that is a bug.
    pub fn get(&self) -> Message {
        let buffer = self.free.borrow_mut().buffers.pop().expect("message pool exhausted");
        assert_eq!(Rc::strong_count(&buffer), 1);
        Message { buffer: Some(buffer), pool: self.free.clone() }
    }

    /// Takes a buffer if one is free.
    pub fn try_get(&self) -> Option<Message> {
        let buffer = self.free.borrow_mut().buffers.pop()?;
        Some(Message { buffer: Some(buffer), pool: self.free.clone() })
    }

    pub fn free_count(&self) -> usize {
        self.free.borrow().buffers.len()
    }

    pub fn count(&self) -> usize {
        self.free.borrow().count
    }

    pub fn buffer_size(&self) -> usize {
        self.free.borrow().size_bytes
    }
}

/// A counted reference to one buffer of a `MessagePool`.
pub struct Message {
    buffer: Option<Rc<Buffer>>,
    pool: Rc<RefCell<FreeList>>,
}

impl Clone for Message {
    fn clone(&self) -> Message {
        Message { buffer: self.buffer.clone(), pool: self.pool.clone() }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        let buffer = self.buffer.take().expect("message buffer present until drop");
        if Rc::strong_count(&buffer) == 1 {
            let mut free = self.pool.borrow_mut();
            assert!(free.buffers.len() < free.count);
            free.buffers.push(buffer);
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Message")
            .field("references", &self.references())
            .field("header", self.header())
            .finish()
    }
}

impl Message {
    fn inner(&self) -> &Buffer {
        self.buffer.as_ref().expect("message buffer present until drop")
    }

    /// The whole buffer.
    pub fn buffer(&self) -> &[u8] {
        self.inner().sectors.as_bytes()
    }

    /// The whole buffer, writable, if this handle is its only reference.
    pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        let buffer = self.buffer.as_mut().expect("message buffer present until drop");
        Rc::get_mut(buffer).map(|buffer| buffer.sectors.as_mut_bytes())
    }

    /// The whole buffer, writable. Panics if the handle is shared: a caller that writes owns
    /// the message by construction.
    pub fn buffer_mut_unique(&mut self) -> &mut [u8] {
        self.buffer_mut().expect("message written while shared")
    }

    pub fn references(&self) -> usize {
        Rc::strong_count(self.buffer.as_ref().expect("message buffer present until drop"))
    }

    pub fn header(&self) -> &Header {
        Header::from_prefix(self.buffer()).expect("buffers are sector aligned")
    }

    pub fn header_mut(&mut self) -> &mut Header {
        let bytes = &mut self.buffer_mut_unique()[..HEADER_SIZE];
        Header::mut_from_bytes(bytes).expect("buffers are sector aligned")
    }

    /// The body, as far as the header's `size` says (which must be trusted already).
    pub fn body(&self) -> &[u8] {
        let size = self.header().size as usize;
        assert!(size >= HEADER_SIZE && size <= self.buffer().len());
        &self.buffer()[HEADER_SIZE..size]
    }

    /// Header plus body.
    pub fn bytes(&self) -> &[u8] {
        let size = self.header().size as usize;
        assert!(size >= HEADER_SIZE && size <= self.buffer().len());
        &self.buffer()[..size]
    }

    /// True if both handles reference the same buffer.
    pub fn same_buffer(&self, other: &Message) -> bool {
        Rc::ptr_eq(self.buffer.as_ref().unwrap(), other.buffer.as_ref().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::PIPELINE_PREPARE_QUEUE_MAX;

    #[test]
    fn buffers_are_sector_aligned_and_sized() {
        // Goal: every buffer meets O_DIRECT alignment and has the requested size.
        let pool = MessagePool::new(3, 2 * SECTOR_SIZE);
        let messages = [pool.get(), pool.get(), pool.get()];
        for message in &messages {
            assert_eq!(message.buffer().as_ptr() as usize % SECTOR_SIZE, 0);
            assert_eq!(message.buffer().len(), 2 * SECTOR_SIZE);
        }
        assert_eq!(pool.free_count(), 0);
        assert!(pool.try_get().is_none());
    }

    #[test]
    fn last_reference_returns_buffer_to_pool() {
        // Goal: clones share a buffer, and only the last drop frees it.
        let pool = MessagePool::new(1, SECTOR_SIZE);
        let message = pool.get();
        let clone = message.clone();
        assert_eq!(message.references(), 2);
        assert!(message.same_buffer(&clone));
        drop(message);
        assert_eq!(pool.free_count(), 0);
        drop(clone);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn shared_buffer_is_read_only() {
        // Goal: a buffer cannot be written while another handle can read it.
        let pool = MessagePool::new(1, SECTOR_SIZE);
        let mut message = pool.get();
        message.buffer_mut_unique()[0] = 7;
        let clone = message.clone();
        assert!(message.buffer_mut().is_none());
        assert_eq!(clone.buffer()[0], 7);
        drop(clone);
        assert!(message.buffer_mut().is_some());
    }

    #[test]
    fn replica_pool_formula_covers_every_user() {
        // Goal: the documented formula stays at least the sum of its named users.
        let users = JOURNAL_IOPS_WRITE_MAX + JOURNAL_IOPS_READ_MAX + PIPELINE_PREPARE_QUEUE_MAX;
        assert!(messages_max_replica() > users + CONNECTIONS_MAX);
    }
}
