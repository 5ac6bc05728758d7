//! Journal tests on the in-memory disk: the write and read paths, durability ordering, crash
//! recovery, and one crafted data file per case of the recovery decision table.

use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::constants::{FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT, PIPELINE_PREPARE_QUEUE_MAX};
use crate::sim::prng::Prng;
use crate::sim::storage::MemoryStorage;
use crate::vsr::format::format;
use crate::vsr::header::Operation;

const CLUSTER: ClusterId = 9;
const SLOT_COUNT: u64 = 64;
const MESSAGE_SIZE_MAX: usize = 8192;
/// A body that makes a prepare span two sectors, so that a crash can tear it.
const BODY_SIZE_TWO_SECTORS: usize = 6000;

fn config() -> Config {
    Config {
        journal_slot_count: SLOT_COUNT as u32,
        message_size_max: MESSAGE_SIZE_MAX as u32,
        clients_max: 4,
        grid_size: 1024 * 1024,
        ..Config::new(CLUSTER, 0, 3)
    }
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
    assert!(op > 0);
    let mut header = Header::new(Command::Prepare, CLUSTER);
    header.op = op;
    header.commit = op - 1;
    header.timestamp = op;
    header.view = view;
    header.operation = Operation::Noop as u8;
    header.size = (HEADER_SIZE + body_size) as u32;
    let body: Vec<u8> = (0..body_size).map(|index| (op as usize * 31 + index) as u8).collect();
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
    (op % SLOT_COUNT) as usize
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
    let bytes = prepare_bytes(op, 0, BODY_SIZE_TWO_SECTORS);
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
        let journal = recovered(&mut storage, 0, replica_count);
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
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    for op in 1..=10 {
        let body_size = if op % 2 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 };
        write_prepare_blocking(
            &mut journal,
            &mut storage,
            prepare_message(&pool, op, 0, body_size),
        );
    }
    for op in 1..=10 {
        let expected = prepare_bytes(op, 0, if op % 2 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 });
        let checksum = header_of(&expected).checksum;
        let message = read_prepare_blocking(&mut journal, &mut storage, &pool, op, checksum);
        let message = message.unwrap();
        assert_eq!(message.bytes(), &expected[..message.header().size as usize]);
        assert!(!journal.dirty(Slot(slot_of(op))));
    }
}

#[test]
fn read_of_an_unknown_prepare_reports_why_without_faulting_the_slot() {
    // Goal: asking for a version or an op the journal does not hold names the mismatch and
    // leaves the slot clean.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    write_prepare_blocking(&mut journal, &mut storage, prepare_message(&pool, 3, 0, 100));
    let checksum = header_of(&prepare_bytes(3, 0, 100)).checksum;
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, 3, checksum ^ 1);
    assert_eq!(result.unwrap_err(), ReadError::WrongChecksum { found: checksum });
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, 3 + SLOT_COUNT, 7);
    assert_eq!(result.unwrap_err(), ReadError::WrongOp { found: 3 });
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, 4, 7);
    assert_eq!(result.unwrap_err(), ReadError::Reserved);
    assert_eq!(journal.faulty_count(), 0);
}

#[test]
fn read_of_a_corrupt_or_misdirected_prepare_marks_the_slot_faulty() {
    // Goal: a durable prepare that reads back corrupt, or as another slot's prepare, is
    // reported with the reason and its slot becomes dirty and faulty (to be repaired).
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    for op in [4, 5] {
        write_prepare_blocking(&mut journal, &mut storage, prepare_message(&pool, op, 0, 100));
    }
    let checksum_4 = header_of(&prepare_bytes(4, 0, 100)).checksum;
    let checksum_5 = header_of(&prepare_bytes(5, 0, 100)).checksum;
    storage.bytes_mut()[prepare_offset(4) + HEADER_SIZE + 10] ^= 1;
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, 4, checksum_4);
    assert_eq!(result.unwrap_err(), ReadError::Invalid(EntryInvalid::BodyChecksum));
    assert!(journal.faulty(Slot(4)) && journal.dirty(Slot(4)));

    put_prepare(&mut storage, 5, &prepare_bytes(6, 0, 100));
    let result = read_prepare_blocking(&mut journal, &mut storage, &pool, 5, checksum_5);
    assert_eq!(result.unwrap_err(), ReadError::Invalid(EntryInvalid::Misdirected));
    assert!(journal.faulty(Slot(5)));
    assert_eq!(journal.faulty_count(), 2);
}

#[test]
fn prepare_is_durable_only_after_its_header_sector_lands() {
    // Goal: PrepareDurable comes after the header sector write completes, never after the
    // prepare write alone, and the header ring holds the header only from then on.
    let mut storage = formatted_storage();
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    let message = prepare_message(&pool, 1, 0, 100);
    let header = *message.header();
    journal.write_prepare(&mut storage, message);
    assert!(journal.dirty(Slot(1)));
    assert!(step(&mut journal, &mut storage).is_empty(), "prepare write alone is not durable");
    assert_eq!(disk_prepare_header(&storage, 1), header);
    assert_eq!(disk_redundant(&storage, 1), reserved_header(CLUSTER, 1));
    assert_eq!(storage.in_flight(), 1, "the header sector write is in flight");
    let events = step(&mut journal, &mut storage);
    let [Event::PrepareDurable { op: 1, checksum }] = events[..] else { panic!("{events:?}") };
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
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    let message_1 = prepare_message(&pool, 1, 0, 100);
    let message_2 = prepare_message(&pool, 2, 0, 100);
    let header_2 = *message_2.header();
    journal.write_prepare(&mut storage, message_1);
    journal.write_prepare(&mut storage, message_2);
    assert!(step(&mut journal, &mut storage).is_empty()); // Prepare 1 lands; sector write A.
    assert!(step(&mut journal, &mut storage).is_empty()); // Prepare 2 lands; A in flight.
    let events = step(&mut journal, &mut storage); // A lands; sector write B.
    assert!(matches!(events[..], [Event::PrepareDurable { op: 1, .. }]), "{events:?}");
    assert_eq!(disk_redundant(&storage, 2), reserved_header(CLUSTER, 2));
    let events = step(&mut journal, &mut storage); // B lands.
    assert!(matches!(events[..], [Event::PrepareDurable { op: 2, .. }]), "{events:?}");
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
        let mut journal = recovered(&mut storage, 0, 3);
        let pool = message_pool();
        let mut durable = vec![false; SLOT_COUNT as usize];
        for op in 17..17 + JOURNAL_IOPS_WRITE_MAX as u64 {
            let body_size = if op % 3 == 0 { BODY_SIZE_TWO_SECTORS } else { 100 };
            journal.write_prepare(&mut storage, prepare_message(&pool, op, 0, body_size));
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
        assert_eq!(durable.iter().filter(|durable| **durable).count(), JOURNAL_IOPS_WRITE_MAX);
        assert_eq!(journal.dirty_count(), 0);
        let report = recover_report(&mut storage, 0, 1);
        assert_eq!(report.count(Decision::Eql), JOURNAL_IOPS_WRITE_MAX as u32, "seed={seed}");
        assert_eq!((report.op_min, report.op_max), (Some(17), Some(48)));
    }
}

#[test]
fn rewriting_a_slot_with_its_write_in_flight_is_queued_in_call_order() {
    // Goal: a second write of a slot waits for the first to become durable; both are reported
    // durable in call order, and the disk ends with the second.
    let mut storage = formatted_storage();
    storage.shuffle_completions(7);
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    let first = prepare_message(&pool, 5, 0, 100);
    let second = prepare_message(&pool, 5, 1, BODY_SIZE_TWO_SECTORS);
    let (checksum_1, header_2) = (first.header().checksum, *second.header());
    journal.write_prepare(&mut storage, first);
    journal.write_prepare(&mut storage, second);
    assert_eq!(journal.header(Slot(5)), &header_2);
    journal.run_until_idle(&mut storage);
    let events = drain_events(&mut journal);
    let durable: Vec<Checksum> = events
        .iter()
        .map(|event| match event {
            Event::PrepareDurable { op: 5, checksum } => *checksum,
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
    let mut journal = recovered(&mut storage, 0, 1);
    let pool = message_pool();
    let op_last = 2 * SLOT_COUNT + 22;
    for op in 1..=op_last {
        write_prepare_blocking(&mut journal, &mut storage, prepare_message(&pool, op, 0, 100));
    }
    let checkpoint_op = op_last - SLOT_COUNT;
    let mut journal = recovered(&mut storage, checkpoint_op, 1);
    let report = journal.recovery_report();
    assert!(report.usable);
    assert_eq!(report.count(Decision::Eql), SLOT_COUNT as u32);
    assert_eq!((report.op_min, report.op_max), (Some(op_last - SLOT_COUNT + 1), Some(op_last)));
    for op in [op_last, op_last - SLOT_COUNT + 1] {
        let checksum = header_of(&prepare_bytes(op, 0, 100)).checksum;
        let message = read_prepare_blocking(&mut journal, &mut storage, &pool, op, checksum);
        assert_eq!(message.unwrap().header().op, op);
    }
}

/// What happened to each slot in a crash run, to check recovery against.
struct CrashModel {
    /// The newest op submitted to the slot.
    submitted: Vec<Option<Op>>,
    /// The newest op of the slot reported durable.
    durable: Vec<Option<Op>>,
}

/// Writes ops in order with up to `pipeline_max` in flight, crashes at a random point, and
/// recovers; returns the model and the storage after the crash.
fn crash_run(seed: u64, pipeline_max: usize) -> (CrashModel, MemoryStorage, Op) {
    let mut prng = Prng::new(seed);
    let mut storage = formatted_storage();
    storage.shuffle_completions(seed);
    let mut journal = recovered(&mut storage, 0, 3);
    let pool = message_pool();
    let mut model = CrashModel {
        submitted: vec![None; SLOT_COUNT as usize],
        durable: vec![None; SLOT_COUNT as usize],
    };
    let op_last = 1 + prng.index(3 * SLOT_COUNT as usize) as u64;
    let (mut op_next, mut in_flight) = (1, 0);
    while !prng.chance(1, 4 * SLOT_COUNT) {
        if op_next <= op_last && in_flight < pipeline_max && prng.chance(1, 2) {
            let body_size = if prng.chance(1, 2) { BODY_SIZE_TWO_SECTORS } else { 100 };
            journal.write_prepare(&mut storage, prepare_message(&pool, op_next, 0, body_size));
            model.submitted[slot_of(op_next)] = Some(op_next);
            (op_next, in_flight) = (op_next + 1, in_flight + 1);
        } else if storage.in_flight() > 0 {
            for event in step(&mut journal, &mut storage) {
                let Event::PrepareDurable { op, .. } = event else { panic!("{event:?}") };
                model.durable[slot_of(op)] = Some(op);
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
    (model, storage, op_next - 1)
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
        let (model, mut storage, op_submitted_max) = crash_run(seed, PIPELINE_PREPARE_QUEUE_MAX);
        let checkpoint_op = op_submitted_max.saturating_sub(SLOT_COUNT);
        let report = recover_report(&mut storage, checkpoint_op, 3);
        assert!(report.usable, "seed={seed}");
        assert_recovered_from_crash(seed, &model, &report);
        let again = recover_report(&mut storage, checkpoint_op, 3);
        assert_recovered_from_crash(seed, &model, &again);
        for (slot, (first, second)) in report.slots.iter().zip(&again.slots).enumerate() {
            let expected = match first.decision {
                Decision::Fix | Decision::Eql => Decision::Eql,
                Decision::Nil | Decision::CutTorn => Decision::Nil,
                decision => decision,
            };
            assert_eq!(second.decision, expected, "seed={seed} slot={slot} {first:?} {second:?}");
        }
    }
}

#[test]
fn single_replica_recovers_from_a_crash_during_sequential_appends() {
    // Goal: a single replica that appends one prepare at a time can always restart after a
    // crash: the prepare torn at the head is cut, never left for a repair that cannot come.
    let test = "single_replica_recovers_from_a_crash_during_sequential_appends";
    for seed in seeds(200, test) {
        let (model, mut storage, op_submitted_max) = crash_run(seed, 1);
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
        put_durable(storage, op, 0);
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
    assert_case(&craft, 0, 5, Case::A, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_b_reserved_header_and_corrupt_prepare_needs_repair() {
    // Goal: @B below the head: a lost prepare, repair; unrecoverable for a single replica.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &reserved_header(CLUSTER, 5));
        put_torn_prepare(storage, 5);
    };
    assert_case(&craft, 0, 5, Case::B, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_b_torn_prepare_at_the_head_is_cut() {
    // Goal: @B at the slot after the highest op, with no other fault: a torn append, cut_torn
    // for every replica count; the slot ends reserved in both rings.
    let craft = |storage: &mut MemoryStorage| {
        for op in 1..=4 {
            put_durable(storage, op, 0);
        }
        put_torn_prepare(storage, 5);
    };
    assert_case(&craft, 0, 5, Case::B, [Decision::CutTorn, Decision::CutTorn]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    let report = recover_report(&mut storage, 0, 1);
    assert_eq!((report.op_max, report.count(Decision::CutTorn)), (Some(4), 1));
    assert_eq!(disk_prepare_header(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(recover_report(&mut storage, 0, 1).slots[5].case, Case::L);
}

#[test]
fn case_c_torn_prepare_over_an_older_wrap_at_the_head_is_cut() {
    // Goal: @C whose header is one wrap older than the torn op at the head: cut_torn.
    let craft = |storage: &mut MemoryStorage| {
        for op in 5..=SLOT_COUNT + 4 {
            put_durable(storage, op, 0);
        }
        put_torn_prepare(storage, SLOT_COUNT + 5);
    };
    let slot = slot_of(SLOT_COUNT + 5);
    assert_case(&craft, 10, slot, Case::C, [Decision::CutTorn, Decision::CutTorn]);
}

#[test]
fn case_b_torn_prepare_at_the_head_is_not_cut_with_another_fault_outside_the_window() {
    // Goal: a fault beyond the torn slot may hide a higher head, so nothing is cut.
    let craft = |storage: &mut MemoryStorage| {
        for op in 1..=4 {
            put_durable(storage, op, 0);
        }
        put_torn_prepare(storage, 5);
        put_durable(storage, 20, 0);
        corrupt_redundant(storage, 20);
        corrupt_prepare(storage, 20);
    };
    assert_case(&craft, 0, 5, Case::B, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_c_header_written_then_prepare_corrupt_needs_repair() {
    // Goal: @C: the header proves the prepare was written, so a corrupt prepare (even right
    // after the head) is repaired, never cut.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_prepare(storage, 10);
    };
    assert_case(&craft, 0, 10, Case::C, [Decision::Repair, Decision::Unrecoverable]);
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_prepare(storage, 5);
    };
    assert_case(&craft, 0, 5, Case::C, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_d_corrupt_header_and_reserved_prepare_is_fixed_only_alone() {
    // Goal: @D: repair with peers; a single replica trusts its reserved prepare.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_durable(storage, 20, 0);
        put_prepare(storage, 20, reserved_header(CLUSTER, 20).as_bytes());
        corrupt_redundant(storage, 20);
    };
    assert_case(&craft, 0, 20, Case::D, [Decision::Repair, Decision::Fix]);
}

#[test]
fn case_e_corrupt_header_below_the_head_is_fixed_only_alone() {
    // Goal: @E: an intact prepare below the head whose header is lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5);
    };
    assert_case(&craft, 0, 5, Case::E, [Decision::Repair, Decision::Fix]);
}

#[test]
fn case_f_corrupt_header_at_the_head_is_fixed() {
    // Goal: @F: a crash between the head's prepare and header writes; fix rewrites the
    // header sector, and the next recovery finds it eql.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 10);
    };
    assert_case(&craft, 0, 10, Case::F, [Decision::Fix, Decision::Fix]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    recover_report(&mut storage, 0, 3);
    assert_eq!(disk_redundant(&storage, 10), disk_prepare_header(&storage, 10));
    assert_eq!(recover_report(&mut storage, 0, 3).slots[10].decision, Decision::Eql);
}

#[test]
fn case_g_reserved_header_and_valid_prepare_is_fixed() {
    // Goal: @G: the header sector was written while the prepare was in flight.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &reserved_header(CLUSTER, 5));
    };
    assert_case(&craft, 0, 5, Case::G, [Decision::Fix, Decision::Fix]);
}

#[test]
fn case_h_prepare_beyond_the_checkpoint_window_is_cut() {
    // Goal: @H: a prepare above op_prepare_max is cut (both rings end reserved); alone, it
    // means a rolled-back superblock and the journal is unusable.
    let op_beyond = SLOT_COUNT + 5;
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, &prepare_bytes(op_beyond, 0, 100));
    };
    assert_case(&craft, 0, 5, Case::H, [Decision::Cut, Decision::Unrecoverable]);
    let mut storage = formatted_storage();
    craft(&mut storage);
    assert!(!recover_report(&mut storage, 0, 1).usable);
    assert_eq!(disk_prepare_header(&storage, 5).op, op_beyond, "unusable: nothing written");
    recover_report(&mut storage, 0, 3);
    assert_eq!(disk_prepare_header(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(disk_redundant(&storage, 5), reserved_header(CLUSTER, 5));
    assert_eq!(recover_report(&mut storage, 0, 3).slots[5].case, Case::L);
}

#[test]
fn case_i_header_beyond_the_checkpoint_window_is_cut() {
    // Goal: @I: the header is above op_prepare_max, the prepare an older valid op.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(SLOT_COUNT + 5, 0, 100)));
    };
    assert_case(&craft, 0, 5, Case::I, [Decision::Cut, Decision::Unrecoverable]);
}

#[test]
fn case_j_header_beyond_the_checkpoint_window_over_a_reserved_prepare_is_cut() {
    // Goal: @J: the header is above op_prepare_max, the prepare reserved.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 20, &header_of(&prepare_bytes(SLOT_COUNT + 20, 0, 100)));
    };
    assert_case(&craft, 0, 20, Case::J, [Decision::Cut, Decision::Unrecoverable]);
}

#[test]
fn case_k_header_over_a_reserved_prepare_needs_repair() {
    // Goal: @K: the header says a prepare was written but the prepare ring is reserved.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, reserved_header(CLUSTER, 5).as_bytes());
    };
    assert_case(&craft, 0, 5, Case::K, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_l_both_reserved_is_nil() {
    // Goal: @L: a slot never written.
    assert_case(&put_ops_1_to_10, 0, 20, Case::L, [Decision::Nil, Decision::Nil]);
}

#[test]
fn case_m_header_of_an_older_wrap_is_fixed() {
    // Goal: @M: the ring wrapped and the new prepare's header write was lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_prepare(storage, 5, &prepare_bytes(SLOT_COUNT + 5, 0, 100));
    };
    assert_case(&craft, 10, 5, Case::M, [Decision::Fix, Decision::Fix]);
}

#[test]
fn case_n_prepare_of_an_older_wrap_needs_repair() {
    // Goal: @N: the header proves a newer prepare was written here and lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(SLOT_COUNT + 5, 0, 100)));
    };
    assert_case(&craft, 10, 5, Case::N, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_o_two_versions_of_one_op_need_repair() {
    // Goal: @O: same op, different views: which one is current is for the cluster to say.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(5, 1, 100)));
        put_prepare(storage, 5, &prepare_bytes(5, 2, 100));
    };
    assert_case(&craft, 0, 5, Case::O, [Decision::Repair, Decision::Unrecoverable]);
}

#[test]
fn case_p_identical_entries_are_eql() {
    // Goal: @P: the normal case.
    assert_case(&put_ops_1_to_10, 0, 5, Case::P, [Decision::Eql, Decision::Eql]);
}

#[test]
fn misdirected_header_is_invalid_for_its_slot() {
    // Goal: a valid header written to the wrong slot reads as invalid there (not as the op it
    // names), so the slot is classified as if its header were lost.
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        put_redundant(storage, 5, &header_of(&prepare_bytes(6, 0, 100)));
    };
    let found = crafted_slot(&craft, 0, 3, 5);
    assert_eq!(found.header, EntrySummary::Invalid(EntryInvalid::Misdirected));
    assert_eq!((found.case, found.decision), (Case::E, Decision::Repair));
}

#[test]
fn repair_slots_keep_their_header_ring_bytes_across_fix_writes() {
    // Goal: a fix rewriting a header sector writes a faulty neighbour's bytes back unchanged,
    // so a second recovery finds the faulty slot in the same case (no laundering).
    let craft = |storage: &mut MemoryStorage| {
        put_ops_1_to_10(storage);
        corrupt_redundant(storage, 5); // @E: repair with peers.
        corrupt_redundant(storage, 10); // @F: fix, rewrites the same header sector.
    };
    let mut storage = formatted_storage();
    craft(&mut storage);
    let corrupt_bytes = storage.bytes()[redundant_offset(5)..][..HEADER_SIZE].to_vec();
    let journal = recovered(&mut storage, 0, 3);
    assert!(journal.faulty(Slot(5)) && !journal.faulty(Slot(10)));
    assert_eq!(&storage.bytes()[redundant_offset(5)..][..HEADER_SIZE], &corrupt_bytes[..]);
    let report = recover_report(&mut storage, 0, 3);
    assert_eq!((report.slots[5].case, report.slots[10].case), (Case::E, Case::P));
}

#[test]
fn recovery_case_covers_every_combination_of_entries() {
    // Goal: the pure classifier returns a case for any pair of entries and context, and each
    // case is reachable.
    let reserved = Entry::Reserved;
    let invalid = Entry::Invalid(EntryInvalid::Checksum);
    let prepare = |op: Op, view: View| Entry::Prepare(header_of(&prepare_bytes(op, view, 10)));
    let entries =
        [invalid, reserved, prepare(5, 0), prepare(5, 1), prepare(69, 0), prepare(133, 0)];
    let mut seen = Vec::new();
    for op_max in [None, Some(5), Some(69)] {
        let context = RecoveryContext { op_max, op_prepare_max: 74 };
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
