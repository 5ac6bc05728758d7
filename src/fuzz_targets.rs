//! Fuzz target bodies, shared by the cargo-fuzz crate in `fuzz/` and by the corpus replay test
//! that runs under `cargo test`, so CI replays every committed input.
//!
//! Each target feeds untrusted bytes to a validator and checks what must hold whatever the
//! bytes: no panic, and anything accepted is internally consistent.

use std::cell::RefCell;

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{
    FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT, HEADER_SIZE, JOURNAL_IOPS_READ_MAX,
    JOURNAL_IOPS_WRITE_MAX, PIPELINE_PREPARE_QUEUE_MAX, SECTOR_SIZE, SUPERBLOCK_COPIES,
    SUPERBLOCK_COPY_SIZE, SUPERBLOCK_HEADER_SIZE,
};
use crate::sim::storage::MemoryStorage;
use crate::vsr::format::format;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::{ClusterId, Command, Header, Op, Operation, View};
use crate::vsr::journal::{
    Case, Decision, Entry, EntrySummary, Event, Journal, RecoveryContext, RecoveryReport,
    RingContext, Slot, recovery_case, reserved_header,
};
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::Storage;
use crate::vsr::superblock::{SuperBlock, SuperBlockHeader};

/// Header decoding and validation. The fuzzer never forges a checksum, so the input is also
/// re-checksummed and validated again, which drives `invalid()` through every command.
pub fn header_decode(data: &[u8]) {
    if let Ok(header) = Header::decode(data) {
        assert!(header.valid_checksum());
        assert_eq!(header.invalid(), None);
        assert_eq!(header.as_bytes(), &data[..HEADER_SIZE]);
    }
    let Ok((mut header, _)) = Header::read_from_prefix(data) else {
        assert!(data.len() < HEADER_SIZE);
        return;
    };
    header.set_checksum();
    match Header::decode(header.as_bytes()) {
        Ok(decoded) => {
            assert_eq!(decoded, header);
            assert!(decoded.command().is_some());
            assert!(decoded.size as usize >= HEADER_SIZE);
        }
        Err(reason) => {
            assert!(!reason.is_empty());
            assert_eq!(header.invalid(), Some(reason));
        }
    }
}

/// Superblock open from arbitrary bytes. The first input byte picks the starting image: odd
/// means the raw bytes are the whole superblock zone; even means a valid image (a formatted
/// superblock after a few updates) with the input applied as byte patches, which reaches the
/// quorum and chain rules far more often than random sectors do.
pub fn superblock_open(data: &[u8]) {
    let Some((mode, input)) = data.split_first() else {
        return;
    };
    let zone_size = SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE;
    let mut storage = MemoryStorage::new(zone_size as u64);
    if mode % 2 == 1 {
        for (index, byte) in storage.bytes_mut().iter_mut().enumerate() {
            *byte = input.get(index % input.len().max(1)).copied().unwrap_or(0);
        }
    } else {
        superblock_valid_image(&mut storage, mode / 2 % 4);
        for patch in input.chunks_exact(3) {
            let offset = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % zone_size;
            storage.bytes_mut()[offset] ^= patch[2] | 1;
        }
    }
    let mut read_only = SuperBlock::new();
    read_only.open_read_only(&mut storage);
    let read_only_result = read_only.complete_blocking(&mut storage);
    match SuperBlock::open_blocking(&mut storage) {
        Ok(superblock) => {
            assert!(read_only_result.is_ok());
            let working = superblock.working();
            assert!(working.valid_checksum());
            assert_eq!(working.invalid(), None);
            assert_eq!(working, read_only.working());
            // After open, every copy was repaired to the working superblock.
            let reopened = SuperBlock::open_blocking(&mut storage).expect("repaired file opens");
            assert_eq!(reopened.working(), working);
        }
        Err(error) => {
            assert!(read_only_result.is_err());
            assert!(!error.to_string().contains('\n'));
        }
    }
}

/// Formats the superblock zone and applies `updates` updates.
fn superblock_valid_image(storage: &mut MemoryStorage, updates: u8) {
    let config = Config::new(ClusterId(5), ReplicaIndex(1), 3);
    let mut superblock = SuperBlockHeader::format(&config);
    for copy in 0..SUPERBLOCK_COPIES {
        superblock.copy = copy as u16;
        let offset = copy * SUPERBLOCK_COPY_SIZE;
        storage.bytes_mut()[offset..offset + SUPERBLOCK_HEADER_SIZE]
            .copy_from_slice(superblock.as_bytes());
    }
    let mut superblock = SuperBlock::open_blocking(storage).expect("formatted image opens");
    for update in 0..updates {
        let mut state = superblock.working().vsr_state();
        state.view = View(state.view.get() + u32::from(update) + 1);
        state.commit_max += 3;
        superblock.update_blocking(storage, &state, None).expect("update of a healthy image");
    }
}

const JOURNAL_CLUSTER: ClusterId = ClusterId(11);
const JOURNAL_SLOT_COUNT: u64 = 64;
const JOURNAL_MESSAGE_SIZE_MAX: usize = 12288;
/// A body that makes a prepare span two sectors, so that a crash can tear it.
const JOURNAL_BODY_SIZE_TWO_SECTORS: usize = 6000;
/// The prepares the starting image holds at most (more than a ring, so that it wraps).
const JOURNAL_OPS_MAX: u8 = 100;

/// Journal recovery on a patched data file. The input is 3 bytes of starting image then 4-byte
/// patches (`journal_patch`) on the WAL zones:
///
/// - byte 0: the replica count (`1 + byte % 3`) and the checkpoint, `byte / 3 % 16` above
///   `op_last - slot_count - 8` (below 8, the ring holds ops beyond the checkpoint's window);
/// - byte 1: how many prepares are written through the journal (`byte % JOURNAL_OPS_MAX`);
/// - byte 2: how many of the last of them are still in flight at a crash (`byte % 9`, at most
///   a pipeline), how many completions land first, and whether the crash tears the rest.
///
/// Whatever the bytes: recovery does not panic, every slot's decision follows the table,
/// `usable` is false exactly when a slot is unrecoverable, an unusable journal is left as
/// found, inspection reports the same without writing, and a usable one serves every clean
/// prepare intact and recovers a second time with nothing left to fix or cut.
pub fn journal_recover(data: &[u8]) {
    journal_recovery_case_of_raw_entries(data);
    let [mode, op_count, crash, patches @ ..] = data else {
        return;
    };
    let config = journal_config(1 + mode % 3);
    let op_last = u64::from(op_count % JOURNAL_OPS_MAX);
    let (mut storage, durable) = journal_image(&config, Op(op_last), *crash);
    let layout = Layout::new(&config);
    for patch in patches.chunks_exact(4) {
        journal_patch(&mut storage, &layout, [patch[0], patch[1], patch[2], patch[3]]);
    }
    // From a checkpoint the ring has run past (a rolled-back superblock) to one ahead of it.
    let checkpoint_op = op_last.saturating_sub(JOURNAL_SLOT_COUNT + 8) + u64::from(mode / 3 % 16);
    let report = journal_recover_check(&mut storage, &config, Op(checkpoint_op));
    // A crash alone, under a checkpoint the replica could have reached (committed, with every
    // op written inside its window), never stops a replica nor loses a durable prepare.
    let op_committed = Op(durable.iter().skip(1).take_while(|durable| **durable).count() as u64);
    let reachable =
        checkpoint_op <= op_committed.get() && op_last <= checkpoint_op + JOURNAL_SLOT_COUNT;
    if patches.len() >= 4 || !reachable {
        return;
    }
    assert!(report.usable, "a crash with ops after {op_committed} in flight made it unusable");
    let op_kept_min = (op_last + 1).saturating_sub(JOURNAL_SLOT_COUNT);
    for op in (op_kept_min..=op_last).filter(|op| durable[*op as usize]) {
        let found = report.slots[(op % JOURNAL_SLOT_COUNT) as usize];
        assert_eq!(found.decision, Decision::Eql, "durable op {op}: {found:?}");
        assert!(matches!(found.prepare, EntrySummary::Prepare { op: kept, .. } if kept == Op(op)));
    }
}

/// The small cluster the journal target runs: one ring of 64 slots of 8 KiB.
fn journal_config(replica_count: u8) -> Config {
    let config = Config::small(JOURNAL_CLUSTER, ReplicaIndex(0), replica_count);
    assert_eq!(u64::from(config.journal_slot_count), JOURNAL_SLOT_COUNT);
    assert_eq!(config.message_size_max as usize, JOURNAL_MESSAGE_SIZE_MAX);
    config
}

/// A formatted data file with ops `1..=op_last` written through the journal, the last
/// `crash % 9` of them still in flight at a crash, and which ops were reported durable.
fn journal_image(config: &Config, op_last: Op, crash: u8) -> (MemoryStorage, Vec<bool>) {
    let mut storage = journal_formatted(config);
    let read_pool = MessagePool::new(JOURNAL_IOPS_READ_MAX, JOURNAL_MESSAGE_SIZE_MAX);
    let pool = MessagePool::new(JOURNAL_IOPS_WRITE_MAX, JOURNAL_MESSAGE_SIZE_MAX);
    let mut journal = Journal::new(config);
    let report = journal.recover_blocking(&mut storage, Op(0), config.replica_count, &read_pool);
    assert!(report.expect("memory writes do not fail").usable);
    let mut durable = vec![false; op_last.get() as usize + 1];
    let mut events_drain = |journal: &mut Journal| {
        while let Some(event) = journal.poll_event() {
            let Event::PrepareDurable { op, .. } = event else { panic!("{event:?}") };
            durable[op.get() as usize] = true;
        }
    };
    let in_flight = u64::from(crash % 9).min(op_last.get());
    let op_in_flight_min = op_last - in_flight + 1;
    for op in 1..op_in_flight_min.get() {
        journal.write_prepare(&mut storage, journal_prepare(&pool, Op(op)));
        if op % PIPELINE_PREPARE_QUEUE_MAX as u64 == 0 || op + 1 == op_in_flight_min.get() {
            journal.run_until_idle(&mut storage);
            events_drain(&mut journal);
        }
    }
    if in_flight > 0 {
        storage.shuffle_completions(u64::from(crash));
        for op in op_in_flight_min.through(op_last) {
            journal.write_prepare(&mut storage, journal_prepare(&pool, op));
        }
        let mut completions = Vec::with_capacity(1);
        for _ in 0..crash / 9 % 4 * in_flight as u8 / 2 {
            storage.poll(&mut completions, 1);
            for completion in completions.drain(..) {
                journal.on_completion(&mut storage, completion);
            }
            events_drain(&mut journal);
        }
        if crash & 0x80 == 0 {
            storage.crash_tearing_writes(1);
        } else {
            storage.crash();
        }
    }
    (storage, durable)
}

thread_local! {
    /// The formatted file of each replica count (index `replica_count - 1`), made once: the
    /// fuzzer runs many times faster than if every input formatted 2 MiB again.
    static JOURNAL_FORMATTED: RefCell<[Option<Vec<u8>>; 3]> =
        const { RefCell::new([None, None, None]) };
}

/// A data file freshly formatted with `config`.
fn journal_formatted(config: &Config) -> MemoryStorage {
    assert_eq!(*config, journal_config(config.replica_count), "the cache holds only these");
    let layout = Layout::new(config);
    let mut storage = MemoryStorage::new(layout.file_size());
    JOURNAL_FORMATTED.with(|formatted| {
        let mut formatted = formatted.borrow_mut();
        let image = formatted[usize::from(config.replica_count) - 1].get_or_insert_with(|| {
            let mut storage = MemoryStorage::new(layout.file_size());
            let pool = MessagePool::new(FORMAT_WRITES_IN_FLIGHT, FORMAT_WRITE_SIZE);
            format(&mut storage, &pool, config).expect("memory writes do not fail");
            storage.bytes().to_vec()
        });
        storage.bytes_mut().copy_from_slice(image);
    });
    storage
}

/// A valid prepare of `op`; every third one spans two sectors.
fn journal_prepare(pool: &MessagePool, op: Op) -> Message {
    let body_size = if op.get().is_multiple_of(3) { JOURNAL_BODY_SIZE_TWO_SECTORS } else { 100 };
    let header = journal_prepare_header(op, View(0), body_size);
    let mut message = pool.get();
    let buffer = message.buffer_mut_unique();
    buffer.fill(0);
    buffer[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    journal_prepare_body(op, &mut buffer[HEADER_SIZE..HEADER_SIZE + body_size]);
    message
}

fn journal_prepare_body(op: Op, body: &mut [u8]) {
    for (index, byte) in body.iter_mut().enumerate() {
        *byte = (op.get() as usize * 31 + index) as u8;
    }
}

/// The header of a valid prepare of `op` in `view` with a body of `body_size` bytes.
fn journal_prepare_header(op: Op, view: View, body_size: usize) -> Header {
    assert!(body_size <= JOURNAL_MESSAGE_SIZE_MAX - HEADER_SIZE);
    let mut body = [0; JOURNAL_MESSAGE_SIZE_MAX];
    journal_prepare_body(op, &mut body[..body_size]);
    let mut header = Header::new(Command::Prepare, JOURNAL_CLUSTER);
    header.op = op;
    header.commit = op.saturating_sub(1);
    header.timestamp = op.get();
    header.view = view;
    header.operation = Operation::Noop as u8;
    header.op_min = Op(1); // grid_blocks
    header.size = (HEADER_SIZE + body_size) as u32;
    header.set_checksum_body(&body[..body_size]);
    header.set_checksum();
    header
}

/// Applies one patch `[kind, a, b, c]` to the WAL zones: a flipped byte, a misdirected write,
/// an entry of another wrap of the ring (stale, or from a later checkpoint), or a torn sector.
fn journal_patch(storage: &mut MemoryStorage, layout: &Layout, patch: [u8; 4]) {
    let [kind, a, b, c] = patch;
    let headers = layout.zone_offset(Zone::WalHeaders) as usize;
    let prepares = layout.zone_offset(Zone::WalPrepares) as usize;
    let slot_size = JOURNAL_MESSAGE_SIZE_MAX;
    let slot_a = usize::from(a) % JOURNAL_SLOT_COUNT as usize;
    let slot_b = usize::from(b) % JOURNAL_SLOT_COUNT as usize;
    let bytes = storage.bytes_mut();
    match kind % 8 {
        0..=3 => {
            let offset = journal_patch_offset(layout, u16::from_le_bytes([a, b]));
            bytes[offset] ^= c.max(1);
        }
        4 => {
            // One sector of slot a's prepare lands in slot b.
            let sector = usize::from(c % 2) * SECTOR_SIZE;
            let from = prepares + slot_a * slot_size + sector;
            let to = prepares + slot_b * slot_size + sector;
            bytes.copy_within(from..from + SECTOR_SIZE, to);
        }
        5 if c % 2 == 0 => {
            // Slot a's prepare header lands as slot b's redundant header.
            let from = prepares + slot_a * slot_size;
            let to = headers + slot_b * HEADER_SIZE;
            bytes.copy_within(from..from + HEADER_SIZE, to);
        }
        5 => {
            // A header sector lands in the place of another one.
            let sector_count = layout.zone_size(Zone::WalHeaders) as usize / SECTOR_SIZE;
            let from = headers + usize::from(a) % sector_count * SECTOR_SIZE;
            let to = headers + usize::from(b) % sector_count * SECTOR_SIZE;
            bytes.copy_within(from..from + SECTOR_SIZE, to);
        }
        6 => {
            // Slot b gets a valid entry of op `slot_b + slot_count * (a % 4)`.
            let op = slot_b as u64 + JOURNAL_SLOT_COUNT * u64::from(a % 4);
            let header = journal_prepare_header(Op(op), View(u32::from(c / 2 % 2)), 100);
            if c % 2 == 0 {
                let to = headers + slot_b * HEADER_SIZE;
                bytes[to..to + HEADER_SIZE].copy_from_slice(header.as_bytes());
            } else {
                let to = prepares + slot_b * slot_size;
                bytes[to..to + SECTOR_SIZE].fill(0);
                bytes[to..to + HEADER_SIZE].copy_from_slice(header.as_bytes());
                journal_prepare_body(Op(op), &mut bytes[to + HEADER_SIZE..to + HEADER_SIZE + 100]);
            }
        }
        _ => {
            // A torn or lost sector of slot a's prepare.
            let sector = usize::from(b % 2) * SECTOR_SIZE;
            let from = prepares + slot_a * slot_size + sector;
            bytes[from..from + SECTOR_SIZE].fill(c);
        }
    }
}

/// Maps `position` onto the WAL: the first values (as many as the ring has bytes) are the header
/// ring byte for byte; the rest are split between the prepare slots, each slot's share covering
/// its header and the start of its body byte for byte and the rest of the slot more sparsely.
fn journal_patch_offset(layout: &Layout, position: u16) -> usize {
    let headers = layout.zone_offset(Zone::WalHeaders) as usize;
    let prepares = layout.zone_offset(Zone::WalPrepares) as usize;
    let header_ring_size = layout.zone_size(Zone::WalHeaders) as usize;
    let position = usize::from(position);
    if position < header_ring_size {
        return headers + position;
    }
    let slot_share = (usize::from(u16::MAX) + 1 - header_ring_size) / JOURNAL_SLOT_COUNT as usize;
    let dense = 2 * HEADER_SIZE;
    let stride = (JOURNAL_MESSAGE_SIZE_MAX - dense) / (slot_share - dense);
    let slot = (position - header_ring_size) / slot_share % JOURNAL_SLOT_COUNT as usize;
    let within = (position - header_ring_size) % slot_share;
    let offset = if within < dense { within } else { dense + (within - dense) * stride };
    assert!(offset < JOURNAL_MESSAGE_SIZE_MAX);
    prepares + slot * JOURNAL_MESSAGE_SIZE_MAX + offset
}

/// Inspects, recovers and (if usable) recovers again, checking each step. Returns the first
/// recovery's report.
fn journal_recover_check(
    storage: &mut MemoryStorage,
    config: &Config,
    checkpoint_op: Op,
) -> RecoveryReport {
    let replica_count = config.replica_count;
    let read_pool = MessagePool::new(JOURNAL_IOPS_READ_MAX, JOURNAL_MESSAGE_SIZE_MAX);
    let wal = journal_wal_range(config);
    let wal_before = storage.bytes()[wal.clone()].to_vec();

    let mut inspector = Journal::new(config);
    let inspected = inspector.inspect_blocking(storage, checkpoint_op, replica_count, &read_pool);
    let inspected = inspected.expect("inspection does not write").clone();
    assert!(storage.bytes()[wal.clone()] == wal_before[..], "inspection wrote");
    drop(inspector);

    let mut journal = Journal::new(config);
    let report = journal.recover_blocking(storage, checkpoint_op, replica_count, &read_pool);
    let report = report.expect("memory writes do not fail").clone();
    assert_eq!(report, inspected);
    journal_check_report(&report);
    if !report.usable {
        assert!(storage.bytes()[wal] == wal_before[..], "an unusable journal was written");
        return report;
    }
    journal_check_reads(&mut journal, storage);
    drop(journal);
    let mut journal = Journal::new(config);
    let again = journal.recover_blocking(storage, checkpoint_op, replica_count, &read_pool);
    let again = again.expect("memory writes do not fail");
    journal_check_report(again);
    for (first, second) in report.slots.iter().zip(&again.slots) {
        let expected = match (first.decision, first.prepare) {
            (Decision::Fix, EntrySummary::Reserved) => Decision::Nil,
            (Decision::Fix | Decision::Eql, _) => Decision::Eql,
            (Decision::Nil | Decision::Cut | Decision::CutTorn, _) => Decision::Nil,
            (decision, _) => decision,
        };
        assert_eq!(second.decision, expected, "{first:?} then {second:?}");
    }
    report
}

/// The byte range of both WAL zones in the data file.
fn journal_wal_range(config: &Config) -> std::ops::Range<usize> {
    let layout = Layout::new(config);
    let start = layout.zone_offset(Zone::WalHeaders) as usize;
    let end =
        (layout.zone_offset(Zone::WalPrepares) + layout.zone_size(Zone::WalPrepares)) as usize;
    assert_eq!(
        start as u64 + layout.zone_size(Zone::WalHeaders),
        layout.zone_offset(Zone::WalPrepares)
    );
    start..end
}

/// Every slot has a decision, the one the table gives its case (or cut_torn for a torn @B or
/// @C), and the report is usable exactly when no slot is unrecoverable.
fn journal_check_report(report: &RecoveryReport) {
    assert_eq!(report.slots.len(), JOURNAL_SLOT_COUNT as usize);
    let decided: u32 = report.decision_counts.iter().sum();
    assert_eq!(decided, JOURNAL_SLOT_COUNT as u32);
    for (slot, found) in report.slots.iter().enumerate() {
        let table = found.case.decision(report.replica_count);
        let torn = found.decision == Decision::CutTorn
            && matches!(found.case, Case::B | Case::C)
            && table.is_fault();
        assert!(found.decision == table || torn, "slot {slot}: {found:?}");
    }
    assert!(report.count(Decision::CutTorn) as usize <= PIPELINE_PREPARE_QUEUE_MAX);
    let unrecoverable = report.slots.iter().any(|slot| slot.decision == Decision::Unrecoverable);
    assert_eq!(report.usable, !unrecoverable);
}

/// Every prepare a recovered journal holds as clean reads back intact.
fn journal_check_reads(journal: &mut Journal, storage: &mut MemoryStorage) {
    let pool = MessagePool::new(1, JOURNAL_MESSAGE_SIZE_MAX);
    for index in 0..journal.slot_count() {
        let header = *journal.header(Slot(index));
        if journal.dirty(Slot(index)) || header.command != Command::Prepare as u8 {
            continue;
        }
        journal.read_prepare(storage, header.op, header.checksum, pool.get());
        journal.run_until_idle(storage);
        let event = journal.poll_event().expect("a read completes");
        assert!(journal.poll_event().is_none());
        let Event::PrepareRead { op, checksum, result } = event else {
            panic!("unexpected {event:?}");
        };
        assert_eq!((op, checksum), (header.op, header.checksum));
        let message = result.unwrap_or_else(|error| panic!("clean op {op} unreadable: {error:?}"));
        assert!(message.header().valid_checksum());
        assert_eq!((message.header().op, message.header().checksum), (op, checksum));
        assert!(message.header().valid_checksum_body(message.body()));
    }
}

/// The pure classifier on entries decoded from the raw input, and on valid prepares and
/// reserved entries of the slot the input names, for every pair and a context from the input.
fn journal_recovery_case_of_raw_entries(data: &[u8]) {
    let context = RingContext {
        cluster: JOURNAL_CLUSTER,
        slot_count: JOURNAL_SLOT_COUNT,
        message_size_max: JOURNAL_MESSAGE_SIZE_MAX as u64,
    };
    let word = |index: usize| {
        let mut bytes = [0; 8];
        for (offset, byte) in bytes.iter_mut().enumerate() {
            *byte = data.get(index * 8 + offset).copied().unwrap_or(0);
        }
        u64::from_le_bytes(bytes) % (4 * JOURNAL_SLOT_COUNT)
    };
    let slot = Slot((word(0) % JOURNAL_SLOT_COUNT) as usize);
    let op_in_slot = |op: u64| op - op % JOURNAL_SLOT_COUNT + slot.0 as u64;
    let mut header_raw =
        Header::read_from_prefix(data).map_or(Header::zeroed(), |(header, _)| header);
    let entry_raw = Entry::from_header(&header_raw, &context, slot);
    header_raw.cluster = JOURNAL_CLUSTER;
    header_raw.set_checksum();
    let entries = [
        entry_raw,
        Entry::from_header(&header_raw, &context, slot),
        Entry::from_prepare(data, &context, slot),
        Entry::from_header(&reserved_header(JOURNAL_CLUSTER, slot.0 as u64), &context, slot),
        Entry::Prepare(journal_prepare_header(Op(op_in_slot(word(1))), View(0), 10)),
        Entry::Prepare(journal_prepare_header(Op(op_in_slot(word(2))), View(1), 10)),
    ];
    assert_eq!(entries[3], Entry::Reserved);
    let op_prepare_max = word(3);
    let op_max = (word(4) % 2 == 1).then(|| Op(word(4).min(op_prepare_max)));
    let checkpoint_op = op_prepare_max.saturating_sub(JOURNAL_SLOT_COUNT);
    let recovery_context = RecoveryContext {
        op_max,
        op_prepare_max: Op(op_prepare_max),
        checkpoint_op: Op(checkpoint_op),
    };
    for header in &entries {
        for prepare in &entries {
            let case = recovery_case(header, prepare, &recovery_context);
            for replica_count in 1..=3 {
                let decision = case.decision(replica_count);
                assert!(decision != Decision::CutTorn, "only recovery cuts torn prepares");
            }
            journal_check_case(header, prepare, &recovery_context, case);
        }
    }
}

/// What the table says for a few shapes of entries, whatever the rest of them.
fn journal_check_case(header: &Entry, prepare: &Entry, context: &RecoveryContext, case: Case) {
    let op_prepare_max = context.op_prepare_max;
    let beyond =
        |entry: &Entry| matches!(entry, Entry::Prepare(found) if found.op > op_prepare_max);
    if beyond(prepare) {
        assert_eq!(case, Case::H);
        return;
    }
    match (header, prepare) {
        (Entry::Reserved, Entry::Reserved) => assert_eq!(case, Case::L),
        (Entry::Prepare(header), Entry::Prepare(prepare)) if header == prepare => {
            assert_eq!(case, Case::P);
        }
        (Entry::Invalid(_), Entry::Invalid(_)) => assert_eq!(case, Case::A),
        (_, Entry::Invalid(_)) => assert!(matches!(case, Case::B | Case::C)),
        _ if beyond(header) => assert!(matches!(case, Case::I | Case::J)),
        _ => assert!(!matches!(case, Case::A | Case::B | Case::C | Case::H)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `target` on every file in `fuzz/corpus/<name>/`, and checks there is at least one.
    fn replay(name: &str, target: fn(&[u8])) {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
        let mut count = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            target(&data);
            count += 1;
        }
        assert!(count > 0, "{} holds no corpus", directory.display());
    }

    #[test]
    fn header_decode_corpus_replays() {
        // Goal: every committed header_decode input (seeds and minimized crashers) passes.
        replay("header_decode", super::header_decode);
    }

    #[test]
    fn superblock_open_corpus_replays() {
        // Goal: every committed superblock_open input (seeds and minimized crashers) passes.
        replay("superblock_open", super::superblock_open);
    }

    #[test]
    fn journal_recover_corpus_replays() {
        // Goal: every committed journal_recover input (seeds and minimized crashers) passes.
        replay("journal_recover", super::journal_recover);
    }
}
