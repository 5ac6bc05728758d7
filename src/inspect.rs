//! `kimberlite inspect`: reads a data file without changing a byte of it and reports the
//! configuration, the health of each superblock copy and the quorum, and a summary of the WAL
//! (ops present, views, and every slot's recovery decision), and the grid blocks below the
//! checkpoint's grid head that fail their own checks (checksum, address, kind, version,
//! cluster), with the streams table's checksum of block checksums.
//!
//! The file is usable if the superblock has a quorum and the journal has no slot that only a
//! peer could repair in a single-replica cluster (`Decision::Unrecoverable`), nor a bad grid
//! block; a multi-replica file with slots or blocks to repair is usable, since its peers will
//! repair them (grid blocks by address, at open, on a read, or by the scrubber).

use std::fmt::Write as _;
use std::path::Path;

use crate::constants::{BLOCK_SIZE, JOURNAL_IOPS_READ_MAX};
use crate::io::IoStorage;
use crate::state_machine::types::BlockKind;
use crate::state_machine::{Limits, grid_block_invalid, grid_room_blocks, root_lists_read};
use crate::stdx::json::Json;
use crate::vsr::client_sessions::ClientSessionRecord;
use crate::vsr::header::Checksum;
use crate::vsr::header::ClientId;
use crate::vsr::header::View;
use crate::vsr::journal::{Decision, EntrySummary, Journal, RecoveryReport};
use crate::vsr::layout::{Layout, Zone};
use crate::vsr::message_pool::MessagePool;
use crate::vsr::superblock::{SuperBlock, SuperBlockHeader};

/// What `inspect_file` found: the text to print, the same as one JSON object
/// (`inspect --format=json`), and whether the file can be started.
pub struct InspectReport {
    pub text: String,
    pub json: String,
    pub usable: bool,
}

/// Slots listed one by one in the WAL section (the rest are only counted).
const SLOTS_LISTED_MAX: usize = 32;

/// Inspects the data file at `path`. Errors that prevent reading it at all (no such file, not
/// openable with direct I/O) are returned as one line.
pub fn inspect_file(path: &Path) -> Result<InspectReport, String> {
    let data_file = crate::io::data_file::open(path, true).map_err(|error| error.to_string())?;
    let size_bytes = data_file.size_bytes;
    let mut storage = IoStorage::new(data_file.file, false)
        .map_err(|error| format!("{}: io_uring: {error}", path.display()))?;
    let mut text = String::new();
    let mut json = Json::new();
    let _ = writeln!(text, "data file: {} ({size_bytes} bytes)", path.display());
    json.text("path", &path.display().to_string()).number("size_bytes", size_bytes);
    let mut superblock = SuperBlock::new();
    superblock.open_read_only(&mut storage);
    let result = superblock.complete_blocking(&mut storage);
    let _ = writeln!(text, "\nsuperblock copies:");
    let mut copies = Vec::new();
    for (copy, health) in superblock.copies_health().iter().enumerate() {
        let _ = writeln!(text, "  copy {copy}: {health}");
        copies.push(health.to_string());
    }
    let mut quorum = Json::new();
    quorum.texts("copies", &copies);
    if let Err(error) = result {
        let _ = writeln!(text, "  quorum: none: {error}");
        quorum.text("quorum_error", &error.to_string());
        json.object("superblock", quorum);
        return Ok(InspectReport::finish(text, json, false));
    }
    let working = *superblock.working();
    let _ = writeln!(
        text,
        "  quorum: sequence {} (checksum {:08x})",
        working.sequence, working.checksum
    );
    quorum.number("sequence", working.sequence);
    json.object("superblock", quorum);
    write_config(&mut text, &mut json, &working, superblock.working_sessions());
    let layout = Layout::new(&working.config());
    if size_bytes < layout.file_size() {
        let _ = writeln!(
            text,
            "\nfile too short: {size_bytes} bytes, the layout needs {}",
            layout.file_size()
        );
        json.text("error", "file too short").number("size_needed", layout.file_size());
        return Ok(InspectReport::finish(text, json, false));
    }
    let mut journal = Journal::new(&working.config());
    let read_pool = MessagePool::new(JOURNAL_IOPS_READ_MAX, working.message_size_max as usize);
    let report = journal
        .inspect_blocking(
            &mut storage,
            working.vsr_state.checkpoint_op,
            working.replica_count,
            &read_pool,
        )
        .map_err(|error| format!("{}: reading the WAL: {error}", path.display()))?;
    write_journal(&mut text, &mut json, report);
    let grid_usable = write_grid(&mut text, &mut json, path, (&working, &layout))?;
    Ok(InspectReport::finish(text, json, report.usable && grid_usable))
}

impl InspectReport {
    fn finish(text: String, mut json: Json, usable: bool) -> InspectReport {
        json.boolean("usable", usable);
        InspectReport { text, json: json.finish(), usable }
    }
}

/// Bad grid blocks listed one by one (the rest are only counted).
const BLOCKS_LISTED_MAX: usize = 32;

/// The checkpoint's blocks (root first; the last is a tail if `tail`) and the free ones, as
/// its root lists them, or why they could not be read.
struct CheckpointBlocks {
    metadata: Vec<u32>,
    /// The checksum each of `metadata` must have (the root's from the superblock).
    checksums: Vec<Checksum>,
    free: Vec<u32>,
    tail: bool,
}

fn checkpoint_blocks(
    file: &std::fs::File,
    working: &SuperBlockHeader,
    layout: &Layout,
) -> Result<CheckpointBlocks, &'static str> {
    use std::os::unix::fs::FileExt;
    let state = &working.vsr_state;
    let mut blocks = CheckpointBlocks {
        metadata: Vec::new(),
        checksums: Vec::new(),
        free: Vec::new(),
        tail: false,
    };
    if state.streams_table_blocks == 0 {
        return Ok(blocks);
    }
    let root = state.streams_table_address;
    if root >= working.config().grid_size / BLOCK_SIZE as u64 {
        return Err("the streams table's root is beyond the grid");
    }
    let mut block = vec![0u8; BLOCK_SIZE];
    let offset = layout.offset(Zone::Grid, root * BLOCK_SIZE as u64);
    file.read_exact_at(&mut block, offset).map_err(|_| "the root block is unreadable")?;
    if let Some(reason) = grid_block_invalid(&block, working.cluster, root) {
        return Err(reason);
    }
    let header = crate::state_machine::block::block_header(&block);
    if header.kind != BlockKind::StreamsTable as u8 {
        return Err("the root is not a streams-table block");
    }
    blocks.metadata.push(root as u32);
    blocks.checksums.push(state.streams_table_checksum);
    let limits = Limits::new(&working.config());
    let lists = (&mut blocks.metadata, &mut blocks.checksums);
    let (table_root, _) = root_lists_read(&block, &limits, lists, &mut blocks.free)?;
    if table_root.grid_head != state.grid_head {
        return Err("the root's grid head is not the checkpoint's");
    }
    blocks.tail = table_root.tail_blocks == 1;
    Ok(blocks)
}

/// Verifies every grid block below the checkpoint's grid head but the free ones, and tells how
/// much of the grid is in use; returns whether the file is usable as far as the grid goes.
fn write_grid(
    text: &mut String,
    json: &mut Json,
    path: &Path,
    (working, layout): (&SuperBlockHeader, &Layout),
) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let _ = writeln!(text, "\ngrid:");
    let root = working.vsr_state.streams_table_address as u32;
    let mut root_bad = false;
    let mut grid = Json::new();
    let blocks = checkpoint_blocks(&file, working, layout).unwrap_or_else(|reason| {
        let _ = writeln!(text, "  streams table root (block {root}): {reason}");
        grid.text("root_error", reason);
        root_bad = true;
        let checksums = vec![working.vsr_state.streams_table_checksum];
        CheckpointBlocks { metadata: vec![root], checksums, free: Vec::new(), tail: false }
    });
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut bad = 0;
    let mut bad_blocks = Vec::new();
    let mut named = vec![Checksum::ZERO; blocks.metadata.len()];
    let grid_head = working.vsr_state.grid_head;
    // By address: each of the checkpoint's blocks' index in its list (a grid may be large).
    let listed: std::collections::HashMap<u64, usize> =
        blocks.metadata.iter().enumerate().map(|(index, at)| (u64::from(*at), index)).collect();
    for address in 0..grid_head {
        if blocks.free.binary_search(&(address as u32)).is_ok() {
            continue;
        }
        let offset = layout.offset(Zone::Grid, address * BLOCK_SIZE as u64);
        let invalid = match file.read_exact_at(&mut block, offset) {
            Err(_) => Some("block: unreadable"),
            Ok(()) => grid_block_invalid(&block, working.cluster, address),
        };
        let index = listed.get(&address).copied();
        if let Some(index) = index {
            let bytes = block.get(..size_of::<Checksum>()).expect("a block is longer");
            named[index] = Checksum::from_le_bytes(bytes.try_into().expect("16 bytes"));
        }
        let Some(reason) = invalid else { continue };
        bad += 1;
        let role = block_role(&blocks, index, &block);
        bad_block_write(text, &mut bad_blocks, (bad, address), (role, reason));
    }
    let table_mismatch = root_bad || named != blocks.checksums;
    if table_mismatch {
        let _ = writeln!(text, "  streams table: a block is not the one its checkpoint names");
    }
    write_grid_use(text, &mut grid, working, &blocks);
    let free = blocks.free.len() as u64;
    let _ = writeln!(text, "  blocks verified: {}, bad: {bad}", grid_head - free);
    grid.number("blocks_verified", grid_head - free).number("blocks_bad", bad as u64);
    grid.objects("bad_blocks", bad_blocks).boolean("table_mismatch", table_mismatch);
    let sound = bad == 0 && !table_mismatch;
    let usable = sound || working.replica_count > 1;
    let verdict = match (sound, usable) {
        (true, _) => "sound",
        (false, true) => "bad blocks, repairable from peers",
        (false, false) => "bad blocks and no peer to repair them: NOT usable",
    };
    let _ = writeln!(text, "  grid: {verdict}");
    grid.text("verdict", verdict);
    json.object("grid", grid);
    Ok(usable)
}

/// Lists the `bad`th bad block, at `address`, as long as `BLOCKS_LISTED_MAX` allows.
fn bad_block_write(
    text: &mut String,
    listed: &mut Vec<Json>,
    (bad, address): (usize, u64),
    (role, reason): (&str, &str),
) {
    if bad <= BLOCKS_LISTED_MAX {
        let _ = writeln!(text, "  block {address} ({role}): BAD: {reason}");
        let mut block = Json::new();
        block.number("address", address).text("role", role).text("reason", reason);
        listed.push(block);
    } else if bad == BLOCKS_LISTED_MAX + 1 {
        let _ = writeln!(text, "  ...");
    }
}

/// What a bad block was: one of the checkpoint's (the `index`th), or else what its header says.
fn block_role(blocks: &CheckpointBlocks, index: Option<usize>, block: &[u8]) -> &'static str {
    let last = index.is_some_and(|index| index + 1 == blocks.metadata.len());
    let kind = crate::state_machine::block::block_header(block).kind;
    match (index, BlockKind::from_u8(kind)) {
        (Some(_), _) if last && blocks.tail => "tail",
        (Some(_), _) => "streams table",
        (None, Some(BlockKind::Events)) => "events",
        (None, Some(_)) => "an older checkpoint's",
        (None, None) => "unknown kind",
    }
}

/// How much of the grid the checkpoint uses, and the room left for events.
fn write_grid_use(
    text: &mut String,
    grid: &mut Json,
    working: &SuperBlockHeader,
    blocks: &CheckpointBlocks,
) {
    let free = blocks.free.len() as u64;
    let grid_head = working.vsr_state.grid_head;
    let grid_blocks = working.config().grid_size / BLOCK_SIZE as u64;
    let limits = Limits::new(&working.config());
    // Before its first checkpoint a cluster has recorded no grid: its replicas' own stand.
    let grid_limit = match working.vsr_state.grid_blocks_limit {
        0 => grid_blocks,
        limit => limit,
    };
    let room = grid_room_blocks(&limits, grid_limit, grid_head, blocks.free.len());
    let _ = writeln!(
        text,
        "  in use: {} of {grid_blocks} blocks ({} for the checkpoint, {free} free for the next \
         one); the cluster's grid at the checkpoint: {} blocks; room for events before \
         storage_full: {room} blocks ({} MiB)",
        grid_head - free,
        blocks.metadata.len(),
        grid_limit,
        (room * BLOCK_SIZE as u64) >> 20,
    );
    grid.number("blocks", grid_blocks).number("blocks_in_use", grid_head - free);
    grid.number("cluster_blocks", grid_limit);
    grid.number("checkpoint_blocks", blocks.metadata.len() as u64).number("free_blocks", free);
    grid.number("room_blocks", room).number("room_bytes", room * BLOCK_SIZE as u64);
}

fn write_config(
    text: &mut String,
    json: &mut Json,
    working: &SuperBlockHeader,
    sessions: &[ClientSessionRecord],
) {
    let config = working.config();
    let mut section = Json::new();
    section.number("cluster", config.cluster.get()).number("replica", config.replica.get().into());
    section.number("replica_count", config.replica_count.into());
    section.number("journal_slot_count", config.journal_slot_count.into());
    section.number("message_size_max", config.message_size_max.into());
    section.number("clients_max", config.clients_max.into());
    section.number("streams_max", config.streams_max.into()).number("grid_size", config.grid_size);
    json.object("config", section);
    let layout = Layout::new(&config);
    let _ = writeln!(text, "\nconfig:");
    let _ = writeln!(text, "  cluster: {}", config.cluster);
    let _ = writeln!(text, "  replica: {} of {}", config.replica, config.replica_count);
    let _ = writeln!(text, "  journal_slot_count: {}", config.journal_slot_count);
    let _ = writeln!(text, "  message_size_max: {}", config.message_size_max);
    let _ = writeln!(text, "  clients_max: {}", config.clients_max);
    let _ = writeln!(text, "  streams_max: {}", config.streams_max);
    let _ = writeln!(text, "  grid_size: {}", config.grid_size);
    let _ = writeln!(text, "\nzones:");
    for zone in Zone::ALL {
        let _ = writeln!(
            text,
            "  {:<15} offset {:>14}  size {:>14}",
            zone.name(),
            layout.zone_offset(zone),
            layout.zone_size(zone)
        );
    }
    let _ = writeln!(text, "\nvsr state:");
    let _ = writeln!(
        text,
        "  view: {}  log_view: {}",
        working.vsr_state.view, working.vsr_state.log_view
    );
    if working.vsr_state.log_lost != 0 {
        let _ =
            writeln!(text, "  log_lost: formatted with --rejoin; recovering the log from peers");
    }
    let _ = writeln!(text, "  commit_max: {}", working.vsr_state.commit_max);
    let _ = writeln!(
        text,
        "  checkpoint: op {} (prepare checksum {:08x}), grid head {}, \
         streams table at block {} ({} blocks)",
        working.vsr_state.checkpoint_op,
        working.vsr_state.checkpoint_checksum,
        working.vsr_state.grid_head,
        working.vsr_state.streams_table_address,
        working.vsr_state.streams_table_blocks
    );
    let sessions = sessions.iter().filter(|record| record.client != ClientId(0)).count();
    let _ = writeln!(text, "  client sessions: {sessions} of {}", working.clients_max);
    let state = &working.vsr_state;
    let mut section = Json::new();
    section.number("view", state.view.0.into()).number("log_view", state.log_view.0.into());
    section.boolean("log_lost", state.log_lost != 0).number("commit_max", state.commit_max.0);
    section.number("checkpoint_op", state.checkpoint_op.0).number("grid_head", state.grid_head);
    section.number("streams_table_address", state.streams_table_address);
    section.number("streams_table_blocks", state.streams_table_blocks.into());
    section.number("client_sessions", sessions as u64);
    json.object("vsr_state", section);
}

fn write_journal(text: &mut String, json: &mut Json, report: &RecoveryReport) {
    let _ = writeln!(text, "\nwal:");
    let mut section = Json::new();
    match (report.op_min, report.op_max) {
        (Some(op_min), Some(op_max)) => {
            let _ = writeln!(text, "  ops present: {op_min}..={op_max}");
            section.number("op_min", op_min.0).number("op_max", op_max.0);
        }
        _ => {
            let _ = writeln!(text, "  ops present: none");
        }
    }
    let mut view_min = View::MAX;
    let mut view_max = View(0);
    for slot in &report.slots {
        if let EntrySummary::Prepare { view, .. } = slot.prepare {
            view_min = view_min.min(view);
            view_max = view_max.max(view);
        }
    }
    if view_min <= view_max {
        let _ = writeln!(text, "  views: {view_min}..={view_max}");
    }
    let _ = writeln!(text, "  slots by recovery decision:");
    let mut decisions = Json::new();
    for decision in Decision::ALL {
        let count = report.count(decision);
        if count > 0 {
            let _ = writeln!(text, "    {:<14} {count}", decision.name());
            decisions.number(decision.name(), count as u64);
        }
    }
    section.object("slots_by_decision", decisions).boolean("usable", report.usable);
    json.object("wal", section);
    let mut listed = 0;
    for (slot, entry) in report.slots.iter().enumerate() {
        if matches!(entry.decision, Decision::Eql | Decision::Nil) {
            continue;
        }
        if listed == SLOTS_LISTED_MAX {
            let _ = writeln!(text, "    ...");
            break;
        }
        listed += 1;
        let _ = writeln!(
            text,
            "    slot {slot}: case @{} -> {} (header {:?}, prepare {:?})",
            entry.case.name(),
            entry.decision.name(),
            entry.header,
            entry.prepare
        );
    }
    let verdict = if report.usable { "usable" } else { "NOT usable" };
    let _ = writeln!(text, "  journal: {verdict}");
}
