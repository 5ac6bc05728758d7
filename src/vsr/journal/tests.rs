//! Journal tests on the in-memory disk: the write and read paths, durability ordering, crash
//! recovery, and one crafted data file per case of the recovery decision table.

use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::constants::{FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT, PIPELINE_PREPARE_QUEUE_MAX};
use crate::sim::storage::MemoryStorage;
use crate::stdx::prng::Prng;
use crate::vsr::format::format;
use crate::vsr::header::Operation;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::storage::{Completion, IoKind, IoRequest};

const CLUSTER: ClusterId = ClusterId(9);
const SLOT_COUNT: u64 = 64;
const MESSAGE_SIZE_MAX: usize = 12288;
/// A body that makes a prepare span two sectors, so that a crash can tear it.
const BODY_SIZE_TWO_SECTORS: usize = 6000;

fn config() -> Config {
    let config = Config::small(CLUSTER, ReplicaIndex(0), 3);
    assert_eq!(u64::from(config.journal_slot_count), SLOT_COUNT);
    assert_eq!(config.message_size_max as usize, MESSAGE_SIZE_MAX);
    config
}

fn layout() -> Layout {
    Layout::new(&config())
}

fn formatted_storage() -> MemoryStorage {
    let mut storage = MemoryStorage::new(layout().file_size());
    let pool = MessagePool::new(FORMAT_WRITES_IN_FLIGHT, FORMAT_WRITE_SIZE);
    format(&mut storage, &pool, &config()).unwrap();
    storage
}

fn read_pool() -> MessagePool {
    MessagePool::new(JOURNAL_IOPS_READ_MAX, MESSAGE_SIZE_MAX)
}

fn message_pool() -> MessagePool {
    MessagePool::new(2 * JOURNAL_IOPS_WRITE_MAX + JOURNAL_IOPS_READ_MAX, MESSAGE_SIZE_MAX)
}

fn recovered(storage: &mut MemoryStorage, checkpoint_op: Op, replica_count: u8) -> Journal {
    let mut journal = Journal::new(&config());
    journal.recover_blocking(storage, checkpoint_op, replica_count, &read_pool()).unwrap();
    journal
}

fn recover_report(
    storage: &mut MemoryStorage,
    checkpoint_op: Op,
    replica_count: u8,
) -> RecoveryReport {
    recovered(storage, checkpoint_op, replica_count).recovery_report().clone()
}

/// A valid prepare of `op` in `view` with a body of `body_size` bytes, padded with zeros to a
/// sector.
fn prepare_bytes(op: Op, view: View, body_size: usize) -> Vec<u8> {
    assert!(op > Op(0));
    let mut header = Header::new(Command::Prepare, CLUSTER);
    header.op = op;
    header.commit = op - 1;
    header.timestamp = op.get();
    header.view = view;
    header.operation = Operation::Noop as u8;
    header.op_min = Op(1); // grid_blocks
    header.size = (HEADER_SIZE + body_size) as u32;
    let body: Vec<u8> =
        (0..body_size).map(|index| (op.get() as usize * 31 + index) as u8).collect();
    header.set_checksum_body(&body);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    let mut bytes = vec![0; sector_ceil(HEADER_SIZE + body_size)];
    bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    bytes[HEADER_SIZE..HEADER_SIZE + body_size].copy_from_slice(&body);
    bytes
}

fn header_of(bytes: &[u8]) -> Header {
    Header::read_from_prefix(bytes).unwrap().0
}

fn prepare_message(pool: &MessagePool, op: Op, view: View, body_size: usize) -> Message {
    let bytes = prepare_bytes(op, view, body_size);
    let mut message = pool.get();
    let buffer = message.buffer_mut_unique();
    buffer.fill(0);
    buffer[..bytes.len()].copy_from_slice(&bytes);
    message
}

fn slot_of(op: Op) -> usize {
    op.slot(SLOT_COUNT)
}

fn redundant_offset(slot: usize) -> usize {
    layout().offset(Zone::WalHeaders, (slot * HEADER_SIZE) as u64) as usize
}

fn prepare_offset(slot: usize) -> usize {
    layout().offset(Zone::WalPrepares, (slot * MESSAGE_SIZE_MAX) as u64) as usize
}

fn disk_redundant(storage: &MemoryStorage, slot: usize) -> Header {
    header_of(&storage.bytes()[redundant_offset(slot)..][..HEADER_SIZE])
}

fn disk_prepare_header(storage: &MemoryStorage, slot: usize) -> Header {
    header_of(&storage.bytes()[prepare_offset(slot)..][..HEADER_SIZE])
}

fn put_redundant(storage: &mut MemoryStorage, slot: usize, header: &Header) {
    let at = redundant_offset(slot);
    storage.bytes_mut()[at..at + HEADER_SIZE].copy_from_slice(header.as_bytes());
}

fn put_prepare(storage: &mut MemoryStorage, slot: usize, bytes: &[u8]) {
    let at = prepare_offset(slot);
    storage.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Writes `op` to both rings of its slot, as a durable write leaves it.
fn put_durable(storage: &mut MemoryStorage, op: Op, view: View) {
    let bytes = prepare_bytes(op, view, 100);
    put_prepare(storage, slot_of(op), &bytes);
    put_redundant(storage, slot_of(op), &header_of(&bytes));
}

/// Flips a bit inside the slot's redundant header.
fn corrupt_redundant(storage: &mut MemoryStorage, slot: usize) {
    storage.bytes_mut()[redundant_offset(slot) + 40] ^= 0x10;
}

/// Flips a bit inside the slot's prepare header.
fn corrupt_prepare(storage: &mut MemoryStorage, slot: usize) {
    storage.bytes_mut()[prepare_offset(slot) + 40] ^= 0x10;
}

/// Writes only the first sector of a two-sector prepare of `op`, as a torn write leaves it.
fn put_torn_prepare(storage: &mut MemoryStorage, op: Op) {
    let bytes = prepare_bytes(op, View(0), BODY_SIZE_TWO_SECTORS);
    assert_eq!(bytes.len(), 2 * SECTOR_SIZE);
    put_prepare(storage, slot_of(op), &bytes[..SECTOR_SIZE]);
    let at = prepare_offset(slot_of(op)) + SECTOR_SIZE;
    storage.bytes_mut()[at..at + SECTOR_SIZE].fill(0xEE);
}

/// The seeds a randomized test runs; `SEED=<n>` replays just that one.
fn seeds(count: u64, test: &str) -> impl Iterator<Item = u64> {
    let seed = std::env::var("SEED").ok().and_then(|seed| seed.parse::<u64>().ok());
    let seeds = match seed {
        Some(seed) => seed..seed + 1,
        None => 0..count,
    };
    seeds.inspect(move |seed| {
        println!("seed={seed} (replay: SEED={seed} cargo test --lib journal::tests::{test})");
    })
}

fn drain_events(journal: &mut Journal) -> Vec<Event> {
    std::iter::from_fn(|| journal.poll_event()).collect()
}

/// Delivers one completion (the storage picks which) and returns the events it caused.
fn step(journal: &mut Journal, storage: &mut MemoryStorage) -> Vec<Event> {
    let mut completions = Vec::new();
    storage.poll(&mut completions, 1);
    for completion in completions {
        journal.on_completion(storage, completion);
    }
    drain_events(journal)
}

/// Writes one prepare and waits until it is durable.
fn write_prepare_blocking(journal: &mut Journal, storage: &mut MemoryStorage, message: Message) {
    let (op, checksum) = (message.header().op, message.header().checksum);
    journal.write_prepare(storage, message);
    journal.run_until_idle(storage);
    let events = drain_events(journal);
    let [Event::PrepareDurable { op: durable_op, checksum: durable_checksum }] = events[..] else {
        panic!("{events:?}")
    };
    assert_eq!((durable_op, durable_checksum), (op, checksum));
}

fn read_prepare_blocking(
    journal: &mut Journal,
    storage: &mut MemoryStorage,
    pool: &MessagePool,
    op: Op,
    checksum: Checksum,
) -> Result<Message, ReadError> {
    journal.read_prepare(storage, op, checksum, pool.get());
    journal.run_until_idle(storage);
    let mut events = drain_events(journal);
    assert_eq!(events.len(), 1);
    match events.pop() {
        Some(Event::PrepareRead { op: o, checksum: c, result }) if o == op && c == checksum => {
            result
        }
        event => panic!("unexpected {event:?}"),
    }
}

#[test]
fn fresh_file_recovers_all_nil() {
    // Goal: a freshly formatted file has a reserved entry in every slot of both rings, which
    // recovery reads as @L/nil everywhere, leaving a clean, usable, empty journal.
    for replica_count in [1, 3] {
        let mut storage = formatted_storage();
        let journal = recovered(&mut storage, Op(0), replica_count);
        let report = journal.recovery_report();
        assert!(report.usable);
        assert_eq!(report.count(Decision::Nil), SLOT_COUNT as u32);
        assert!(report.slots.iter().all(|slot| slot.case == Case::L));
        assert_eq!((report.op_min, report.op_max), (None, None));
        assert_eq!((journal.dirty_count(), journal.faulty_count()), (0, 0));
    }
}

#[test]
fn written_prepares_read_back_identical() {
    // Goal: prepares of one and of two sectors read back byte for byte, with a checked body.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    for op in 1..=10 {
        let body_size = if op % 2 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 };
        write_prepare_blocking(
            &mut journal,
            &mut storage,
            prepare_message(&pool, Op(op), View(0), body_size),
        );
    }
    for op in 1..=10 {
        let expected =
            prepare_bytes(Op(op), View(0), if op % 2 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 });
        let checksum = header_of(&expected).checksum;
        let message = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(op), checksum);
        let message = message.unwrap();
        assert_eq!(message.bytes(), &expected[..message.header().size as usize]);
        assert!(!journal.dirty(Slot(slot_of(Op(op)))));
    }
}

#[test]
fn read_of_an_unknown_prepare_reports_why_without_faulting_the_slot() {
    // Goal: asking for a version or an op the journal does not hold names the mismatch and
    // leaves the slot clean.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    write_prepare_blocking(&mut journal, &mut storage, prepare_message(&pool, Op(3), View(0), 100));
    let checksum = header_of(&prepare_bytes(Op(3), View(0), 100)).checksum;
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(3), checksum ^ 1);
    assert_eq!(result.unwrap_err(), ReadError::WrongChecksum { found: checksum });
    let result =
        read_prepare_blocking(&mut journal, &mut storage, &pool, Op(3 + SLOT_COUNT), Checksum(7));
    assert_eq!(result.unwrap_err(), ReadError::WrongOp { found: Op(3) });
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(4), Checksum(7));
    assert_eq!(result.unwrap_err(), ReadError::Reserved);
    assert_eq!(journal.faulty_count(), 0);
}

#[test]
fn read_of_a_corrupt_or_misdirected_prepare_marks_the_slot_faulty() {
    // Goal: a durable prepare that reads back corrupt, or as another slot's prepare, is
    // reported with the reason and its slot becomes dirty and faulty (to be repaired).
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    for op in [4, 5] {
        write_prepare_blocking(
            &mut journal,
            &mut storage,
            prepare_message(&pool, Op(op), View(0), 100),
        );
    }
    let checksum_4 = header_of(&prepare_bytes(Op(4), View(0), 100)).checksum;
    let checksum_5 = header_of(&prepare_bytes(Op(5), View(0), 100)).checksum;
    storage.bytes_mut()[prepare_offset(4) + HEADER_SIZE + 10] ^= 1;
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(4), checksum_4);
    assert_eq!(result.unwrap_err(), ReadError::Invalid(EntryInvalid::BodyChecksum));
    assert!(journal.faulty(Slot(4)) && journal.dirty(Slot(4)));

    put_prepare(&mut storage, 5, &prepare_bytes(Op(6), View(0), 100));
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(5), checksum_5);
    assert_eq!(result.unwrap_err(), ReadError::Invalid(EntryInvalid::Misdirected));
    assert!(journal.faulty(Slot(5)));
    assert_eq!(journal.faulty_count(), 2);
}

#[test]
fn prepare_is_durable_only_after_its_header_sector_lands() {
    // Goal: PrepareDurable comes after the header sector write completes, never after the
    // prepare write alone, and the header ring holds the header only from then on.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    let message = prepare_message(&pool, Op(1), View(0), 100);
    let header = *message.header();
    journal.write_prepare(&mut storage, message);
    assert!(journal.dirty(Slot(1)));
    assert!(step(&mut journal, &mut storage).is_empty(), "prepare write alone is not durable");
    assert_eq!(disk_prepare_header(&storage, 1), header);
    assert_eq!(disk_redundant(&storage, 1), reserved_header(CLUSTER, 1));
    assert_eq!(storage.in_flight(), 1, "the header sector write is in flight");
    let events = step(&mut journal, &mut storage);
    let [Event::PrepareDurable { op: Op(1), checksum }] = events[..] else { panic!("{events:?}") };
    assert_eq!(checksum, header.checksum);
    assert_eq!(disk_redundant(&storage, 1), header);
    assert!(!journal.dirty(Slot(1)));
}

#[test]
fn prepare_is_durable_only_after_a_header_write_submitted_after_it_landed() {
    // Goal: two prepares of one header sector: the second lands while the sector write for the
    // first is in flight; that write shows the second slot reserved and makes only the first
    // durable; a second snapshot follows it and makes the second durable.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    let message_1 = prepare_message(&pool, Op(1), View(0), 100);
    let message_2 = prepare_message(&pool, Op(2), View(0), 100);
    let header_2 = *message_2.header();
    journal.write_prepare(&mut storage, message_1);
    journal.write_prepare(&mut storage, message_2);
    assert!(step(&mut journal, &mut storage).is_empty()); // Prepare 1 lands; sector write A.
    assert!(step(&mut journal, &mut storage).is_empty()); // Prepare 2 lands; A in flight.
    let events = step(&mut journal, &mut storage); // A lands; sector write B.
    assert!(matches!(events[..], [Event::PrepareDurable { op: Op(1), .. }]), "{events:?}");
    assert_eq!(disk_redundant(&storage, 2), reserved_header(CLUSTER, 2));
    let events = step(&mut journal, &mut storage); // B lands.
    assert!(matches!(events[..], [Event::PrepareDurable { op: Op(2), .. }]), "{events:?}");
    assert_eq!(disk_redundant(&storage, 2), header_2);
    assert_eq!(storage.in_flight(), 0);
}

/// Checks, after every completion, that the header ring only describes prepares on disk
/// (valid for slots that are written once).
fn assert_header_ring_describes_disk(storage: &MemoryStorage) {
    let context = RingContext::new(&config());
    for slot in 0..SLOT_COUNT as usize {
        let redundant = Entry::from_header(&disk_redundant(storage, slot), &context, Slot(slot));
        let at = prepare_offset(slot);
        let prepare_bytes = &storage.bytes()[at..at + MESSAGE_SIZE_MAX];
        let prepare = Entry::from_prepare(prepare_bytes, &context, Slot(slot));
        if let Entry::Prepare(header) = redundant {
            assert_eq!(prepare, Entry::Prepare(header), "slot {slot}");
        }
    }
}

#[test]
fn concurrent_writes_to_one_header_sector_leave_a_correct_header_ring() {
    // Goal: 32 prepares over two header sectors, in flight together with completions in a
    // shuffled order: one sector write at a time per sector, the header ring never describes
    // a prepare not on disk, every prepare becomes durable once, and recovery finds all eql.
    for seed in seeds(20, "concurrent_writes_to_one_header_sector_leave_a_correct_header_ring") {
        let mut storage = formatted_storage();
        storage.shuffle_completions(seed);
        let mut journal = recovered(&mut storage, Op(0), 3);
        let pool = message_pool();
        let mut durable = vec![false; SLOT_COUNT as usize];
        let count = 2 * JOURNAL_HEADERS_PER_SECTOR;
        for op in 16..16 + count as u64 {
            let body_size = if op % 3 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 };
            journal.write_prepare(&mut storage, prepare_message(&pool, Op(op), View(0), body_size));
        }
        while storage.in_flight() > 0 {
            assert!(journal.sectors_writing.count <= 2);
            for event in step(&mut journal, &mut storage) {
                let Event::PrepareDurable { op, .. } = event else { panic!("{event:?}") };
                assert!(!durable[slot_of(op)], "seed={seed} op={op} durable twice");
                durable[slot_of(op)] = true;
                assert_eq!(disk_redundant(&storage, slot_of(op)).op, op, "seed={seed}");
            }
            assert_header_ring_describes_disk(&storage);
        }
        assert_eq!(durable.iter().filter(|durable| **durable).count(), count);
        assert_eq!(journal.dirty_count(), 0);
        let report = recover_report(&mut storage, Op(0), 1);
        assert_eq!(report.count(Decision::Eql), count as u32, "seed={seed}");
        assert_eq!((report.op_min, report.op_max), (Some(Op(16)), Some(Op(47))));
    }
}

#[test]
fn rewriting_a_slot_with_its_write_in_flight_is_queued_in_call_order() {
    // Goal: a second write of a slot waits for the first to become durable; both are reported
    // durable in call order, and the disk ends with the second.
    let mut storage = formatted_storage();
    storage.shuffle_completions(7);
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    let first = prepare_message(&pool, Op(5), View(0), 100);
    let second = prepare_message(&pool, Op(5), View(1), BODY_SIZE_TWO_SECTORS);
    let (checksum_1, header_2) = (first.header().checksum, *second.header());
    journal.write_prepare(&mut storage, first);
    journal.write_prepare(&mut storage, second);
    assert_eq!(journal.header(Slot(5)), &header_2);
    journal.run_until_idle(&mut storage);
    let events = drain_events(&mut journal);
    let durable: Vec<Checksum> = events
        .iter()
        .map(|event| match event {
            Event::PrepareDurable { op: Op(5), checksum } => *checksum,
            event => panic!("{event:?}"),
        })
        .collect();
    assert_eq!(durable, [checksum_1, header_2.checksum]);
    assert_eq!(disk_prepare_header(&storage, 5), header_2);
    assert_eq!(disk_redundant(&storage, 5), header_2);
    assert!(!journal.dirty(Slot(5)));
}

#[test]
fn wrap_around_reuses_slots_and_recovers_the_newest_ops() {
    // Goal: ops past the slot count overwrite older wraps; recovery and reads see the newest.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, Op(0), 1);
    let pool = message_pool();
    let op_last = 2 * SLOT_COUNT + 22;
    for op in 1..=op_last {
        write_prepare_blocking(
            &mut journal,
            &mut storage,
            prepare_message(&pool, Op(op), View(0), 100),
        );
    }
    let checkpoint_op = op_last - SLOT_COUNT;
    let mut journal = recovered(&mut storage, Op(checkpoint_op), 1);
    let report = journal.recovery_report();
    assert!(report.usable);
    assert_eq!(report.count(Decision::Eql), SLOT_COUNT as u32);
    assert_eq!(
        (report.op_min, report.op_max),
        (Some(Op(op_last - SLOT_COUNT + 1)), Some(Op(op_last)))
    );
    for op in [op_last, op_last - SLOT_COUNT + 1] {
        let checksum = header_of(&prepare_bytes(Op(op), View(0), 100)).checksum;
        let message = read_prepare_blocking(&mut journal, &mut storage, &pool, Op(op), checksum);
        assert_eq!(message.unwrap().header().op, Op(op));
    }
}

/// What happened to each slot in a crash run, to check recovery against.
struct CrashModel {
    /// The newest op submitted to the slot.
    submitted: Vec<Option<Op>>,
    /// The newest op of the slot reported durable.
    durable: Vec<Option<Op>>,
    /// The last op reported durable together with every earlier op: with R=1, committed.
    op_committed: Op,
}

/// What bounds the prepares a crash run keeps in flight.
#[derive(Clone, Copy)]
enum InFlightLimit {
    /// At most this many writes not yet durable, completing in any order.
    Writes(usize),
    /// At most this many ops above `op_committed`: a primary's pipeline, which an op leaves
    /// only once it and every earlier op are durable.
    Uncommitted(usize),
}

impl CrashModel {
    fn durable_op(&mut self, op: Op, durable_ops: &mut [bool]) {
        self.durable[slot_of(op)] = Some(op);
        durable_ops[op.get() as usize] = true;
        while durable_ops.get(self.op_committed.get() as usize + 1) == Some(&true) {
            self.op_committed += 1;
        }
    }
}

/// Writes ops in order with the writes in flight bounded by `limit`, crashes at a random point,
/// and returns the model, the storage after the crash, and the highest op submitted.
fn crash_run(seed: u64, limit: InFlightLimit) -> (CrashModel, MemoryStorage, Op) {
    let mut prng = Prng::new(seed);
    let mut storage = formatted_storage();
    storage.shuffle_completions(seed);
    let mut journal = recovered(&mut storage, Op(0), 3);
    let pool = message_pool();
    let mut model = CrashModel {
        submitted: vec![None; SLOT_COUNT as usize],
        durable: vec![None; SLOT_COUNT as usize],
        op_committed: Op(0),
    };
    let op_last = 1 + prng.index(3 * SLOT_COUNT as usize) as u64;
    let mut durable_ops = vec![false; op_last as usize + 1];
    let (mut op_next, mut in_flight) = (1, 0);
    while !prng.chance(1, 4 * SLOT_COUNT) {
        let room = match limit {
            InFlightLimit::Writes(writes_max) => in_flight < writes_max,
            InFlightLimit::Uncommitted(ops_max) => {
                op_next - 1 - model.op_committed.get() < ops_max as u64
            }
        };
        if op_next <= op_last && room && prng.chance(1, 2) {
            let body_size = if prng.chance(1, 2) { BODY_SIZE_TWO_SECTORS } else { 100 };
            journal.write_prepare(
                &mut storage,
                prepare_message(&pool, Op(op_next), View(0), body_size),
            );
            model.submitted[slot_of(Op(op_next))] = Some(Op(op_next));
            (op_next, in_flight) = (op_next + 1, in_flight + 1);
        } else if storage.in_flight() > 0 {
            for event in step(&mut journal, &mut storage) {
                let Event::PrepareDurable { op, .. } = event else { panic!("{event:?}") };
                model.durable_op(op, &mut durable_ops);
                in_flight -= 1;
            }
        } else if op_next > op_last {
            break;
        }
    }
    match prng.index(3) {
        0 => storage.crash(),
        sectors_written => storage.crash_tearing_writes(sectors_written),
    }
    (model, storage, Op(op_next - 1))
}

/// Checks a recovery after a crash: every durable prepare not overwritten since is clean, and
/// only slots being written at the crash may need repair.
fn assert_recovered_from_crash(seed: u64, model: &CrashModel, report: &RecoveryReport) {
    for slot in 0..SLOT_COUNT as usize {
        let found = report.slots[slot];
        let written_since = model.submitted[slot] != model.durable[slot];
        assert!(
            !matches!(found.decision, Decision::Cut | Decision::Unrecoverable),
            "seed={seed} slot={slot} {found:?}"
        );
        if found.decision == Decision::Repair {
            assert!(written_since, "seed={seed} slot={slot} {found:?}");
        }
        if let (Some(op), false) = (model.durable[slot], written_since) {
            assert_eq!(found.decision, Decision::Eql, "seed={seed} slot={slot} {found:?}");
            assert!(matches!(found.header, EntrySummary::Prepare { op: o, .. } if o == op));
        }
    }
}

#[test]
fn crash_at_any_point_keeps_every_durable_prepare() {
    // Goal: with pipelined writes, shuffled completions and a crash that drops or tears the
    // writes in flight, recovery (R=3) keeps every prepare reported durable, clean; a second
    // recovery after the first one's writes has nothing left to fix or cut.
    for seed in seeds(200, "crash_at_any_point_keeps_every_durable_prepare") {
        let limit = InFlightLimit::Writes(PIPELINE_PREPARE_QUEUE_MAX);
        let (model, mut storage, op_submitted_max) = crash_run(seed, limit);
        let checkpoint_op = op_submitted_max.saturating_sub(SLOT_COUNT);
        let report = recover_report(&mut storage, checkpoint_op, 3);
        assert!(report.usable, "seed={seed}");
        assert_recovered_from_crash(seed, &model, &report);
        let again = recover_report(&mut storage, checkpoint_op, 3);
        assert_recovered_from_crash(seed, &model, &again);
        assert_second_recovery_applied_the_first(seed, &report, &again);
    }
}

/// Checks that a second recovery finds what the first one wrote: nothing left to fix or cut.
fn assert_second_recovery_applied_the_first(
    seed: u64,
    first: &RecoveryReport,
    second: &RecoveryReport,
) {
    for (slot, (first, second)) in first.slots.iter().zip(&second.slots).enumerate() {
        let expected = match first.decision {
            Decision::Fix | Decision::Eql => Decision::Eql,
            Decision::Nil | Decision::CutTorn => Decision::Nil,
            decision => decision,
        };
        assert_eq!(second.decision, expected, "seed={seed} slot={slot} {first:?} {second:?}");
    }
}

#[test]
fn single_replica_recovers_from_a_crash_with_a_full_pipeline_in_flight() {
    // Goal: a single replica with PIPELINE_PREPARE_QUEUE_MAX prepares in flight, completing in
    // any order, can always restart after a crash that drops or tears them: every torn prepare
    // is cut, every prepare reported durable is kept clean, and a second recovery is clean.
    let test = "single_replica_recovers_from_a_crash_with_a_full_pipeline_in_flight";
    for seed in seeds(400, test) {
        let limit = InFlightLimit::Uncommitted(PIPELINE_PREPARE_QUEUE_MAX);
        let (model, mut storage, op_submitted_max) = crash_run(seed, limit);
        // Any checkpoint the replica could have reached: committed, and covering the ring.
        let checkpoint_min = op_submitted_max.saturating_sub(SLOT_COUNT);
        assert!(checkpoint_min <= model.op_committed, "seed={seed}");
        let span = (model.op_committed - checkpoint_min) as usize;
        let checkpoint_op = checkpoint_min + Prng::new(seed).index(span + 1) as u64;
        let report = recover_report(&mut storage, checkpoint_op, 1);
        assert!(report.usable, "seed={seed} {:?}", report.decision_counts);
        assert_recovered_from_crash(seed, &model, &report);
        assert!(report.op_max >= Some(model.op_committed).filter(|op| *op > Op(0)), "seed={seed}");
        let again = recover_report(&mut storage, checkpoint_op, 1);
        assert_second_recovery_applied_the_first(seed, &report, &again);
    }
}

#[test]
fn single_replica_recovers_from_a_crash_during_sequential_appends() {
    // Goal: a single replica that appends one prepare at a time can always restart after a
    // crash: the prepare torn at the head is cut, never left for a repair that cannot come.
    let test = "single_replica_recovers_from_a_crash_during_sequential_appends";
    for seed in seeds(200, test) {
        let (model, mut storage, op_submitted_max) = crash_run(seed, InFlightLimit::Writes(1));
        let checkpoint_op = op_submitted_max.saturating_sub(SLOT_COUNT);
        let report = recover_report(&mut storage, checkpoint_op, 1);
        assert!(report.usable, "seed={seed} {:?}", report.decision_counts);
        assert_recovered_from_crash(seed, &model, &report);
    }
}

/// Crafts a file with `craft` and returns the report for `slot` with `replica_count` replicas.
fn crafted_slot(
    craft: &dyn Fn(&mut MemoryStorage),
    checkpoint_op: Op,
    replica_count: u8,
    slot: usize,
) -> SlotReport {
    let mut storage = formatted_storage();
    craft(&mut storage);
    recover_report(&mut storage, checkpoint_op, replica_count).slots[slot]
}

/// Asserts the case and the decisions of `slot` in a crafted file, for R=3 and R=1.
fn assert_case(
    craft: &dyn Fn(&mut MemoryStorage),
    checkpoint_op: Op,
    slot: usize,
    case: Case,
    decisions: [Decision; 2],
) {
    for (replica_count, decision) in [3, 1].into_iter().zip(decisions) {
        let found = crafted_slot(craft, checkpoint_op, replica_count, slot);
        assert_eq!((found.case, found.decision), (case, decision), "R={replica_count} {found:?}");
    }
}

/// Ops 1 to 10 durable, so that the crafted slot 5 is neither the head nor after it.
fn put_ops_1_to_10(storage: &mut MemoryStorage) {
    for op in 1..=10 {
        put_durable(storage, Op(op), View(0));
    }
}

/// Ops 1 to `op_last` durable except `torn`, whose prepares are torn over reserved headers.
fn put_ops_with_torn(storage: &mut MemoryStorage, op_last: Op, torn: &[Op]) {
    for op in Op(1).through(op_last) {
        if torn.contains(&op) {
            put_torn_prepare(storage, op);
        } else {
            put_durable(storage, op, View(0));
        }
    }
}

#[test]
fn case_a_both_entries_corrupt_needs_repair() {
    // Goal: @A, a corrupt header and a corrupt prepare: repair, unrecoverable alone.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5);
        corrupt_prepare(storage, 5);
    };
    assert_case(&craft, Op(0), 5, Case::A, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_b_reserved_header_and_corrupt_prepare_below_the_pipeline_needs_repair() {
    // Goal: @B more than a pipeline below the head: not a prepare in flight at the crash but a
    // lost one, so repair; unrecoverable for a single replica.
    let op_head = 5 + PIPELINE_PREPARE_QUEUE_MAX as u64;
    let craft = |storage: &mut MemoryStorage| put_ops_with_torn(storage, Op(op_head), &[Op(5)]);
    assert_case(&craft, Op(0), 5, Case::B, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_b_torn_prepare_at_the_head_is_cut() {
    // Goal: @B at the slot after the highest op, with no other fault: a torn append, cut_torn
    // for every replica count; the slot ends reserved in both rings.
    let craft = |storage: &mut MemoryStorage| {
        for op in 1..=4 {
            put_durable(storage, Op(op), View(0));
        }
        put_torn_prepare(storage, Op(5));
    };
    assert_case(&craft, Op(0), 5, Case::B, [Decision::CutTorn, Decision::CutTorn]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    let report = recover_report(&mut storage, Op(0), 1);
    assert_eq!((report.op_max, report.count(Decision::CutTorn)), (Some(Op(4)), 1));
    assert_eq!(disk_prepare_header(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(recover_report(&mut storage, Op(0), 1).slots[5].case, Case::L);
}

#[test]
fn case_c_torn_prepare_over_an_older_wrap_at_the_head_is_cut() {
    // Goal: @C whose header is one wrap older than the torn op at the head: cut_torn.
    let craft = |storage: &mut MemoryStorage| {
        for op in 5..=SLOT_COUNT + 4 {
            put_durable(storage, Op(op), View(0));
        }
        put_torn_prepare(storage, Op(SLOT_COUNT + 5));
    };
    let slot = slot_of(Op(SLOT_COUNT + 5));
    assert_case(&craft, Op(10), slot, Case::C, [Decision::CutTorn, Decision::CutTorn]);
}

#[test]
fn case_b_torn_prepare_at_the_head_is_not_cut_with_another_fault_outside_the_window() {
    // Goal: a fault beyond the torn slot may hide a higher head, so nothing is cut.
    let craft = |storage: &mut MemoryStorage| {
        for op in 1..=4 {
            put_durable(storage, Op(op), View(0));
        }
        put_torn_prepare(storage, Op(5));
        put_durable(storage, Op(20), View(0));
        corrupt_redundant(storage, 20);
        corrupt_prepare(storage, 20);
    };
    assert_case(&craft, Op(0), 5, Case::B, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn torn_prepare_behind_a_durable_op_of_the_pipeline_is_cut() {
    // Goal: op 6 torn while op 7 landed (pipelined writes complete in any order) is cut_torn
    // for R=1 and R=3 and the journal is usable; op 7 stays, and the cut slot ends reserved in
    // both rings, so a second recovery finds it nil.
    let craft = |storage: &mut MemoryStorage| put_ops_with_torn(storage, Op(7), &[Op(6)]);
    assert_case(&craft, Op(0), 6, Case::B, [Decision::CutTorn, Decision::CutTorn]);
    for replica_count in [1, 3] {
        let mut storage = formatted_storage();
        craft(&mut storage);
        let report = recover_report(&mut storage, Op(0), replica_count);
        assert!(report.usable, "R={replica_count}");
        assert_eq!((report.op_max, report.count(Decision::CutTorn)), (Some(Op(7)), 1));
        assert_eq!(report.slots[7].decision, Decision::Eql);
        assert_eq!(disk_prepare_header(&storage, 6), reserved_header(CLUSTER, 6));
        assert_eq!(disk_redundant(&storage, 6), reserved_header(CLUSTER, 6));
        let again = recover_report(&mut storage, Op(0), replica_count);
        assert_eq!((again.slots[6].case, again.slots[7].decision), (Case::L, Decision::Eql));
    }
}

#[test]
fn torn_prepare_over_an_older_wrap_behind_the_head_is_cut() {
    // Goal: @C whose header is one wrap older than the torn op, below the head: cut_torn.
    let torn = SLOT_COUNT + 3;
    let craft = |storage: &mut MemoryStorage| {
        for op in (3..=SLOT_COUNT + 5).filter(|op| *op != torn) {
            put_durable(storage, Op(op), View(0));
        }
        put_torn_prepare(storage, Op(torn));
    };
    let checkpoint_op = 5;
    assert_case(&craft, Op(checkpoint_op), slot_of(Op(torn)), Case::C, [Decision::CutTorn; 2]);
}

#[test]
fn two_torn_prepares_of_the_pipeline_are_both_cut() {
    // Goal: ops 6 and 8 torn around a durable op 7, and op 10 torn above the head: all are
    // ops of one pipeline in flight at the crash, so all are cut, for R=1 and R=3.
    let craft =
        |storage: &mut MemoryStorage| put_ops_with_torn(storage, Op(10), &[Op(6), Op(8), Op(10)]);
    for replica_count in [1, 3] {
        let mut storage = formatted_storage();
        craft(&mut storage);
        let report = recover_report(&mut storage, Op(0), replica_count);
        assert!(report.usable, "R={replica_count}");
        assert_eq!(report.op_max, Some(Op(9)));
        for slot in [6, 8, 10] {
            let found = report.slots[slot];
            assert_eq!((found.case, found.decision), (Case::B, Decision::CutTorn), "{slot}");
        }
        assert_eq!(report.count(Decision::CutTorn), 3);
    }
}

#[test]
fn torn_prepare_at_the_edges_of_the_pipeline_window_is_cut_only_inside() {
    // Goal: with op_max = 20 the window is ops 13..=28 (a pipeline on each side of the head):
    // a torn op at 13 or 28 is cut; at 12 (a lost prepare below) or 29 (it may hide a higher
    // head) it stays repair, unrecoverable alone.
    let pipeline = PIPELINE_PREPARE_QUEUE_MAX as u64;
    let op_head = 20;
    let below = |torn: Op| {
        move |storage: &mut MemoryStorage| {
            put_ops_with_torn(storage, Op(op_head), &[torn]);
        }
    };
    let above = |torn: Op| {
        move |storage: &mut MemoryStorage| {
            put_ops_with_torn(storage, Op(op_head), &[]);
            put_torn_prepare(storage, torn);
        }
    };
    let inside = [Decision::CutTorn, Decision::CutTorn];
    let outside = [Decision::Repair, Decision::Unrecoverable];
    let (first, last) = (op_head + 1 - pipeline, op_head + pipeline);
    assert_case(&below(Op(first)), Op(0), slot_of(Op(first)), Case::B, inside);
    assert_case(&below(Op(first - 1)), Op(0), slot_of(Op(first - 1)), Case::B, outside);
    assert_case(&above(Op(last)), Op(0), slot_of(Op(last)), Case::B, inside);
    assert_case(&above(Op(last + 1)), Op(0), slot_of(Op(last + 1)), Case::B, outside);
}

#[test]
fn torn_prepares_further_apart_than_a_pipeline_are_not_cut() {
    // Goal: torn ops 13 and 21 around op_max = 20 both lie in the window, but no pipeline of 8
    // ops holds both, so one of them is not a tear: neither is cut.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_with_torn(storage, Op(20), &[Op(13)]);
        put_torn_prepare(storage, Op(21));
    };
    let outside = [Decision::Repair, Decision::Unrecoverable];
    assert_case(&craft, Op(0), 13, Case::B, outside);
    assert_case(&craft, Op(0), 21, Case::B, outside);
}

#[test]
fn misdirected_or_unreadable_prepare_in_the_pipeline_window_is_not_cut() {
    // Goal: only a failed checksum is a tear: another slot's valid prepare (a misdirected
    // write) in the window is a fault to repair, and being below the head it does not stop
    // the torn op above it from being cut.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_with_torn(storage, Op(8), &[Op(8)]);
        put_redundant(storage, 6, &reserved_header(CLUSTER, 6));
        put_prepare(storage, 6, &prepare_bytes(Op(5), View(0), 100));
    };
    let found = crafted_slot(&craft, Op(0), 3, 6);
    assert_eq!(found.prepare, EntrySummary::Invalid(EntryInvalid::Misdirected));
    assert_case(&craft, Op(0), 6, Case::B, [Decision::Repair, Decision::Unrecoverable]);
    assert_case(&craft, Op(0), 8, Case::B, [Decision::CutTorn, Decision::CutTorn]);
}

#[test]
fn case_c_header_written_then_prepare_corrupt_needs_repair() {
    // Goal: @C: the header proves the prepare was written, so a corrupt prepare (even right
    // after the head) is repaired, never cut.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_prepare(storage, 10);
    };
    assert_case(&craft, Op(0), 10, Case::C, [Decision::Repair, Decision::Unrecoverable]);
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_prepare(storage, 5);
    };
    assert_case(&craft, Op(0), 5, Case::C, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_d_corrupt_header_and_reserved_prepare_is_fixed_only_alone() {
    // Goal: @D: repair with peers (the lost header may have named a prepare whose write was
    // lost after it was acknowledged); a single replica trusts its reserved prepare.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_durable(storage, Op(20), View(0));
        put_prepare(storage, 20, reserved_header(CLUSTER, 20).as_bytes());
        corrupt_redundant(storage, 20);
    };
    assert_case(&craft, Op(0), 20, Case::D, [Decision::Repair, Decision::Fix]);
}

#[test]
fn case_e_corrupt_header_over_an_older_prepare_is_fixed_only_alone() {
    // Goal: @E: an intact prepare at or below the checkpoint whose header is lost: the slot's
    // next op may have been written (and its write lost) under this checkpoint, so with peers
    // it is repaired; a single replica trusts the prepare it has.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5);
    };
    assert_case(&craft, Op(8), 5, Case::E, [Decision::Repair, Decision::Fix]);
}

#[test]
fn case_f_corrupt_header_over_the_newest_prepare_its_slot_can_hold_is_fixed() {
    // Goal: a torn header sector below the head loses nothing: a prepare above the checkpoint
    // is the newest its slot can hold under it (the slot's next op is beyond op_prepare_max).
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5);
    };
    assert_case(&craft, Op(0), 5, Case::F, [Decision::Fix, Decision::Fix]);
}

#[test]
fn case_f_corrupt_header_at_the_head_is_fixed() {
    // Goal: @F: a crash between the head's prepare and header writes; fix rewrites the
    // header sector, and the next recovery finds it eql.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 10);
    };
    assert_case(&craft, Op(0), 10, Case::F, [Decision::Fix, Decision::Fix]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    recover_report(&mut storage, Op(0), 3);
    assert_eq!(disk_redundant(&storage, 10), disk_prepare_header(&storage, 10));
    assert_eq!(recover_report(&mut storage, Op(0), 3).slots[10].decision, Decision::Eql);
}

#[test]
fn case_g_reserved_header_and_valid_prepare_is_fixed() {
    // Goal: @G: the header sector was written while the prepare was in flight.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &reserved_header(CLUSTER, 5));
    };
    assert_case(&craft, Op(0), 5, Case::G, [Decision::Fix, Decision::Fix]);
}

#[test]
fn case_h_prepare_beyond_the_checkpoint_window_is_cut() {
    // Goal: @H: a prepare above op_prepare_max is cut (both rings end reserved); alone, it
    // means a rolled-back superblock and the journal is unusable.
    let op_beyond = SLOT_COUNT + 5;
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, &prepare_bytes(Op(op_beyond), View(0), 100));
    };
    assert_case(&craft, Op(0), 5, Case::H, [Decision::Cut, Decision::Unrecoverable]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    assert!(!recover_report(&mut storage, Op(0), 1).usable);
    assert_eq!(disk_prepare_header(&storage, 5).op, Op(op_beyond), "unusable: nothing written");
    recover_report(&mut storage, Op(0), 3);
    assert_eq!(disk_prepare_header(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(disk_redundant(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(recover_report(&mut storage, Op(0), 3).slots[5].case, Case::L);
}

#[test]
fn case_i_header_beyond_the_checkpoint_window_is_cut() {
    // Goal: @I: the header is above op_prepare_max, the prepare an older valid op.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(Op(SLOT_COUNT + 5), View(0), 100)));
    };
    assert_case(&craft, Op(0), 5, Case::I, [Decision::Cut, Decision::Unrecoverable]);
}

#[test]
fn case_i_prepare_is_not_the_head_since_it_is_cut() {
    // Goal: the prepare of an @I slot is cut, so it is not op_max: the op below it, whose
    // header is lost, is the head (@F, fix), and a second recovery finds the same head (@P).
    let craft = |storage: &mut MemoryStorage| {
        for op in 1..=3 {
            put_durable(storage, Op(op), View(0));
        }
        put_redundant(storage, 3, &header_of(&prepare_bytes(Op(SLOT_COUNT + 3), View(0), 100)));
        corrupt_redundant(storage, 2);
    };
    assert_case(&craft, Op(0), 3, Case::I, [Decision::Cut, Decision::Unrecoverable]);
    assert_case(&craft, Op(0), 2, Case::F, [Decision::Fix, Decision::Fix]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    assert_eq!(recover_report(&mut storage, Op(0), 3).op_max, Some(Op(2)));
    let second = recover_report(&mut storage, Op(0), 3);
    assert_eq!((second.slots[2].case, second.slots[3].case), (Case::P, Case::L));
}

#[test]
fn case_j_header_beyond_the_checkpoint_window_over_a_reserved_prepare_is_cut() {
    // Goal: @J: the header is above op_prepare_max, the prepare reserved.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 20, &header_of(&prepare_bytes(Op(SLOT_COUNT + 20), View(0), 100)));
    };
    assert_case(&craft, Op(0), 20, Case::J, [Decision::Cut, Decision::Unrecoverable]);
}

#[test]
fn case_k_header_over_a_reserved_prepare_needs_repair() {
    // Goal: @K: the header says a prepare was written but the prepare ring is reserved.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, reserved_header(CLUSTER, 5).as_bytes());
    };
    assert_case(&craft, Op(0), 5, Case::K, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_l_both_reserved_is_nil() {
    // Goal: @L: a slot never written.
    assert_case(&put_ops_1_to_10, Op(0), 20, Case::L, [Decision::Nil, Decision::Nil]);
}

#[test]
fn case_m_header_of_an_older_wrap_is_fixed() {
    // Goal: @M: the ring wrapped and the new prepare's header write was lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, &prepare_bytes(Op(SLOT_COUNT + 5), View(0), 100));
    };
    assert_case(&craft, Op(10), 5, Case::M, [Decision::Fix, Decision::Fix]);
}

#[test]
fn case_n_prepare_of_an_older_wrap_needs_repair() {
    // Goal: @N: the header proves a newer prepare was written here and lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(Op(SLOT_COUNT + 5), View(0), 100)));
    };
    assert_case(&craft, Op(10), 5, Case::N, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_o_two_versions_of_one_op_need_repair() {
    // Goal: @O: same op, different views: which one is current is for the cluster to say.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(Op(5), View(1), 100)));
        put_prepare(storage, 5, &prepare_bytes(Op(5), View(2), 100));
    };
    assert_case(&craft, Op(0), 5, Case::O, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_p_identical_entries_are_eql() {
    // Goal: @P: the normal case.
    assert_case(&put_ops_1_to_10, Op(0), 5, Case::P, [Decision::Eql, Decision::Eql]);
}

#[test]
fn misdirected_header_is_invalid_for_its_slot() {
    // Goal: a valid header written to the wrong slot reads as invalid there (not as the op it
    // names), so the slot is classified as if its header were lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(Op(6), View(0), 100)));
    };
    let found = crafted_slot(&craft, Op(0), 3, 5);
    assert_eq!(found.header, EntrySummary::Invalid(EntryInvalid::Misdirected));
    assert_eq!((found.case, found.decision), (Case::F, Decision::Fix));
}

#[test]
fn repair_slots_keep_their_header_ring_bytes_across_fix_writes() {
    // Goal: a fix rewriting a header sector writes a faulty neighbour's bytes back unchanged,
    // so a second recovery finds the faulty slot in the same case (no laundering).
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5); // @A with the next line: repair with peers.
        corrupt_prepare(storage, 5);
        corrupt_redundant(storage, 10); // @F: fix, rewrites the same header sector.
    };
    let mut storage = formatted_storage();
    craft(&mut storage);
    let corrupt_bytes = storage.bytes()[redundant_offset(5)..][..HEADER_SIZE].to_vec();
    let journal = recovered(&mut storage, Op(0), 3);
    assert!(journal.faulty(Slot(5)) && !journal.faulty(Slot(10)));
    assert_eq!(&storage.bytes()[redundant_offset(5)..][..HEADER_SIZE], &corrupt_bytes[..]);
    let report = recover_report(&mut storage, Op(0), 3);
    assert_eq!((report.slots[5].case, report.slots[10].case), (Case::A, Case::P));
}

#[test]
fn recovery_case_covers_every_combination_of_entries() {
    // Goal: the pure classifier returns a case for any pair of entries and context, and each
    // case is reachable.
    let reserved = Entry::Reserved;
    let invalid = Entry::Invalid(EntryInvalid::Checksum);
    let prepare = |op: Op, view: View| Entry::Prepare(header_of(&prepare_bytes(op, view, 10)));
    let entries = [
        invalid,
        reserved,
        prepare(Op(5), View(0)),
        prepare(Op(5), View(1)),
        prepare(Op(69), View(0)),
        prepare(Op(133), View(0)),
    ];
    let mut seen = Vec::new();
    for op_max in [None, Some(Op(5)), Some(Op(69))] {
        let context = RecoveryContext { op_max, op_prepare_max: Op(74), checkpoint_op: Op(10) };
        for header in &entries {
            for prepare in &entries {
                let case = recovery_case(header, prepare, &context);
                if !seen.contains(&case) {
                    seen.push(case);
                }
            }
        }
    }
    assert_eq!(seen.len(), Case::ALL.len(), "{seen:?}");
}

/// The in-memory disk opened read-only: a write request fails the test.
struct ReadOnlyStorage(MemoryStorage);

impl Storage for ReadOnlyStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        assert_eq!(request.kind, IoKind::Read, "a write to a read-only file: {request:?}");
        self.0.submit(request, buffer);
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        self.0.poll(completions, completions_max);
    }

    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }
}

/// A file that recovery would change in every way it can: @F (fix), @H (cut), a torn prepare
/// in the pipeline (cut_torn) and @E (repair with peers, fix alone).
fn craft_file_recovery_would_change(storage: &mut MemoryStorage) {
    put_ops_with_torn(storage, Op(10), &[Op(9)]);
    corrupt_redundant(storage, 10);
    corrupt_redundant(storage, 3);
    put_prepare(storage, 20, &prepare_bytes(Op(SLOT_COUNT + 20), View(0), 100));
}

#[test]
fn inspect_reports_like_recovery_and_leaves_the_disk_untouched() {
    // Goal: inspect on a file that recovery would fix and cut submits only reads, leaves every
    // byte as found, reports exactly what recovery reports, and leaves a journal that takes no
    // requests; recovery on a copy then does change the file.
    for replica_count in [3, 1] {
        let mut storage = ReadOnlyStorage(formatted_storage());
        craft_file_recovery_would_change(&mut storage.0);
        let bytes_before = storage.0.bytes().to_vec();
        let mut journal = Journal::new(&config());
        let inspected = journal
            .inspect_blocking(&mut storage, Op(0), replica_count, &read_pool())
            .unwrap()
            .clone();
        assert!(storage.0.bytes() == bytes_before, "R={replica_count}: inspect wrote");
        assert_eq!(journal.status(), Status::Inspected);
        assert_eq!(journal.faulty_count(), SLOT_COUNT as usize);

        let mut copy = formatted_storage();
        craft_file_recovery_would_change(&mut copy);
        let recovered = recover_report(&mut copy, Op(0), replica_count);
        assert_eq!(inspected, recovered, "R={replica_count}");
        assert_eq!(inspected.slots[10].decision, Decision::Fix);
        if replica_count > 1 {
            let cut = [inspected.slots[9].decision, inspected.slots[20].decision];
            assert_eq!(cut, [Decision::CutTorn, Decision::Cut]);
            assert!(copy.bytes() != bytes_before, "recovery writes its fix and cuts");
        } else {
            // @H is unrecoverable alone, and as a fault above the head it keeps op 9 a fault.
            assert!(!inspected.usable);
            assert_eq!(inspected.slots[9].decision, Decision::Unrecoverable);
        }
    }
}

/// The head of the chain in `put_stale_beyond_head`, and the stale ops beyond it.
const STALE_HEAD: Op = Op(6);
const STALE_OPS: [Op; 3] = [Op(8), Op(9), Op(40)];

/// Ops 1 to 6 durable, op 7 lost, and stale durable ops 8, 9 and 40 beyond the head (40 in
/// another header sector): what a replay that stops at a lost op leaves behind it.
fn put_stale_beyond_head(storage: &mut MemoryStorage) {
    assert!(
        slot_of(Op(40)) / JOURNAL_HEADERS_PER_SECTOR != slot_of(Op(8)) / JOURNAL_HEADERS_PER_SECTOR
    );
    for op in Op(1).through(STALE_HEAD).chain(STALE_OPS) {
        put_durable(storage, op, View(0));
    }
}

fn truncate_after_blocking(journal: &mut Journal, storage: &mut MemoryStorage, op_head: Op) {
    journal.truncate_after(storage, op_head);
    journal.run_until_idle(storage);
    let events = drain_events(journal);
    assert!(matches!(events[..], [Event::Truncated]), "{events:?}");
}

#[test]
fn truncate_after_makes_every_entry_beyond_the_head_nil() {
    // Goal: truncate_after reserves both rings of every slot beyond the head, durably, keeps
    // the ops up to the head, reports the truncated slots as cut, and emits Truncated at once
    // when there is nothing left to truncate.
    let mut storage = formatted_storage();
    put_stale_beyond_head(&mut storage);
    let mut journal = recovered(&mut storage, Op(0), 1);
    truncate_after_blocking(&mut journal, &mut storage, STALE_HEAD);
    let report = journal.recovery_report();
    assert_eq!(report.op_max, Some(STALE_HEAD));
    assert_eq!(report.count(Decision::Cut), STALE_OPS.len() as u32);
    for op in STALE_OPS {
        assert!(journal.header_with_op(op).is_none());
        assert_eq!(report.slots[slot_of(op)].decision, Decision::Cut);
    }
    assert!(Op(1).through(STALE_HEAD).all(|op| journal.header_with_op(op).is_some()));
    assert_eq!(journal.dirty_count(), 0);

    journal.truncate_after(&mut storage, STALE_HEAD);
    assert_eq!(storage.in_flight(), 0);
    assert!(matches!(drain_events(&mut journal)[..], [Event::Truncated]));

    let report = recover_report(&mut storage, Op(0), 1);
    assert_eq!(report.op_max, Some(STALE_HEAD));
    for op in STALE_OPS {
        let slot = &report.slots[slot_of(op)];
        assert_eq!((slot.case, slot.decision), (Case::L, Decision::Nil), "op {op}");
    }
}

/// After a crash during `truncate_after` (`finished`: after it), a single replica recovers:
/// each stale slot is as it was (@P), has only its header truncated (@G: recovered as it was,
/// to be truncated again), or is nil; never two versions of one op.
fn assert_truncation_recoverable(report: &RecoveryReport, finished: bool) {
    assert!(report.usable);
    for (index, slot) in report.slots.iter().enumerate() {
        assert!(!matches!(slot.case, Case::N | Case::O), "slot {index}: {slot:?}");
    }
    assert!(Op(1).through(STALE_HEAD).all(|op| report.slots[slot_of(op)].case == Case::P));
    for op in STALE_OPS {
        let slot = &report.slots[slot_of(op)];
        if finished {
            assert_eq!((slot.case, slot.decision), (Case::L, Decision::Nil), "op {op}");
        } else {
            assert!(matches!(slot.case, Case::P | Case::G | Case::L), "op {op}: {slot:?}");
        }
    }
}

#[test]
fn crash_during_or_after_truncate_after_never_leaves_two_versions_of_an_op() {
    // Goal: a crash at any point of truncate_after (writes lost, or landed) leaves a journal a
    // single replica recovers, with the stale entries as they were or nil; and once truncated
    // again, a new version of a stale op whose header write a crash loses is @G, never @O.
    let test = "crash_during_or_after_truncate_after_never_leaves_two_versions_of_an_op";
    let pool = message_pool();
    for seed in seeds(8, test) {
        for crash_after in 0.. {
            let mut storage = formatted_storage();
            put_stale_beyond_head(&mut storage);
            storage.shuffle_completions(seed);
            let mut journal = recovered(&mut storage, Op(0), 1);
            journal.truncate_after(&mut storage, STALE_HEAD);
            let mut events = drain_events(&mut journal);
            for _ in 0..crash_after {
                events.extend(step(&mut journal, &mut storage));
            }
            let finished = matches!(events[..], [Event::Truncated]);
            assert!(finished || events.is_empty(), "{events:?}");
            let last = storage.in_flight() == 0;
            if seed % 2 == 0 {
                storage.crash();
            } else {
                storage.crash_tearing_writes(1);
            }
            let mut journal = recovered(&mut storage, Op(0), 1);
            assert_truncation_recoverable(journal.recovery_report(), finished);

            truncate_after_blocking(&mut journal, &mut storage, STALE_HEAD);
            journal.write_prepare(&mut storage, prepare_message(&pool, Op(8), View(1), 100));
            assert!(step(&mut journal, &mut storage).is_empty());
            storage.crash();
            let report = recover_report(&mut storage, Op(0), 1);
            assert!(report.usable);
            assert_eq!(report.slots[slot_of(Op(8))].case, Case::G);
            if last {
                break;
            }
        }
    }
}
