//! Tests of the superblock on an in-memory disk: open and its quorum errors, repair, update and
//! its read-back, crashes at every point of an update, and random corruption over many seeds.

use std::ops::Range;

use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::constants::{
    FORMAT_WRITE_SIZE, FORMAT_WRITES_IN_FLIGHT, SECTOR_SIZE, SUPERBLOCK_COPY_SIZE,
    SUPERBLOCK_HEADER_SIZE, SUPERBLOCK_UPDATE_REWRITES_MAX,
};
use crate::sim::storage::MemoryStorage;
use crate::stdx::prng::Prng;
use crate::vsr::format::format;
use crate::vsr::header::{ClientId, ReplicaIndex};
use crate::vsr::layout::Layout;

fn small_config() -> Config {
    Config::small(ClusterId(9), ReplicaIndex(1), 3)
}

fn formatted_storage() -> MemoryStorage {
    let config = small_config();
    let mut storage = MemoryStorage::new(Layout::new(&config).file_size());
    let pool = MessagePool::new(FORMAT_WRITES_IN_FLIGHT, FORMAT_WRITE_SIZE);
    format(&mut storage, &pool, &config).expect("format writes the file");
    storage
}

/// A disk holding `bytes`, for tests that start many runs from one formatted file.
fn storage_from(bytes: &[u8]) -> MemoryStorage {
    let mut storage = MemoryStorage::new(bytes.len() as u64);
    storage.bytes_mut().copy_from_slice(bytes);
    storage
}

/// The header of `copy` (its session trailer follows).
fn copy_range(copy: usize) -> Range<usize> {
    copy * SUPERBLOCK_COPY_SIZE..copy * SUPERBLOCK_COPY_SIZE + SUPERBLOCK_HEADER_SIZE
}

fn copy_on_disk(storage: &MemoryStorage, copy: usize) -> SuperBlockHeader {
    SuperBlockHeader::read_from_bytes(&storage.bytes()[copy_range(copy)]).expect("one sector")
}

fn put_copy(storage: &mut MemoryStorage, copy: usize, header: &SuperBlockHeader) {
    storage.bytes_mut()[copy_range(copy)].copy_from_slice(header.as_bytes());
}

fn corrupt_copy(storage: &mut MemoryStorage, copy: usize) {
    storage.corrupt_sector(copy_offset(copy));
}

/// Asserts that every copy on disk is `working`, written at its own position.
fn assert_copies_identical(storage: &MemoryStorage, working: &SuperBlockHeader) {
    for copy in 0..SUPERBLOCK_COPIES {
        let header = copy_on_disk(storage, copy);
        assert!(header.identical_at(working, copy), "copy {copy} differs from the working one");
    }
}

/// The working state with view, log_view and commit_max advanced by `step`, and a checkpoint
/// that follows commit_max, so every field of the state changes.
fn state_advanced(working: &SuperBlockHeader, step: u64) -> VsrState {
    let mut state = working.vsr_state();
    state.view += step as u32;
    state.log_view = state.view;
    state.commit_max += 3 * step;
    state.checkpoint_op = Op(state.commit_max.get() / 2);
    state.checkpoint_checksum =
        Checksum(state.checkpoint_checksum.get().wrapping_add(u128::from(step)));
    state.grid_head += step;
    state.view_headers_count = (state.commit_max.get() % (VIEW_HEADERS_MAX as u64 + 1)) as u32;
    for (index, header) in state.view_headers.iter_mut().enumerate() {
        header.op = state.commit_max + index as u64;
    }
    state
}

/// Routes the oldest completion in flight to the superblock.
fn step(superblock: &mut SuperBlock, storage: &mut MemoryStorage) {
    let mut completions = Vec::with_capacity(1);
    storage.poll(&mut completions, 1);
    assert_eq!(completions.len(), 1, "a completion was due");
    for completion in completions {
        superblock.on_completion(storage, completion);
    }
}

/// A disk whose chosen copies fail every read or write with EIO (the bytes still move, as a
/// failing device may or may not have transferred them).
struct FaultyStorage {
    inner: MemoryStorage,
    read_errors: [bool; SUPERBLOCK_COPIES],
    write_errors: [bool; SUPERBLOCK_COPIES],
    sync_error: bool,
}

impl FaultyStorage {
    /// A formatted disk that fails nothing until a test says so.
    fn healthy() -> FaultyStorage {
        FaultyStorage {
            inner: formatted_storage(),
            read_errors: [false; SUPERBLOCK_COPIES],
            write_errors: [false; SUPERBLOCK_COPIES],
            sync_error: false,
        }
    }
}

impl Storage for FaultyStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        self.inner.submit(request, buffer);
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        let start = completions.len();
        self.inner.poll(completions, completions_max);
        for completion in &mut completions[start..] {
            let copy = completion.request.token.index as usize;
            let failing = match completion.request.kind {
                IoKind::Read => self.read_errors[copy],
                IoKind::Write | IoKind::WriteCached => self.write_errors[copy],
                IoKind::Sync => self.sync_error,
            };
            if failing {
                completion.result = Err(IoError::Errno(libc::EIO));
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

#[test]
fn superblock_zone_comes_first_in_every_layout() {
    // Goal: copy offsets may be computed before the config is known.
    let layout = Layout::new(&small_config());
    assert_eq!(layout.zone_offset(Zone::Superblock), 0);
    assert_eq!(
        layout.zone_size(Zone::Superblock),
        copy_offset(SUPERBLOCK_COPIES - 1) + SUPERBLOCK_COPY_SIZE as u64
    );
}

#[test]
fn open_reads_freshly_formatted_file_at_sequence_one() {
    // Goal: a new data file opens to its format superblock, every copy healthy, nothing written.
    let mut storage = formatted_storage();
    let before = storage.bytes().to_vec();
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let working = superblock.working();
    assert_eq!(working.sequence, 1);
    assert_eq!(working.parent, Checksum(0));
    assert_eq!(working.config(), small_config());
    assert_eq!(
        (working.vsr_state.view, working.vsr_state.log_view, working.vsr_state.commit_max),
        (View(0), View(0), Op(0))
    );
    assert_eq!(superblock.copies_health(), &[CopyHealth::Valid { sequence: 1 }; 4]);
    assert!(storage.bytes() == before.as_slice(), "a healthy open writes nothing");
}

#[test]
fn open_of_a_version_1_data_file_names_its_version() {
    // Goal: a data file of format version 1 (one-sector copies: a 4-byte checksum, then `copy`
    // and `version` at bytes 4 and 6) is refused with an error that names its version, not as
    // a corrupt superblock; a data file whose copies are all corrupt is still "not found".
    let mut storage = formatted_storage();
    let mut prng = Prng::new(7);
    prng.fill(&mut storage.bytes_mut()[..SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE]);
    for copy in 0..SUPERBLOCK_COPIES {
        let at = copy * 4096;
        storage.bytes_mut()[at + 4..at + 6].copy_from_slice(&(copy as u16).to_le_bytes());
        storage.bytes_mut()[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
    }
    let Err(error) = SuperBlock::open_blocking(&mut storage) else { panic!("version 1 opened") };
    assert_eq!(error, SuperBlockError::VersionOther { version: 1 });
    let message = error.to_string();
    let reads = format!("reads version {SUPERBLOCK_VERSION}");
    assert!(message.contains("format version 1") && message.contains(&reads));
    let mut storage = formatted_storage();
    for copy in 0..SUPERBLOCK_COPIES {
        corrupt_copy(&mut storage, copy);
    }
    let Err(error) = SuperBlock::open_blocking(&mut storage) else { panic!("corrupt opened") };
    assert_eq!(error, SuperBlockError::NotFound);
}

#[test]
fn open_repairs_one_corrupt_copy() {
    // Goal: one corrupt copy is reported and rewritten before the open completes.
    let mut storage = formatted_storage();
    corrupt_copy(&mut storage, 2);
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    assert_eq!(superblock.copies_health()[2], CopyHealth::CorruptChecksum);
    assert_eq!(superblock.copies_health()[0], CopyHealth::Valid { sequence: 1 });
    assert_copies_identical(&storage, superblock.working());
}

#[test]
fn open_survives_two_corrupt_copies() {
    // Goal: two identical copies are an open quorum; the other two are repaired.
    let mut storage = formatted_storage();
    corrupt_copy(&mut storage, 0);
    corrupt_copy(&mut storage, 3);
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    assert_eq!(superblock.working().sequence, 1);
    let health = superblock.copies_health();
    assert_eq!((health[0], health[3]), (CopyHealth::CorruptChecksum, CopyHealth::CorruptChecksum));
    assert_copies_identical(&storage, superblock.working());
}

#[test]
fn open_fails_clearly_with_three_or_four_corrupt_copies() {
    // Goal: a single valid copy is not a quorum, and no valid copy is "not found"; neither
    // open writes anything.
    let mut storage = formatted_storage();
    for copy in [0, 1, 3] {
        corrupt_copy(&mut storage, copy);
    }
    let before = storage.bytes().to_vec();
    let error = SuperBlock::open_blocking(&mut storage).err().expect("no quorum");
    assert_eq!(error, SuperBlockError::QuorumLost { copies_valid: 1 });
    assert_eq!(
        error.to_string(),
        "superblock quorum lost: 1 of 4 copies valid, and no update is held by 2 identical copies"
    );
    assert!(storage.bytes() == before.as_slice());
    corrupt_copy(&mut storage, 2);
    let error = SuperBlock::open_blocking(&mut storage).err().expect("nothing valid");
    assert_eq!(error, SuperBlockError::NotFound);
}

#[test]
fn open_detects_and_repairs_misdirected_copy() {
    // Goal: copy 1's bytes at copy 2's place verify but are reported misdirected and rewritten.
    let mut storage = formatted_storage();
    let copy_one = copy_on_disk(&storage, 1);
    put_copy(&mut storage, 2, &copy_one);
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    assert_eq!(superblock.copies_health()[2], CopyHealth::Misdirected { copy: 1 });
    assert_eq!(copy_on_disk(&storage, 2).copy, 2);
    assert_copies_identical(&storage, superblock.working());
}

#[test]
fn open_counts_read_errors_as_corrupt_copies() {
    // Goal: copies the disk fails to read are left out of the quorum, like corrupt ones.
    let mut storage = FaultyStorage::healthy();
    storage.read_errors = [true, false, true, false];
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let error = IoError::Errno(libc::EIO);
    assert_eq!(superblock.copies_health()[0], CopyHealth::ReadError { error });
    assert_eq!(superblock.copies_health()[1], CopyHealth::Valid { sequence: 1 });
    storage.read_errors = [true, true, true, false];
    let result = SuperBlock::open_blocking(&mut storage);
    assert_eq!(result.err(), Some(SuperBlockError::QuorumLost { copies_valid: 1 }));
}

#[test]
fn open_reports_copy_with_unknown_version_as_invalid() {
    // Goal: a copy whose checksum verifies but whose version or config is bad is not trusted.
    let mut storage = formatted_storage();
    let mut header = copy_on_disk(&storage, 1);
    header.version = SUPERBLOCK_VERSION + 1;
    header.set_checksum();
    put_copy(&mut storage, 1, &header);
    let mut header = copy_on_disk(&storage, 3);
    header.replica_count = 0;
    header.set_checksum();
    put_copy(&mut storage, 3, &header);
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let health = superblock.copies_health();
    assert_eq!(health[1], CopyHealth::Invalid { reason: "superblock version unknown" });
    assert_eq!(health[3], CopyHealth::Invalid { reason: "replica count must be at least 1" });
    assert_copies_identical(&storage, superblock.working());
}

#[test]
fn read_only_open_reports_health_and_writes_nothing() {
    // Goal: inspection sees a corrupt copy without repairing it, and may not update.
    let mut storage = formatted_storage();
    corrupt_copy(&mut storage, 1);
    let before = storage.bytes().to_vec();
    let mut superblock = SuperBlock::new();
    superblock.open_read_only(&mut storage);
    superblock.complete_blocking(&mut storage).expect("open");
    assert_eq!(superblock.copies_health()[1], CopyHealth::CorruptChecksum);
    assert!(storage.bytes() == before.as_slice());
    assert!(!superblock.updatable);
}

#[test]
fn update_then_reopen_shows_new_state_at_sequence_two() {
    // Goal: an update is durable: a new open reads its state, sequence and parent.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let format_checksum = superblock.working().checksum;
    let state = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    assert_eq!(superblock.working().sequence, 2);
    assert_eq!(superblock.working().vsr_state(), state);
    let reopened = SuperBlock::open_blocking(&mut storage).expect("reopen");
    assert_eq!(reopened.working(), superblock.working());
    assert_eq!(reopened.working().sequence, 2);
    assert_eq!(reopened.working().parent, format_checksum);
    assert_eq!(reopened.working().vsr_state(), state);
    assert_eq!(reopened.working().vsr_state().view_headers().len(), 3);
    assert_copies_identical(&storage, reopened.working());
}

#[test]
fn updates_keep_view_log_view_and_commit_max_monotonic() {
    // Goal: a run of updates, including ones that leave a field unchanged, chains sequences
    // and parents, and a reopen sees the last.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    for round in 0..6u64 {
        let previous = *superblock.working();
        let mut state = state_advanced(&previous, round % 2);
        state.log_view = previous.vsr_state.log_view;
        superblock.update_blocking(&mut storage, &state, None).expect("update");
        let working = superblock.working();
        assert_eq!(working.sequence, previous.sequence + 1);
        assert_eq!(working.parent, previous.checksum);
        assert!(previous.transition_invalid(working).is_none());
    }
    let reopened = SuperBlock::open_blocking(&mut storage).expect("reopen");
    assert_eq!(reopened.working(), superblock.working());
    assert_eq!(reopened.working().sequence, 7);
}

fn update_with(change: fn(&mut VsrState)) {
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let state = state_advanced(superblock.working(), 2);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    let mut state = superblock.working().vsr_state();
    change(&mut state);
    superblock.update(&mut storage, &state, None);
}

#[test]
#[should_panic(expected = "superblock update: view went backwards")]
fn update_asserts_view_never_goes_backwards() {
    // Goal: the caller may never take the view backwards.
    update_with(|state| state.view -= 1);
}

#[test]
#[should_panic(expected = "superblock update: log_view went backwards")]
fn update_asserts_log_view_never_goes_backwards() {
    // Goal: the caller may never take log_view backwards.
    update_with(|state| state.log_view -= 1);
}

#[test]
#[should_panic(expected = "superblock update: commit_max went backwards")]
fn update_asserts_commit_max_never_goes_backwards() {
    // Goal: the caller may never take commit_max backwards.
    update_with(|state| state.commit_max -= 1);
}

#[test]
#[should_panic(expected = "superblock update: checkpoint_op went backwards")]
fn update_asserts_checkpoint_op_never_goes_backwards() {
    // Goal: a checkpoint is durable: no update (a state sync's included) may move it back.
    update_with(|state| state.checkpoint_op -= 1);
}

#[test]
#[should_panic(expected = "superblock update: log_view is newer than view")]
fn update_asserts_log_view_is_at_most_view() {
    // Goal: log_view never passes view.
    update_with(|state| state.log_view = state.view + 1);
}

#[test]
#[should_panic(expected = "one superblock operation at a time")]
fn update_asserts_one_operation_at_a_time() {
    // Goal: a second update while one is in flight is a bug in the caller.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let state = state_advanced(superblock.working(), 1);
    superblock.update(&mut storage, &state, None);
    superblock.update(&mut storage, &state, None);
}

/// Crashes an update after `completions` completions (each of the four writes, then the four
/// reads of the verification), tearing the write in flight into the disk if `tear`; returns
/// how many copies of the update reached the disk.
fn crash_during_update(
    storage: &mut MemoryStorage,
    state: &VsrState,
    completions: usize,
    tear: bool,
) -> usize {
    let mut superblock = SuperBlock::open_blocking(storage).expect("open");
    superblock.update(storage, state, None);
    step(&mut superblock, storage); // The sync before the first copy.
    for _ in 0..completions {
        step(&mut superblock, storage);
    }
    assert!(superblock.poll_result().is_none(), "the update is still in flight");
    let write_in_flight = completions < SUPERBLOCK_COPIES;
    if tear {
        storage.crash_tearing_writes(1);
    } else {
        storage.crash();
    }
    let copies_written = completions.min(SUPERBLOCK_COPIES);
    copies_written + usize::from(write_in_flight && tear)
}

#[test]
fn crash_during_update_reopens_to_old_or_new_state_never_a_mix() {
    // Goal: whatever point an update crashes at, an open finds the last completed update or
    // the crashed one (once two copies hold it), all copies agree afterwards, and the next
    // update chains from what was found.
    let mut template = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut template).expect("open");
    let completed = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut template, &completed, None).expect("update");
    let crashed = state_advanced(superblock.working(), 2);
    for completions in 0..2 * SUPERBLOCK_COPIES {
        for tear in [false, true] {
            let context = format!("crash after {completions} completions, tear {tear}");
            let mut storage = storage_from(template.bytes());
            let copies_written = crash_during_update(&mut storage, &crashed, completions, tear);
            let reopened = SuperBlock::open_blocking(&mut storage).expect(&context);
            let working = *reopened.working();
            if copies_written >= SUPERBLOCK_QUORUM_OPEN {
                assert_eq!((working.sequence, working.vsr_state()), (3, crashed), "{context}");
            } else {
                assert_eq!((working.sequence, working.vsr_state()), (2, completed), "{context}");
            }
            assert_copies_identical(&storage, &working);
            let mut reopened = reopened;
            let next = state_advanced(&working, 3);
            reopened.update_blocking(&mut storage, &next, None).expect(&context);
            let last = SuperBlock::open_blocking(&mut storage).expect(&context);
            assert_eq!(last.working().sequence, working.sequence + 1, "{context}");
            assert_eq!(last.working().parent, working.checksum, "{context}");
        }
    }
}

#[test]
fn crash_during_open_repair_keeps_the_chosen_state() {
    // Goal: an update that reached one copy is rolled back by open; a crash during that repair
    // leaves a file that still opens to the same state.
    let mut storage = formatted_storage();
    let working = *SuperBlock::open_blocking(&mut storage).expect("open").working();
    let crashed = state_advanced(&working, 1);
    assert_eq!(crash_during_update(&mut storage, &crashed, 0, true), 1);
    let mut superblock = SuperBlock::new();
    superblock.open(&mut storage);
    for _ in 0..SUPERBLOCK_COPIES {
        step(&mut superblock, &mut storage);
    }
    assert_eq!(superblock.copies_health()[0], CopyHealth::Stale { sequence: 2 });
    assert_eq!(storage.in_flight(), 1, "the repair of copy 0 is in flight");
    storage.crash();
    let reopened = SuperBlock::open_blocking(&mut storage).expect("reopen");
    assert_eq!(reopened.working(), &working);
    assert_copies_identical(&storage, &working);
}

#[test]
fn open_detects_fork() {
    // Goal: two different superblocks with the same sequence are an error, not a choice.
    let mut storage = formatted_storage();
    let working = *SuperBlock::open_blocking(&mut storage).expect("open").working();
    let mut first = working;
    first.sequence = 2;
    first.parent = working.checksum;
    first.set_vsr_state(&state_advanced(&working, 1));
    first.set_checksum();
    let mut second = first;
    second.set_vsr_state(&state_advanced(&working, 2));
    second.set_checksum();
    for (copy, header) in [(0, first), (1, first), (2, second), (3, second)] {
        let mut header = header;
        header.copy = copy as u16;
        put_copy(&mut storage, copy, &header);
    }
    let result = SuperBlock::open_blocking(&mut storage);
    assert_eq!(result.err(), Some(SuperBlockError::Fork { sequence: 2 }));
}

/// A change to a copy that a test makes before it re-checksums the copy.
type HeaderChange = fn(&mut SuperBlockHeader);

/// Writes a copy of sequence `working.sequence + sequence_delta` at copy 0 only, built from
/// `working` by `change`, and returns what open says.
fn open_with_newer_copy_zero(
    sequence_delta: u64,
    change: HeaderChange,
) -> Result<SuperBlock, SuperBlockError> {
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let state = state_advanced(superblock.working(), 4);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    let working = *superblock.working();
    let mut newer = working;
    newer.sequence += sequence_delta;
    newer.parent = working.checksum;
    change(&mut newer);
    newer.set_checksum();
    put_copy(&mut storage, 0, &newer);
    SuperBlock::open_blocking(&mut storage)
}

#[test]
fn open_accepts_newer_copy_that_descends_from_the_chosen_one() {
    // Goal: an update that reached one copy is rolled back, and the copy is reported stale.
    let superblock =
        open_with_newer_copy_zero(1, |header| header.vsr_state.commit_max += 1).expect("open");
    assert_eq!(superblock.working().sequence, 2);
    assert_eq!(superblock.copies_health()[0], CopyHealth::Stale { sequence: 3 });
}

#[test]
fn open_detects_newer_copy_whose_parent_does_not_connect() {
    // Goal: a newer copy that is not a child of the chosen superblock is an error.
    let result = open_with_newer_copy_zero(1, |header| header.parent ^= 1);
    assert_eq!(result.err(), Some(SuperBlockError::ParentNotConnected { sequence: 3 }));
    let result = open_with_newer_copy_zero(2, |_| {});
    assert_eq!(result.err(), Some(SuperBlockError::ParentSkipped { sequence: 4 }));
}

#[test]
fn open_detects_vsr_state_going_backwards() {
    // Goal: view, log_view or commit_max going backwards from parent to child, and log_view
    // past view, are errors that name the field.
    let cases: [(HeaderChange, &str); 4] = [
        (|header| header.vsr_state.view -= 1, "view went backwards"),
        (|header| header.vsr_state.log_view -= 1, "log_view went backwards"),
        (|header| header.vsr_state.commit_max -= 1, "commit_max went backwards"),
        (
            |header| header.vsr_state.log_view = header.vsr_state.view + 1,
            "log_view is newer than view",
        ),
    ];
    for (change, reason) in cases {
        let result = open_with_newer_copy_zero(1, change);
        let expected = SuperBlockError::VsrStateNotMonotonic { sequence: 3, reason };
        assert_eq!(result.err(), Some(expected));
    }
}

#[test]
fn open_detects_chosen_superblock_going_backwards_from_its_parent() {
    // Goal: the chosen superblock is also checked against its parent when a copy holds it.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let parent = *superblock.working();
    let state = state_advanced(&parent, 1);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    let mut child = *superblock.working();
    child.vsr_state.commit_max = parent.vsr_state.commit_max;
    child.vsr_state.view = parent.vsr_state.view;
    child.vsr_state.log_view = parent.vsr_state.view;
    child.vsr_state.checkpoint_op = Op(0);
    child.set_checksum();
    let mut stale_parent = parent;
    stale_parent.vsr_state.view += 1;
    stale_parent.vsr_state.log_view = stale_parent.vsr_state.view;
    stale_parent.set_checksum();
    child.parent = stale_parent.checksum;
    child.set_checksum();
    for (copy, header) in [(0, child), (1, child), (2, child), (3, stale_parent)] {
        let mut header = header;
        header.copy = copy as u16;
        put_copy(&mut storage, copy, &header);
    }
    let reason = "view went backwards";
    let expected = SuperBlockError::VsrStateNotMonotonic { sequence: 2, reason };
    assert_eq!(SuperBlock::open_blocking(&mut storage).err(), Some(expected));
}

#[test]
fn update_rewrites_copy_that_reads_back_corrupt() {
    // Goal: a copy corrupted between its write and the read-back is rewritten and verified.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let state = state_advanced(superblock.working(), 1);
    superblock.update(&mut storage, &state, None);
    step(&mut superblock, &mut storage); // The sync before the first copy.
    for _ in 0..SUPERBLOCK_COPIES {
        step(&mut superblock, &mut storage);
    }
    corrupt_copy(&mut storage, 2);
    for _ in 0..SUPERBLOCK_COPIES {
        step(&mut superblock, &mut storage);
    }
    assert_eq!(superblock.copies_health()[2], CopyHealth::CorruptChecksum);
    assert!(superblock.poll_result().is_none(), "the corrupt copy is being rewritten");
    superblock.complete_blocking(&mut storage).expect("update");
    assert_eq!(superblock.copies_health(), &[CopyHealth::Valid { sequence: 2 }; 4]);
    assert_copies_identical(&storage, superblock.working());
}

#[test]
fn update_settles_for_verify_quorum_when_one_copy_stays_unreadable() {
    // Goal: one copy that never reads back is retried a bounded number of times, then the
    // update succeeds on three copies.
    let mut storage = FaultyStorage::healthy();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    storage.read_errors[3] = true;
    let state = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    assert_eq!(superblock.working().sequence, 2);
    assert_eq!(superblock.rewrites, SUPERBLOCK_UPDATE_REWRITES_MAX);
    let error = IoError::Errno(libc::EIO);
    assert_eq!(superblock.copies_health()[3], CopyHealth::ReadError { error });
}

#[test]
fn update_fails_when_verify_cannot_reach_quorum() {
    // Goal: two unreadable copies fail the update after its rewrites; working stays, and only
    // a new open may follow.
    let mut storage = FaultyStorage::healthy();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let before = *superblock.working();
    storage.read_errors = [false, true, true, false];
    let state = state_advanced(superblock.working(), 1);
    let result = superblock.update_blocking(&mut storage, &state, None);
    assert_eq!(result, Err(SuperBlockError::VerifyFailed { copies_matching: 2 }));
    assert_eq!(superblock.working(), &before);
    assert!(!superblock.updatable);
    storage.read_errors = [false; 4];
    superblock.open(&mut storage);
    superblock.complete_blocking(&mut storage).expect("reopen");
    assert_eq!(superblock.working().sequence, 2, "every copy holds the unverified update");
}

#[test]
fn update_fails_on_write_error() {
    // Goal: a failed write fails the update at once, with the copy and the error.
    let mut storage = FaultyStorage::healthy();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    storage.write_errors[1] = true;
    let state = state_advanced(superblock.working(), 1);
    let result = superblock.update_blocking(&mut storage, &state, None);
    let error = IoError::Errno(libc::EIO);
    assert_eq!(result, Err(SuperBlockError::WriteFailed { copy: 1, error }));
    assert_eq!(superblock.working().sequence, 1);
    assert_eq!(storage.in_flight(), 0);
}

#[test]
fn update_fails_on_sync_error() {
    // Goal: a failed sync fails the update before any copy is written: nothing may point at
    // what might not be on the media.
    let mut storage = FaultyStorage::healthy();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let before = storage.inner.bytes()[..SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE].to_vec();
    storage.sync_error = true;
    let state = state_advanced(superblock.working(), 1);
    let result = superblock.update_blocking(&mut storage, &state, None);
    let error = IoError::Errno(libc::EIO);
    assert_eq!(result, Err(SuperBlockError::SyncFailed { error }));
    assert_eq!(superblock.working().sequence, 1);
    assert_eq!(&storage.inner.bytes()[..before.len()], &before[..], "no copy was written");
    assert_eq!(storage.in_flight(), 0);
}

#[test]
fn update_makes_earlier_cached_writes_durable() {
    // Goal: a cached write that completed before an update survives a crash after it (the
    // update's sync covered it), while one that completed after the update may be lost: the
    // disk model keeps unflushed writes in a volatile cache.
    let mut storage = formatted_storage();
    storage.cache_model(4 * SECTOR_SIZE);
    let layout = Layout::new(&small_config());
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let pool = MessagePool::new(2, SECTOR_SIZE);
    let offsets = [layout.offset(Zone::Grid, 0), layout.offset(Zone::Grid, SECTOR_SIZE as u64)];
    let write = |storage: &mut MemoryStorage, index: usize| {
        let mut buffer = pool.get();
        buffer.buffer_mut_unique()[..SECTOR_SIZE].fill(0xA0 + index as u8);
        let request = IoRequest {
            token: IoToken { owner: IoOwner::Grid, index: index as u32 },
            kind: IoKind::WriteCached,
            zone: Zone::Grid,
            offset: offsets[index],
            length: SECTOR_SIZE,
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
        let mut completions = Vec::new();
        storage.poll(&mut completions, 1);
        assert!(completions.pop().expect("the write completed").result.is_ok());
    };
    write(&mut storage, 0);
    let state = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut storage, &state, None).expect("update");
    write(&mut storage, 1);
    assert_eq!(storage.cached_unflushed(), 1, "only the write after the update is unflushed");
    storage.crash();
    let sector = |storage: &MemoryStorage, index: usize| {
        storage.bytes()[offsets[index] as usize..][..SECTOR_SIZE].to_vec()
    };
    assert_eq!(sector(&storage, 0), vec![0xA0; SECTOR_SIZE], "synced by the update");
    assert_eq!(sector(&storage, 1), vec![0; SECTOR_SIZE], "lost with the cache");
}

#[test]
fn errors_display_on_one_line() {
    // Goal: every error is one line an operator can read.
    let error = IoError::Errno(libc::EIO);
    let errors = [
        SuperBlockError::NotFound,
        SuperBlockError::QuorumLost { copies_valid: 1 },
        SuperBlockError::Fork { sequence: 2 },
        SuperBlockError::ParentSkipped { sequence: 4 },
        SuperBlockError::ParentNotConnected { sequence: 3 },
        SuperBlockError::VsrStateNotMonotonic { sequence: 3, reason: "view went backwards" },
        SuperBlockError::WriteFailed { copy: 1, error },
        SuperBlockError::SyncFailed { error },
        SuperBlockError::VerifyFailed { copies_matching: 2 },
    ];
    for error in errors {
        let line = error.to_string();
        assert!(line.starts_with("superblock "), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

/// Damages `copy` in one of the ways a disk does: a bit flip, a lost sector, random bytes, or
/// another copy's bytes written to its place.
fn damage_copy(storage: &mut MemoryStorage, prng: &mut Prng, copy: usize) {
    match prng.index(4) {
        0 => corrupt_copy(storage, copy),
        1 => storage.bytes_mut()[copy_range(copy)].fill(0),
        2 => prng.fill(&mut storage.bytes_mut()[copy_range(copy)]),
        _ => {
            let source = (copy + 1 + prng.index(SUPERBLOCK_COPIES - 1)) % SUPERBLOCK_COPIES;
            let bytes = storage.bytes()[copy_range(source)].to_vec();
            storage.bytes_mut()[copy_range(copy)].copy_from_slice(&bytes);
        }
    }
}

#[test]
fn random_damage_to_two_copies_opens_latest_completed_update() {
    // Goal: over many seeds, after random updates and damage to at most two copies, open
    // (with completions in random order) finds the last completed update and repairs the file.
    // Replay one seed with SUPERBLOCK_SEED=<seed>.
    let seeds = match std::env::var("SUPERBLOCK_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().expect("SUPERBLOCK_SEED is a number");
            seed..seed + 1
        }
        Err(_) => 0..300,
    };
    let template = formatted_storage();
    for seed in seeds {
        println!("seed {seed}");
        let context = format!(
            "seed {seed}: replay with SUPERBLOCK_SEED={seed} cargo test --lib \
             random_damage_to_two_copies_opens_latest_completed_update"
        );
        let mut prng = Prng::new(seed);
        let mut storage = storage_from(template.bytes());
        storage.shuffle_completions(seed);
        let mut superblock = SuperBlock::open_blocking(&mut storage).expect(&context);
        for _ in 0..prng.index(5) {
            let state = state_advanced(superblock.working(), prng.index(3) as u64);
            superblock.update_blocking(&mut storage, &state, None).expect(&context);
        }
        let completed = *superblock.working();
        let first = prng.index(SUPERBLOCK_COPIES);
        let second = (first + 1 + prng.index(SUPERBLOCK_COPIES - 1)) % SUPERBLOCK_COPIES;
        for copy in [first, second].into_iter().take(prng.index(3)) {
            damage_copy(&mut storage, &mut prng, copy);
        }
        let reopened = SuperBlock::open_blocking(&mut storage).expect(&context);
        assert_eq!(reopened.working(), &completed, "{context}");
        assert_copies_identical(&storage, &completed);
    }
}

#[test]
fn client_sessions_round_trip_and_a_rotten_trailer_counts_as_a_corrupt_copy() {
    // Goal: the session table an update is given is what a reopen reads back, a view update
    // (no table) keeps it, and a copy whose header is sound but whose session trailer rotted
    // is reported and rewritten, like a torn header.
    let mut storage = formatted_storage();
    let mut superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    let clients_max = superblock.working().clients_max as usize;
    assert!(superblock.working_sessions().iter().all(|record| *record == Default::default()));
    let mut sessions = vec![ClientSessionRecord::default(); clients_max];
    sessions[1].client = ClientId(77);
    sessions[1].session = Op(5);
    sessions[1].request = 3;
    let state = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut storage, &state, Some(&sessions)).expect("update");
    let state = state_advanced(superblock.working(), 1);
    superblock.update_blocking(&mut storage, &state, None).expect("view update");
    let checksum = superblock.working().vsr_state.client_sessions_checksum;
    assert_eq!(
        checksum,
        sessions_checksum(&sessions[..2]),
        "the trailer holds slots up to the last in use"
    );
    assert_eq!(superblock.working().vsr_state.client_sessions_count, 2);
    storage.corrupt_sector(copy_offset(2) + SUPERBLOCK_HEADER_SIZE as u64);
    let reopened = SuperBlock::open_blocking(&mut storage).expect("reopen");
    assert_eq!(reopened.working().sequence, 3);
    assert_eq!(reopened.working_sessions(), &sessions[..]);
    assert_eq!(reopened.copies_health()[2], CopyHealth::CorruptSessions);
    let again = SuperBlock::open_blocking(&mut storage).expect("reopen after the repair");
    assert!(
        again.copies_health().iter().all(|health| *health == CopyHealth::Valid { sequence: 3 })
    );
}

#[test]
fn an_unreadable_sector_past_a_copys_end_is_written_again_by_the_repair() {
    // Goal: open reads the largest copy, so a sector past the end of this configuration's copy
    // (written by nothing since the format) that fails every read makes the copy unreadable;
    // the repair writes the copy's whole place, so the next open finds every copy valid. A
    // repair of the copy's own bytes only left the bad sector to spoil every open.
    let mut storage = formatted_storage();
    let tail = copy_offset(2) + SUPERBLOCK_COPY_SIZE as u64 - SECTOR_SIZE as u64;
    storage.unreadable(tail..tail + SECTOR_SIZE as u64);
    let superblock = SuperBlock::open_blocking(&mut storage).expect("open");
    assert!(matches!(superblock.copies_health()[2], CopyHealth::ReadError { .. }));
    let again = SuperBlock::open_blocking(&mut storage).expect("reopen after the repair");
    assert!(
        again.copies_health().iter().all(|health| *health == CopyHealth::Valid { sequence: 1 })
    );
}
