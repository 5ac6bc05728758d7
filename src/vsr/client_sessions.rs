//! Client sessions: who is registered, the latest request each client had committed, and where
//! its reply lives, so that a retried request gets the same reply and is never applied twice.
//!
//! A client registers with a `register` request; the op that commits it becomes the session
//! number. The table has `clients_max` entries and changes only at commit, so every replica
//! holds the same table. When a register commits into a full table, the entry whose latest
//! commit is oldest is evicted (deterministic on every replica), and that client is told with an
//! `eviction` message the next time it asks.
//!
//! The table is checkpointed in the superblock copies' trailers (`ClientSessionRecord`); the
//! latest reply of each session is written to the session's slot of the client_replies zone.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::CLIENT_SESSION_RECORD_SIZE;
use crate::stdx::id_index::IdIndex;

use crate::vsr::header::{Checksum, ChecksumBytes, ClientId, Op, checksum};

/// One checkpointed session (each superblock copy's trailer keeps `clients_max` of these).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ClientSessionRecord {
    /// Zero for a free entry.
    pub client: ClientId,
    /// The op that committed the client's register.
    pub session: Op,
    /// The op of the latest committed request (the reply's op).
    pub reply_op: Op,
    /// The checksum of the latest reply (header checksum, so it covers the body).
    pub reply_checksum: ChecksumBytes,
    /// The latest committed request number.
    pub request: u32,
    /// The latest reply's size (header plus body).
    pub reply_size: u32,
}

static_assertions::assert_eq_size!(ClientSessionRecord, [u8; CLIENT_SESSION_RECORD_SIZE]);

impl ClientSessionRecord {
    /// A free entry: all zero.
    pub const FREE: ClientSessionRecord = ClientSessionRecord {
        client: ClientId(0),
        session: Op(0),
        reply_op: Op(0),
        reply_checksum: ChecksumBytes::ZERO,
        request: 0,
        reply_size: 0,
    };
}

/// What the primary should do with an incoming request, given the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new request: prepare it.
    Prepare,
    /// A retry of the latest committed request: resend the stored reply of this session slot.
    ReplyAgain { slot: usize },
    /// Older than the latest committed request: a stale retry. Dropped.
    Drop,
    /// Past the request after the latest committed one: the client holds a reply to a request
    /// this table has not recorded yet. A client sends a request only once the one before it
    /// was answered, and so committed; a replica that has not executed that commit yet (a new
    /// primary that still has to commit its predecessor's last ops) sees this, as does a buggy
    /// client.
    Ahead,
    /// The client has no session (never registered, or evicted): send an eviction.
    Evict,
}

/// The table of client sessions.
pub struct ClientSessions {
    records: Vec<ClientSessionRecord>,
    /// Finds a client's slot without a scan of the table (every request looks it up); holds
    /// every client of `records`.
    index: IdIndex,
}

/// What a client puts in `parent` of each request after its register: a checksum of its
/// client id and the op of the reply to its previous request. The primary prepares a new
/// request only if it names the session's latest reply, so a stale copy of an old request (a
/// network duplicate that arrives after the session was evicted and registered again by a
/// stale register) cannot be applied a second time. Deterministic: every replica holds the
/// same `reply_op`.
pub fn session_chain(client: ClientId, reply_op: Op) -> Checksum {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&client.get().to_le_bytes());
    bytes[8..].copy_from_slice(&reply_op.get().to_le_bytes());
    checksum(&bytes)
}

impl ClientSessions {
    pub fn new(clients_max: usize) -> ClientSessions {
        assert!(clients_max > 0);
        ClientSessions {
            records: vec![ClientSessionRecord::default(); clients_max],
            index: IdIndex::new(clients_max),
        }
    }

    pub fn records(&self) -> &[ClientSessionRecord] {
        &self.records
    }

    /// Clients with a session.
    pub fn count(&self) -> usize {
        self.records.iter().filter(|record| record.client != ClientId::NONE).count()
    }

    /// Replaces the table with a checkpointed one (at open). Records are untrusted bytes from
    /// disk: a table with a duplicate client is rejected.
    pub fn restore(&mut self, records: &[ClientSessionRecord]) -> Result<(), &'static str> {
        if records.len() != self.records.len() {
            return Err("client session table of another size");
        }
        self.records.copy_from_slice(records);
        let index = &mut self.index;
        index.clear();
        for (slot, record) in self.records.iter().enumerate() {
            let client = record.client.get();
            if client != 0 && !index.insert(client, slot, |at| self.records[at].client.get()) {
                index.clear();
                self.records.fill(ClientSessionRecord::FREE);
                return Err("client session table holds a client twice");
            }
        }
        Ok(())
    }

    /// The slot of `client`'s session.
    pub fn slot(&self, client: ClientId) -> Option<usize> {
        assert_ne!(client, ClientId::NONE);
        self.index.find(client.get(), |at| self.records[at].client.get())
    }

    pub fn get(&self, slot: usize) -> &ClientSessionRecord {
        &self.records[slot]
    }

    /// Decides what to do with a request from `client` numbered `request` (register is 0).
    pub fn disposition(
        &self,
        client: ClientId,
        request: u32,
        register: bool,
    ) -> RequestDisposition {
        let Some(slot) = self.slot(client) else {
            return if register { RequestDisposition::Prepare } else { RequestDisposition::Evict };
        };
        let latest = self.records[slot].request;
        if register {
            // A client that registers again after a restart of its own process keeps its id only
            // by accident (ids are random); treat a repeated register as a retry.
            return if latest == 0 {
                RequestDisposition::ReplyAgain { slot }
            } else {
                RequestDisposition::Drop
            };
        }
        if request == latest {
            RequestDisposition::ReplyAgain { slot }
        } else if request == latest + 1 {
            RequestDisposition::Prepare
        } else if request > latest + 1 {
            RequestDisposition::Ahead
        } else {
            RequestDisposition::Drop
        }
    }

    /// Commits a register for `client` at `op`. Returns the slot, and the client evicted to make
    /// room, if any.
    pub fn register(&mut self, client: ClientId, op: Op) -> (usize, Option<ClientId>) {
        assert_ne!(client, ClientId::NONE);
        if let Some(slot) = self.slot(client) {
            // Committed twice (a retry raced its reply): keep the first session.
            return (slot, None);
        }
        let mut evicted = None;
        let slot = match self.records.iter().position(|record| record.client == ClientId(0)) {
            Some(slot) => slot,
            None => {
                let slot = self.oldest_slot();
                evicted = Some(self.records[slot].client);
                self.index
                    .remove(self.records[slot].client.get(), |at| self.records[at].client.get());
                slot
            }
        };
        self.records[slot] = ClientSessionRecord {
            client,
            session: op,
            reply_op: op,
            reply_checksum: ChecksumBytes::ZERO,
            request: 0,
            reply_size: 0,
        };
        let inserted = self.index.insert(client.get(), slot, |at| self.records[at].client.get());
        assert!(inserted);
        (slot, evicted)
    }

    /// Records the reply to a committed request.
    pub fn commit_reply(
        &mut self,
        slot: usize,
        request: u32,
        reply_op: Op,
        reply_checksum: Checksum,
        reply_size: u32,
    ) {
        let record = &mut self.records[slot];
        assert_ne!(record.client, ClientId::NONE);
        assert!(request == 0 || request == record.request + 1);
        assert!(reply_op >= record.reply_op);
        record.request = request;
        record.reply_op = reply_op;
        record.reply_checksum = ChecksumBytes::from(reply_checksum);
        record.reply_size = reply_size;
    }

    /// The session whose latest commit is oldest (ties broken by slot: deterministic).
    fn oldest_slot(&self) -> usize {
        let mut oldest = 0;
        for (slot, record) in self.records.iter().enumerate() {
            if record.reply_op < self.records[oldest].reply_op {
                oldest = slot;
            }
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_client_is_evicted_and_register_is_prepared() {
        // Goal: only a register may open a session.
        let sessions = ClientSessions::new(2);
        assert_eq!(sessions.disposition(ClientId(7), 1, false), RequestDisposition::Evict);
        assert_eq!(sessions.disposition(ClientId(7), 0, true), RequestDisposition::Prepare);
    }

    #[test]
    fn retry_gets_the_stored_reply_and_is_never_prepared_twice() {
        // Goal: dedup by request number: latest → reply again, next → prepare, older → drop;
        // a number past the next is told apart (the table is behind the client's replies).
        let mut sessions = ClientSessions::new(2);
        let (slot, evicted) = sessions.register(ClientId(7), Op(10));
        assert_eq!(evicted, None);
        assert_eq!(
            sessions.disposition(ClientId(7), 0, true),
            RequestDisposition::ReplyAgain { slot }
        );
        assert_eq!(sessions.disposition(ClientId(7), 1, false), RequestDisposition::Prepare);
        sessions.commit_reply(slot, 1, Op(11), Checksum(0xabc), 200);
        assert_eq!(
            sessions.disposition(ClientId(7), 1, false),
            RequestDisposition::ReplyAgain { slot }
        );
        assert_eq!(sessions.disposition(ClientId(7), 2, false), RequestDisposition::Prepare);
        assert_eq!(sessions.disposition(ClientId(7), 0, false), RequestDisposition::Drop);
        assert_eq!(sessions.disposition(ClientId(7), 3, false), RequestDisposition::Ahead);
        assert_eq!(sessions.disposition(ClientId(7), 0, true), RequestDisposition::Drop);
    }

    #[test]
    fn full_table_evicts_the_session_with_the_oldest_commit() {
        // Goal: eviction is deterministic: the least recently committed session goes.
        let mut sessions = ClientSessions::new(2);
        let (slot_a, _) = sessions.register(ClientId(1), Op(1));
        let (slot_b, _) = sessions.register(ClientId(2), Op(2));
        sessions.commit_reply(slot_a, 1, Op(3), Checksum(1), 128);
        let (slot_c, evicted) = sessions.register(ClientId(3), Op(4));
        assert_eq!(evicted, Some(ClientId(2)));
        assert_eq!(slot_c, slot_b);
        assert_eq!(sessions.disposition(ClientId(2), 1, false), RequestDisposition::Evict);
        assert_eq!(sessions.slot(ClientId(1)), Some(slot_a));
    }

    #[test]
    fn restore_rejects_a_table_with_a_duplicate_client() {
        // Goal: a corrupt checkpointed table is refused, not trusted.
        let mut sessions = ClientSessions::new(2);
        let record = ClientSessionRecord { client: ClientId(5), ..Default::default() };
        assert!(sessions.restore(&[record, record]).is_err());
        assert!(sessions.restore(&[record]).is_err());
        assert!(sessions.restore(&[record, ClientSessionRecord::default()]).is_ok());
        assert_eq!(sessions.slot(ClientId(5)), Some(0));
    }
}
