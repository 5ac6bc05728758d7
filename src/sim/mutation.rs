//! Byzantine-style mutations of messages between replicas, for the VOPR: each turns a message
//! into one that a correct replica must reject (or recognize as conflicting with what it holds)
//! without crashing. Mutations that a correct replica could not tell from a genuine message
//! are outside VSR's fault model and are not made: a primary that lies about its own commit
//! number, or a vote or do_view_change re-stamped with another view (a replica that sent one
//! for a view has promised not to take part in older ones). Old views are exercised by
//! replaying genuine old messages instead (`Mutation::Replay`, done by the cluster).

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::HEADER_SIZE;
use crate::stdx::prng::Prng;
use crate::vsr::header::{Checksum, Command, Header};
use crate::vsr::replica::Replica;

#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// A header byte changed and the checksum left as it was.
    ChecksumCorrupt = 1,
    /// A size larger than any message, checksummed again.
    Oversize = 2,
    /// An older message between replicas, delivered again (`Cluster` keeps the recent ones).
    Replay = 3,
    /// A prepare, do_view_change or start_view whose commit number exceeds its op.
    CommitInflated = 4,
    /// A do_view_change, start_view or headers whose op does not match its body.
    ClaimMismatch = 5,
    /// A prepare for an op the receiver holds, with different contents.
    PrepareConflicting = 6,
    /// A client's read whose body is replaced with 0 to 64 random bytes, linearizable or not,
    /// checksummed again: a replica must answer it (`body_invalid`, or a read of wherever the
    /// bytes point) or drop it, never crash. The client takes no answer to it (its checksum is
    /// not the request's) and sends the genuine read again.
    ClientReadGarbled = 7,
}

/// Mutates `bytes` (a message from one replica to `receiver`) in one of the ways above, if
/// one applies; returns which.
pub fn mutate(prng: &mut Prng, bytes: &mut [u8], receiver: &Replica) -> Option<Mutation> {
    let (mut header, _) = Header::read_from_prefix(bytes).ok()?;
    let command = header.command()?;
    let with_headers = matches!(command, Command::DoViewChange | Command::StartView);
    let mutation = match prng.index(5) {
        0 => {
            let covered_from = size_of::<Checksum>();
            let index = covered_from + prng.index(HEADER_SIZE - covered_from);
            bytes[index] ^= 1 << prng.index(8);
            return Some(Mutation::ChecksumCorrupt);
        }
        1 => {
            header.size = u32::MAX - 4095;
            Mutation::Oversize
        }
        2 if command == Command::Prepare || with_headers => {
            header.commit = header.op + 1 + prng.index(100) as u64;
            Mutation::CommitInflated
        }
        3 if with_headers || command == Command::Headers => {
            header.op += 1 + prng.index(3) as u64;
            Mutation::ClaimMismatch
        }
        4 if command == Command::Prepare => {
            let held = receiver.prepare_header(header.op)?;
            if held.checksum != header.checksum {
                return None;
            }
            header.timestamp += 1;
            Mutation::PrepareConflicting
        }
        _ => return None,
    };
    header.set_checksum();
    bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    Some(mutation)
}

/// Mutates `bytes`, a client's message, if it is a read: `Mutation::ClientReadGarbled`. Writes
/// are left alone: a malformed write evicts its session, which the workload's model would take
/// for a replica's fault.
pub fn mutate_client(prng: &mut Prng, bytes: &mut Vec<u8>) -> Option<Mutation> {
    let (mut header, _) = Header::read_from_prefix(bytes).ok()?;
    let read = header.command() == Some(Command::Request)
        && header.operation().is_some_and(|operation| operation.is_read());
    if !read {
        return None;
    }
    bytes.truncate(HEADER_SIZE);
    bytes.extend((0..prng.index(65)).map(|_| prng.next_u64() as u8));
    header.size = bytes.len() as u32;
    header.context = u128::from(prng.chance(1, 2));
    header.set_checksum_body(&bytes[HEADER_SIZE..]);
    header.set_checksum();
    bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    Some(Mutation::ClientReadGarbled)
}
