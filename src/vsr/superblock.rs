//! The superblock: the root of a replica's durable state, kept in four redundant copies at the
//! start of the data file. (Open, update and quorum logic: being written.)

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::{SUPERBLOCK_COPY_SIZE, SUPERBLOCK_VERSION, VIEW_HEADERS_MAX};
use crate::vsr::header::{self, Checksum, ClusterId, Header, Op, View};
use crate::vsr::layout::Config;

/// One superblock copy, exactly one sector. `checksum` covers bytes 6..4096: everything but
/// itself and `copy`, so the four copies of one update share a checksum.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SuperBlockHeader {
    pub checksum: Checksum,
    /// This copy's index (0..4), so a copy written to the wrong place is detected.
    pub copy: u16,
    pub version: u16,
    pub cluster: ClusterId,
    /// Incremented by every update; copies of the newest update have the highest sequence.
    pub sequence: u64,
    /// The checksum of the update this one replaced (0 for the first).
    pub parent: Checksum,
    pub replica: u8,
    pub replica_count: u8,
    pub reserved_replica: [u8; 2],
    pub journal_slot_count: u32,
    pub message_size_max: u32,
    pub clients_max: u32,
    pub streams_max: u32,
    pub grid_size: u64,
    /// The replica's view; never goes backwards.
    pub view: View,
    /// The latest view in which the replica was in normal status; never goes backwards.
    pub log_view: View,
    /// The highest op known committed; never goes backwards.
    pub commit_max: Op,
    /// The op whose state the checkpoint holds; the WAL is replayed from here.
    pub checkpoint_op: Op,
    /// The checksum of the prepare at `checkpoint_op`.
    pub checkpoint_checksum: Checksum,
    /// The checksum of the checkpointed state-machine root (the streams table blocks).
    pub checkpoint_state_checksum: Checksum,
    /// The next grid block the state machine appends to.
    pub grid_head: u64,
    /// Where the checkpointed streams table starts in the grid, how many blocks it spans, and
    /// the checksum of those blocks' checksums.
    pub streams_table_address: u64,
    pub streams_table_blocks: u32,
    pub streams_table_checksum: Checksum,
    pub reserved_checkpoint: [u8; 4],
    /// How many of `view_headers` are in use (the log suffix kept for a view change).
    pub view_headers_count: u32,
    pub reserved_state: [u8; 8],
    pub view_headers: [Header; VIEW_HEADERS_MAX],
    pub reserved: [u8; 2816],
}

const_assert_eq!(std::mem::size_of::<SuperBlockHeader>(), SUPERBLOCK_COPY_SIZE);
const_assert_eq!(std::mem::offset_of!(SuperBlockHeader, view_headers), 128);

impl SuperBlockHeader {
    /// The first superblock of a freshly formatted data file: sequence 1, view 0, checkpoint at
    /// the root prepare (op 0).
    pub fn format(config: &Config) -> SuperBlockHeader {
        assert!(config.invalid().is_none());
        let mut superblock = SuperBlockHeader::read_from_bytes(&[0u8; SUPERBLOCK_COPY_SIZE])
            .expect("size matches");
        superblock.version = SUPERBLOCK_VERSION;
        superblock.cluster = config.cluster;
        superblock.sequence = 1;
        superblock.replica = config.replica;
        superblock.replica_count = config.replica_count;
        superblock.journal_slot_count = config.journal_slot_count;
        superblock.message_size_max = config.message_size_max;
        superblock.clients_max = config.clients_max;
        superblock.streams_max = config.streams_max;
        superblock.grid_size = config.grid_size;
        superblock.checkpoint_checksum = Header::root_prepare(config.cluster).checksum;
        superblock.set_checksum();
        superblock
    }

    pub fn calculate_checksum(&self) -> Checksum {
        header::checksum(&self.as_bytes()[6..])
    }

    pub fn set_checksum(&mut self) {
        self.checksum = self.calculate_checksum();
    }

    pub fn valid_checksum(&self) -> bool {
        self.checksum == self.calculate_checksum()
    }

    /// The configuration recorded at format.
    pub fn config(&self) -> Config {
        Config {
            cluster: self.cluster,
            replica: self.replica,
            replica_count: self.replica_count,
            journal_slot_count: self.journal_slot_count,
            message_size_max: self.message_size_max,
            clients_max: self.clients_max,
            grid_size: self.grid_size,
            streams_max: self.streams_max,
        }
    }
}
