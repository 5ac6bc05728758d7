//! The write-ahead journal: two rings (prepares and their redundant headers) and the recovery
//! decision table. (Write path and recovery: being written.)

use crate::constants::{HEADER_SIZE, PROTOCOL_VERSION};
use crate::vsr::header::{ClusterId, Command, Header};

/// The header that marks slot `slot` empty, in both rings. It carries the slot as its `op` so
/// that a reserved entry written to the wrong slot is detected like any misdirected write.
pub fn reserved_header(cluster: ClusterId, slot: u64) -> Header {
    let mut header = Header::zeroed();
    header.cluster = cluster;
    header.size = HEADER_SIZE as u32;
    header.protocol = PROTOCOL_VERSION;
    header.command = Command::Reserved as u8;
    header.op = slot;
    header.set_checksum_body(&[]);
    header.set_checksum();
    header
}
