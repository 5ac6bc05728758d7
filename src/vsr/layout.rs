//! The data file's zones and the per-cluster configuration that sizes them.
//!
//! `Config` is chosen at `kimberlite format` and stored in every superblock copy; `Layout` is
//! computed from it and gives each zone's offset and size. Both are pure arithmetic: no I/O.

use crate::constants::{
    BLOCK_SIZE, CLIENT_SESSION_RECORD_SIZE, CLIENTS_DEFAULT, CLIENTS_MAX, GRID_SIZE_MAX,
    HEADER_SIZE, JOURNAL_SLOT_COUNT_MAX, JOURNAL_SLOT_COUNT_MIN, MESSAGE_SIZE_MAX,
    MESSAGE_SIZE_MAX_MIN, REPLICAS_MAX, REPLY_SIZE_MAX, SECTOR_SIZE, STREAMS_DEFAULT, STREAMS_MAX,
    SUPERBLOCK_COPIES, SUPERBLOCK_COPY_SIZE,
};
use crate::vsr::header::{ClusterId, ReplicaIndex};

/// The size of a `sync_checkpoint` message, which carries the checkpoint's header, its event
/// store state, and every client session (`crate::vsr::replica::SyncCheckpointBody`).
pub fn sync_checkpoint_size(clients_max: u32) -> usize {
    const BODY_FIXED: usize = HEADER_SIZE + 64;
    HEADER_SIZE + BODY_FIXED + clients_max as usize * CLIENT_SESSION_RECORD_SIZE
}

/// The settings fixed when a data file is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub cluster: ClusterId,
    pub replica: ReplicaIndex,
    pub replica_count: u8,
    pub journal_slot_count: u32,
    pub message_size_max: u32,
    pub clients_max: u32,
    pub grid_size: u64,
    pub streams_max: u32,
}

impl Config {
    /// The production defaults for one replica.
    pub fn new(cluster: ClusterId, replica: ReplicaIndex, replica_count: u8) -> Config {
        Config {
            cluster,
            replica,
            replica_count,
            journal_slot_count: crate::constants::JOURNAL_SLOT_COUNT as u32,
            message_size_max: MESSAGE_SIZE_MAX as u32,
            clients_max: CLIENTS_DEFAULT as u32,
            grid_size: crate::constants::GRID_SIZE_DEFAULT,
            streams_max: STREAMS_DEFAULT,
        }
    }

    /// The smallest sensible cluster, for tests and the simulator: 64 WAL slots (a checkpoint
    /// every 48 ops), 8 KiB messages, 4 client sessions, a 1 MiB grid (so its data file is a few
    /// MiB). Callers override what they need larger.
    pub fn small(cluster: ClusterId, replica: ReplicaIndex, replica_count: u8) -> Config {
        Config {
            journal_slot_count: 64,
            message_size_max: 12288,
            clients_max: 4,
            grid_size: 1024 * 1024,
            ..Config::new(cluster, replica, replica_count)
        }
    }

    /// Why this configuration cannot be formatted or opened, or `None`. Used on operator input
    /// and on bytes read from a superblock alike.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.replica_count == 0 {
            return Some("replica count must be at least 1");
        }
        if usize::from(self.replica_count) > REPLICAS_MAX {
            return Some("replica count must be at most 7");
        }
        if self.replica >= ReplicaIndex(self.replica_count) {
            return Some("replica index must be less than the replica count");
        }
        let slot_count = self.journal_slot_count as usize;
        if !(JOURNAL_SLOT_COUNT_MIN..=JOURNAL_SLOT_COUNT_MAX).contains(&slot_count) {
            return Some("journal slot count out of range");
        }
        if !slot_count.is_multiple_of(crate::constants::JOURNAL_HEADERS_PER_SECTOR) {
            return Some("journal slot count must fill whole header sectors");
        }
        let message_size_max = self.message_size_max as usize;
        if !(MESSAGE_SIZE_MAX_MIN..=MESSAGE_SIZE_MAX).contains(&message_size_max) {
            return Some("message_size_max out of range");
        }
        if !message_size_max.is_multiple_of(SECTOR_SIZE) {
            return Some("message_size_max must be a multiple of the sector size");
        }
        if self.clients_max == 0 || self.clients_max as usize > CLIENTS_MAX {
            return Some("clients_max out of range (1 to 8192)");
        }
        if sync_checkpoint_size(self.clients_max) > message_size_max {
            // State sync sends the session table in one message.
            return Some("clients_max too large for message_size_max: 48 bytes a session must fit");
        }
        if self.grid_size == 0 || !self.grid_size.is_multiple_of(BLOCK_SIZE as u64) {
            return Some("grid size must be a positive multiple of the block size (512 KiB)");
        }
        if self.grid_size > GRID_SIZE_MAX {
            return Some("grid size must be at most 16 TiB");
        }
        if self.streams_max == 0 || self.streams_max > STREAMS_MAX {
            return Some("streams_max out of range (1 to 8388608)");
        }
        if let Some(reason) = crate::state_machine::config_invalid(self.streams_max) {
            return Some(reason);
        }
        None
    }
}

/// The zones of a data file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Superblock,
    WalHeaders,
    WalPrepares,
    ClientReplies,
    Grid,
}

impl Zone {
    pub const ALL: [Zone; 5] =
        [Zone::Superblock, Zone::WalHeaders, Zone::WalPrepares, Zone::ClientReplies, Zone::Grid];

    pub fn name(self) -> &'static str {
        match self {
            Zone::Superblock => "superblock",
            Zone::WalHeaders => "wal_headers",
            Zone::WalPrepares => "wal_prepares",
            Zone::ClientReplies => "client_replies",
            Zone::Grid => "grid",
        }
    }
}

/// Where each zone lives in the data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub journal_slot_count: u64,
    pub message_size_max: u64,
    pub clients_max: u64,
    pub grid_size: u64,
}

impl Layout {
    pub fn new(config: &Config) -> Layout {
        assert!(config.invalid().is_none());
        Layout {
            journal_slot_count: u64::from(config.journal_slot_count),
            message_size_max: u64::from(config.message_size_max),
            clients_max: u64::from(config.clients_max),
            grid_size: config.grid_size,
        }
    }

    pub fn zone_size(&self, zone: Zone) -> u64 {
        match zone {
            Zone::Superblock => (SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE) as u64,
            Zone::WalHeaders => self.journal_slot_count * HEADER_SIZE as u64,
            Zone::WalPrepares => self.journal_slot_count * self.message_size_max,
            Zone::ClientReplies => self.clients_max * REPLY_SIZE_MAX as u64,
            Zone::Grid => self.grid_size,
        }
    }

    /// The zone's first byte. The grid starts on a block boundary so blocks never straddle
    /// more sectors than they need.
    pub fn zone_offset(&self, zone: Zone) -> u64 {
        let mut offset: u64 = 0;
        for other in Zone::ALL {
            if other == Zone::Grid {
                offset = offset.next_multiple_of(BLOCK_SIZE as u64);
            }
            if other == zone {
                break;
            }
            offset += self.zone_size(other);
        }
        assert_eq!(offset % SECTOR_SIZE as u64, 0);
        offset
    }

    /// The absolute offset of `offset` within `zone`.
    pub fn offset(&self, zone: Zone, offset: u64) -> u64 {
        assert!(offset < self.zone_size(zone));
        self.zone_offset(zone) + offset
    }

    /// The size of the whole data file.
    pub fn file_size(&self) -> u64 {
        self.zone_offset(Zone::Grid) + self.zone_size(Zone::Grid)
    }

    /// The zone that holds absolute offset `offset`, if any (the grid's alignment padding
    /// belongs to no zone).
    pub fn zone_of(&self, offset: u64) -> Option<Zone> {
        Zone::ALL.into_iter().find(|zone| {
            let start = self.zone_offset(*zone);
            offset >= start && offset < start + self.zone_size(*zone)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_contiguous_sector_aligned_and_in_order() {
        // Goal: zones never overlap, and each starts on a sector.
        let layout = Layout::new(&Config::new(ClusterId(1), ReplicaIndex(0), 3));
        let mut end = 0;
        for zone in Zone::ALL {
            let offset = layout.zone_offset(zone);
            assert!(offset >= end, "{zone:?} overlaps the zone before it");
            assert_eq!(offset % SECTOR_SIZE as u64, 0);
            end = offset + layout.zone_size(zone);
        }
        assert_eq!(end, layout.file_size());
        assert_eq!(layout.zone_offset(Zone::Grid) % BLOCK_SIZE as u64, 0);
    }

    #[test]
    fn config_rejects_each_bad_setting() {
        // Goal: every bad setting is named, none panics.
        let good = Config::new(ClusterId(1), ReplicaIndex(0), 3);
        assert_eq!(good.invalid(), None);
        type Case = (fn(&mut Config), &'static str);
        let cases: [Case; 10] = [
            (|c| c.replica_count = 0, "replica count must be at least 1"),
            (|c| c.replica_count = 8, "replica count must be at most 7"),
            (|c| c.replica = ReplicaIndex(3), "replica index must be less than the replica count"),
            (|c| c.journal_slot_count = 16, "journal slot count out of range"),
            (|c| c.journal_slot_count = 72, "journal slot count must fill whole header sectors"),
            (|c| c.message_size_max = 4096, "message_size_max out of range"),
            (
                |c| c.message_size_max = 12288 + 512,
                "message_size_max must be a multiple of the sector size",
            ),
            (|c| c.clients_max = 0, "clients_max out of range (1 to 8192)"),
            (
                |c| c.message_size_max = 12288,
                "clients_max too large for message_size_max: 48 bytes a session must fit",
            ),
            (
                |c| c.grid_size = 4096,
                "grid size must be a positive multiple of the block size (512 KiB)",
            ),
        ];
        for (mutate, reason) in cases {
            let mut config = good;
            mutate(&mut config);
            assert_eq!(config.invalid(), Some(reason));
        }
    }
}
