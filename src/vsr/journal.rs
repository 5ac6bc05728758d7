//! The write-ahead journal (WAL): two rings in the data file, both indexed by
//! slot = op mod `journal_slot_count`, the write and read paths over them, and the recovery that
//! classifies every slot when the replica opens its data file.
//!
//! - `wal_prepares` holds one `message_size_max` slot per op: the prepare (header then body),
//!   padded with zeros to a whole sector.
//! - `wal_headers` holds a redundant copy of each slot's header, 16 per 4096-byte sector.
//!
//! The journal is sans-IO. `write_prepare`, `read_prepare` and `recover` only submit requests to
//! a `Storage`; the driver hands each completion back through `on_completion` (or the
//! `*_complete` handler its `IoOwner` names), and results come out of `poll_event`, a queue of
//! `JOURNAL_EVENTS_MAX` events that the caller drains after every completion it delivers.
//!
//! # Writing a prepare
//!
//! 1. `write_prepare` sets `headers[slot]` (what the slot should hold) and writes the prepare.
//! 2. When that write completes, `headers_redundant[slot]` (what the header ring holds) is set and
//!    the whole header sector of the slot is written from a snapshot of `headers_redundant`. In
//!    the snapshot a slot whose prepare is still being written is its reserved header, and a
//!    faulty slot keeps the bytes recovery found there: the header ring only ever describes a
//!    prepare that is already on disk, and never turns a faulty slot into a clean one.
//! 3. The prepare is durable once a header-sector write submitted after step 2 completes; then
//!    `Event::PrepareDurable` is emitted, and only then may the replica acknowledge it.
//!
//! One write per header sector is in flight at a time. Slots that become ready meanwhile go into
//! the next snapshot, taken when the current write completes, so an older snapshot can never
//! land after a newer one. A `write_prepare` to a slot whose previous write is not yet durable is
//! **queued** behind it, in call order: every call yields exactly one `PrepareDurable` or one
//! `WriteFailed` (after which the replica must stop).
//!
//! # Truncating after replay
//!
//! A replica's replay follows the hash chain from the checkpoint and stops at its first break,
//! the head. Slots may still hold valid prepares of higher ops that the replay did not follow
//! (stale versions, or ops left behind a lost one). Before the replica prepares anything,
//! `truncate_after` truncates them durably, exactly as recovery applies a cut: otherwise a crash
//! that lands a new prepare of such an op but not its header write would leave the stale
//! header over the new prepare (@O, unrecoverable with one replica). A crash in the middle of the
//! truncation leaves each slot as it was (@P), with its header reserved over the stale prepare
//! (@G, recovered as it was), or reserved in both rings (@L): the next open truncates again.
//!
//! # Recovery decision table
//!
//! `recover` reads both rings and classifies each slot from its two entries, the redundant
//! header (`wal_headers`) and the prepare (`wal_prepares`). An entry is:
//!
//! - **reserved** if it is exactly `reserved_header(cluster, slot)`;
//! - a valid **prepare** if its checksum is right, `Header::invalid()` finds nothing, the
//!   cluster is ours, the command is prepare, `size <= message_size_max`, `op % slot_count` is
//!   the slot (a misdirected write fails here), and for the prepare ring the body matches
//!   `checksum_body` over `size` bytes;
//! - **invalid** otherwise (corrupt, torn, misdirected, unreadable).
//!
//! Context: `op_prepare_max = checkpoint_op + slot_count` (no op above it can have been
//! prepared under this checkpoint), "beyond" means `op > op_prepare_max`, and `op_max` is the
//! highest op of a valid prepare that is not beyond and whose redundant header is not beyond
//! (an @I prepare is cut, so it is not the head). The first row that matches wins
//! (`recovery_case`, a pure function of the two entries and the context):
//!
//! ```text
//! case  header           prepare          condition                R>1       R=1
//! @H    any              prepare, beyond                           cut       unrecoverable
//! @A    invalid          invalid                                   repair    unrecoverable
//! @B    reserved         torn             in the torn window (*)   cut_torn  cut_torn
//! @B    reserved         invalid                                   repair    unrecoverable
//! @C    older prepare    torn             in the torn window (*)   cut_torn  cut_torn
//! @C    prepare          invalid                                   repair    unrecoverable
//! @D    invalid          reserved                                  repair    fix
//! @E    invalid          prepare          not @F                   repair    fix
//! @F    invalid          prepare          newest possible (**)     fix       fix
//! @G    reserved         prepare                                   fix       fix
//! @I    prepare, beyond  prepare                                   cut       unrecoverable
//! @J    prepare, beyond  reserved                                  cut       unrecoverable
//! @K    prepare          reserved                                  repair    unrecoverable
//! @L    reserved         reserved                                  nil       nil
//! @M    prepare          prepare          header.op < prepare.op   fix       fix
//! @N    prepare          prepare          header.op > prepare.op   repair    unrecoverable
//! @O    prepare          prepare          same op, not identical   repair    unrecoverable
//! @P    prepare          prepare          identical                eql       eql
//!
//! (*) torn: the header or body checksum failed; older: of an op below the slot's op `t`. The
//!     torn window is a condition on every slot at once (see cut_torn below), so `recover`
//!     decides it and `recovery_case` only returns @B or @C.
//! (**) prepare.op = op_max, or prepare.op > checkpoint_op: the slot's next op,
//!     prepare.op + slot_count, lies beyond op_prepare_max, so nothing newer can have been
//!     written to it under this checkpoint.
//! ```
//!
//! Decisions: **eql** and **nil**: clean, nothing to do. **fix**: rewrite the redundant header
//! from the intact local prepare (the header sector is written during recovery). **repair**: the
//! slot is dirty and faulty and must be fetched from a peer (`request_prepare`); its header-ring
//! bytes are left as found. **unrecoverable**: a single replica has no peer to repair from, so
//! the journal is reported unusable and nothing is written. **cut**: truncate; both rings are
//! rewritten reserved (header first, so a crash in between recovers to the same decision).
//! **cut_torn**: truncate a prepare torn while it was appended.
//!
//! Why:
//!
//! - @A, @B, @C, @K: the prepare is lost; only a peer has it. @B and @K are what a lost or torn
//!   prepare write or a misdirected write leaves; @C is a written prepare that later rotted.
//! - @D, @E: the redundant header is lost, so nothing proves the slot's prepare (or its
//!   reserved entry) is the newest one this replica wrote: a newer prepare's write may have
//!   been lost or misdirected after its header landed and it was acknowledged. Taking the
//!   older one would make the replica nack a prepare it acknowledged. With peers, the slot is
//!   faulty and repaired (and may hide an acknowledged op: `op_acknowledged_max`); a single
//!   replica has only its own copy, and uses it.
//! - @F: the crash fell between the prepare write and its header write, at the head of the log;
//!   or the prepare is the newest op its slot can hold under this checkpoint (a torn header
//!   sector below the head).
//! - @G: the header sector was written while this slot's prepare was still in flight (it is
//!   written as reserved then), and the crash came before the next header write.
//! - @H, @I, @J: an op beyond `op_prepare_max` cannot belong to this checkpoint's log: it was
//!   written before a checkpoint this superblock does not have. A single replica never prepares
//!   beyond its own checkpoint, so there it means a rolled-back superblock: unusable.
//! - @L: never written. @P: the normal case.
//! - @M: the ring wrapped and the crash came between the new prepare and its header write.
//! - @N: the header proves a newer prepare was written here; the older one is stale.
//! - @O: two versions of one op (a view change replaced it); we cannot tell which is current.
//!
//! **cut_torn.** The pipeline keeps up to `PIPELINE_PREPARE_QUEUE_MAX` (P) prepares in flight
//! and their writes complete in any order, so a crash can tear op 6 while op 7 landed, or tear
//! ops above the highest intact one. A torn prepare reads as invalid (@B or @C). Write `t` for
//! the op a slot holds in this checkpoint's log (the one op of `(checkpoint_op, op_prepare_max]`
//! at that slot) and `op_head` for `op_max`, or `checkpoint_op` if no prepare is valid. A slot
//! is cut_torn, truncated and never repaired, when all of these hold:
//!
//! 1. its prepare's header checksum or body checksum failed (a valid header for another slot
//!    is a misdirected write, not a tear; an unreadable sector is not a tear either);
//! 2. its redundant header is reserved or a prepare of an op below `t`: the header ring never
//!    described `t` here, so `t` was never reported durable (a durable prepare's header stays
//!    in the ring until the slot is written again);
//! 3. `op_head >= checkpoint_op`, `t` lies in `[op_head + 1 - P, op_head + P]`, and the `t` of
//!    every slot cut together fit in P consecutive ops. These are the ops a crash can find in
//!    flight: if `c` is the last op durable together with every earlier op, the pipeline held
//!    at most `c + 1 ..= c + P`, and `c <= op_max <= c + P`;
//! 4. no other fault (repair or unrecoverable) sits at a `t` above `op_head`: such a fault may
//!    be the true head, and then a torn-looking slot below it could be a durable prepare that
//!    rotted. A fault at or below `op_head` hides no higher op and keeps its own decision.
//!
//! Why it is safe: a prepare is acknowledged (`prepare_ok`, or a reply when R=1) only after
//! `PrepareDurable`, which condition 2 rules out. With R=1 a prepare is committed only once it
//! and every earlier op are durable, so the torn op was never committed nor answered, and
//! neither was any op after it: those can remain in the journal (op 7 above a cut op 6), but
//! the hash chain breaks at the cut slot, so replay stops there and they are overwritten when
//! the ops are prepared again. With R>1 the replica truthfully reports it never held the torn
//! op, and a gap below a surviving op is repaired from peers like any missing op. A slot is also
//! reserved in the header ring while the same op is written again; the replica rewrites a
//! durable op only when a view change replaced it, so the version it held was not committed.
//! Condition 3 keeps the rule as narrow as the crash that causes it, so that a slot rotted far
//! from the head stays a fault; after any crash, a single replica recovers, as it must. (A
//! backup may have more than P prepares written and not yet durable, up to its pipeline; a
//! crash that tears some beyond the window leaves them faults that peers repair, which is safe,
//! only slower.)
//!
//! **Never laundering a fault.** Header sectors hold 16 slots, so a slot's redundant header is
//! rewritten whenever a neighbour's is. Recovery therefore never loads a header into a slot it
//! marks faulty, and the sector snapshot writes a faulty slot's header-ring bytes back unchanged,
//! so a later crash finds the slot in the same case, not a cleaner one.

use std::collections::VecDeque;

use static_assertions::const_assert;
use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{
    HEADER_SIZE, JOURNAL_COMPLETIONS_MAX, JOURNAL_EVENTS_MAX, JOURNAL_HEADERS_PER_SECTOR,
    JOURNAL_IOPS_READ_MAX, JOURNAL_IOPS_WRITE_MAX, PIPELINE_PREPARE_QUEUE_MAX, PROTOCOL_VERSION,
    REPLICAS_MAX, SECTOR_SIZE,
};
use crate::vsr::header::{Checksum, ClusterId, Command, Header, Op, View};
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::{Completion, IoError, IoKind, IoOwner, IoRequest, IoToken, Storage};

// A header sector's slots are tracked in a `u32` mask, and write indexes in a `u8`.
const_assert!(JOURNAL_HEADERS_PER_SECTOR <= 32);
const_assert!(JOURNAL_IOPS_WRITE_MAX <= u8::MAX as usize);

/// The header that marks slot `slot` empty, in both rings. It carries the slot as its `op` so
/// that a reserved entry written to the wrong slot is detected like any misdirected write.
/// The highest op a replica may prepare while its checkpoint is `checkpoint_op`: any higher op
/// would overwrite a slot whose op the checkpoint does not yet cover.
pub fn op_prepare_max(checkpoint_op: Op, slot_count: u64) -> Op {
    checkpoint_op + slot_count
}

pub fn reserved_header(cluster: ClusterId, slot: u64) -> Header {
    let mut header = Header::zeroed();
    header.cluster = cluster;
    header.size = HEADER_SIZE as u32;
    header.protocol = PROTOCOL_VERSION;
    header.command = Command::Reserved as u8;
    header.op = Op(slot);
    header.set_checksum_body(&[]);
    header.set_checksum();
    header
}

/// A position in both rings: `op % slot_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub usize);

/// What the entries of a data file are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingContext {
    pub cluster: ClusterId,
    pub slot_count: u64,
    pub message_size_max: u64,
}

impl RingContext {
    pub fn new(config: &Config) -> RingContext {
        assert!(config.invalid().is_none());
        RingContext {
            cluster: config.cluster,
            slot_count: u64::from(config.journal_slot_count),
            message_size_max: u64::from(config.message_size_max),
        }
    }
}

/// Why an entry read from one of the rings is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryInvalid {
    /// The disk returned an error.
    Io,
    /// The header checksum is wrong (corrupt, torn, or never written).
    Checksum,
    /// A well-formed header of another cluster.
    Cluster,
    /// The header fails `Header::invalid()`, or is a reserved header with other fields set.
    Header(&'static str),
    /// A well-formed message that is not a prepare.
    Command,
    /// Larger than this cluster's `message_size_max`.
    Size,
    /// A well-formed entry for another slot: a misdirected write (or read).
    Misdirected,
    /// The body's checksum is wrong (typically a torn write).
    BodyChecksum,
    /// Fewer bytes were read than the header's `size`.
    BodyTruncated,
}

/// One ring's entry for one slot, validated.
// A whole header by value: entries live in tables allocated at startup, never boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Invalid(EntryInvalid),
    Reserved,
    Prepare(Header),
}

impl Entry {
    /// Classifies a header read from `slot` of either ring, without its body: a redundant
    /// header, or the header of a prepare whose body was checked already.
    pub fn from_header(header: &Header, context: &RingContext, slot: Slot) -> Entry {
        match header_entry(header, context, slot) {
            Ok(entry) => entry,
            Err(reason) => Entry::Invalid(reason),
        }
    }

    /// Classifies the bytes read from `slot` of `wal_prepares`: the header, and the body over
    /// the header's `size` bytes.
    pub fn from_prepare(bytes: &[u8], context: &RingContext, slot: Slot) -> Entry {
        let Ok((header, _)) = Header::read_from_prefix(bytes) else {
            return Entry::Invalid(EntryInvalid::BodyTruncated);
        };
        let entry = Entry::from_header(&header, context, slot);
        if let Entry::Prepare(header) = &entry {
            let Some(body) = bytes.get(HEADER_SIZE..header.size as usize) else {
                return Entry::Invalid(EntryInvalid::BodyTruncated);
            };
            if !header.valid_checksum_body(body) {
                return Entry::Invalid(EntryInvalid::BodyChecksum);
            }
        }
        entry
    }

    /// The report's summary of this entry.
    pub fn summary(&self) -> EntrySummary {
        match self {
            Entry::Invalid(reason) => EntrySummary::Invalid(*reason),
            Entry::Reserved => EntrySummary::Reserved,
            Entry::Prepare(header) => EntrySummary::Prepare {
                op: header.op,
                view: header.view,
                checksum: header.checksum,
            },
        }
    }
}

fn header_entry(header: &Header, context: &RingContext, slot: Slot) -> Result<Entry, EntryInvalid> {
    assert!((slot.0 as u64) < context.slot_count);
    if !header.valid_checksum() {
        return Err(EntryInvalid::Checksum);
    }
    if header.cluster != context.cluster {
        return Err(EntryInvalid::Cluster);
    }
    if header.command == Command::Reserved as u8 {
        if header.op != Op(slot.0 as u64) {
            return Err(EntryInvalid::Misdirected);
        }
        if *header != reserved_header(context.cluster, slot.0 as u64) {
            return Err(EntryInvalid::Header("reserved header with fields set"));
        }
        return Ok(Entry::Reserved);
    }
    if let Some(reason) = header.invalid() {
        return Err(EntryInvalid::Header(reason));
    }
    if header.command != Command::Prepare as u8 {
        return Err(EntryInvalid::Command);
    }
    if u64::from(header.size) > context.message_size_max {
        return Err(EntryInvalid::Size);
    }
    if header.op.slot(context.slot_count) != slot.0 {
        return Err(EntryInvalid::Misdirected);
    }
    Ok(Entry::Prepare(*header))
}

/// A slot's situation at recovery: a row of the decision table in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
    N,
    O,
    P,
}

impl Case {
    pub const ALL: [Case; 16] = [
        Case::A,
        Case::B,
        Case::C,
        Case::D,
        Case::E,
        Case::F,
        Case::G,
        Case::H,
        Case::I,
        Case::J,
        Case::K,
        Case::L,
        Case::M,
        Case::N,
        Case::O,
        Case::P,
    ];

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "@A", "@B", "@C", "@D", "@E", "@F", "@G", "@H", "@I", "@J", "@K", "@L", "@M", "@N",
            "@O", "@P",
        ];
        NAMES[self as usize]
    }

    /// The decision for this case in a cluster of `replica_count` replicas (before the
    /// torn-prepare refinement, which only `recover` can make: it looks at every slot).
    pub fn decision(self, replica_count: u8) -> Decision {
        assert!(replica_count >= 1);
        assert!(usize::from(replica_count) <= REPLICAS_MAX);
        let single = replica_count == 1;
        match self {
            Case::A | Case::B | Case::C | Case::K | Case::N | Case::O if single => {
                Decision::Unrecoverable
            }
            Case::A | Case::B | Case::C | Case::K | Case::N | Case::O => Decision::Repair,
            // A single replica has only its own copy, and uses it.
            Case::D | Case::E if single => Decision::Fix,
            // The lost header may have named a newer prepare of the slot whose write was lost
            // (misdirected) after it was acknowledged: the replica must not claim the older one,
            // nor deny the newer (TigerBeetle's table decides `vsr` here too).
            Case::D | Case::E => Decision::Repair,
            Case::F | Case::G | Case::M => Decision::Fix,
            Case::H | Case::I | Case::J if single => Decision::Unrecoverable,
            Case::H | Case::I | Case::J => Decision::Cut,
            Case::L => Decision::Nil,
            Case::P => Decision::Eql,
        }
    }
}

/// What recovery does with a slot (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Eql,
    Nil,
    Fix,
    Repair,
    Cut,
    CutTorn,
    Unrecoverable,
}

impl Decision {
    pub const ALL: [Decision; 7] = [
        Decision::Eql,
        Decision::Nil,
        Decision::Fix,
        Decision::Repair,
        Decision::Cut,
        Decision::CutTorn,
        Decision::Unrecoverable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Decision::Eql => "eql",
            Decision::Nil => "nil",
            Decision::Fix => "fix",
            Decision::Repair => "repair",
            Decision::Cut => "cut",
            Decision::CutTorn => "cut_torn",
            Decision::Unrecoverable => "unrecoverable",
        }
    }

    /// The slot lost a prepare that only a peer can restore.
    pub fn is_fault(self) -> bool {
        matches!(self, Decision::Repair | Decision::Unrecoverable)
    }
}

/// The log-wide facts a slot's case depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryContext {
    /// The highest op of a valid prepare not beyond `op_prepare_max`, under a redundant header
    /// not beyond it either, if any.
    pub op_max: Option<Op>,
    /// `op_prepare_max(checkpoint_op, slot_count)`.
    pub op_prepare_max: Op,
    /// The checkpoint the journal is recovered under: a slot's prepare above it is the
    /// newest op of that slot this checkpoint's log can hold.
    pub checkpoint_op: Op,
}

/// The row of the decision table that `header` (redundant) and `prepare` fall in. Pure: this
/// is what a fuzz target or an offline inspector calls.
pub fn recovery_case(header: &Entry, prepare: &Entry, context: &RecoveryContext) -> Case {
    let beyond = |header: &Header| header.op > context.op_prepare_max;
    match (header, prepare) {
        (_, Entry::Prepare(prepare)) if beyond(prepare) => Case::H,
        (Entry::Invalid(_), Entry::Invalid(_)) => Case::A,
        (Entry::Reserved, Entry::Invalid(_)) => Case::B,
        (Entry::Prepare(_), Entry::Invalid(_)) => Case::C,
        (Entry::Invalid(_), Entry::Reserved) => Case::D,
        (Entry::Invalid(_), Entry::Prepare(prepare)) => {
            // Nothing newer can have been written to the slot: it is the head, or the next op
            // of the slot lies beyond `op_prepare_max`.
            if context.op_max == Some(prepare.op) || prepare.op > context.checkpoint_op {
                Case::F
            } else {
                Case::E
            }
        }
        (Entry::Reserved, Entry::Prepare(_)) => Case::G,
        (Entry::Prepare(header), Entry::Prepare(_)) if beyond(header) => Case::I,
        (Entry::Prepare(header), Entry::Reserved) if beyond(header) => Case::J,
        (Entry::Prepare(_), Entry::Reserved) => Case::K,
        (Entry::Reserved, Entry::Reserved) => Case::L,
        (Entry::Prepare(header), Entry::Prepare(prepare)) => {
            if header == prepare {
                Case::P
            } else if header.op < prepare.op {
                Case::M
            } else if header.op > prepare.op {
                Case::N
            } else {
                Case::O
            }
        }
    }
}

/// An entry as the report shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntrySummary {
    Invalid(EntryInvalid),
    Reserved,
    Prepare { op: Op, view: View, checksum: Checksum },
}

/// One slot of the recovery report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotReport {
    pub case: Case,
    pub decision: Decision,
    /// The redundant header, as found.
    pub header: EntrySummary,
    /// The prepare, as found.
    pub prepare: EntrySummary,
}

/// What `recover` found and decided, slot by slot: the operator's view of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    pub checkpoint_op: Op,
    pub op_prepare_max: Op,
    pub replica_count: u8,
    /// Indexed by slot.
    pub slots: Vec<SlotReport>,
    /// The lowest and highest op the journal holds a clean prepare for after recovery.
    pub op_min: Option<Op>,
    pub op_max: Option<Op>,
    /// Indexed like `Decision::ALL`.
    pub decision_counts: [u32; Decision::ALL.len()],
    /// False if any slot is unrecoverable: the replica must not start on this journal.
    pub usable: bool,
}

impl RecoveryReport {
    /// Recounts the decisions, the ops held, and whether the journal is usable, from `slots`.
    fn totals(&mut self) {
        self.decision_counts = [0; Decision::ALL.len()];
        self.op_min = None;
        self.op_max = None;
        for slot in &self.slots {
            self.decision_counts[slot.decision as usize] += 1;
            let holds = matches!(slot.decision, Decision::Eql | Decision::Fix);
            if let (true, EntrySummary::Prepare { op, .. }) = (holds, slot.prepare) {
                self.op_min = Some(self.op_min.map_or(op, |op_min| op_min.min(op)));
                self.op_max = Some(self.op_max.map_or(op, |op_max| op_max.max(op)));
            }
        }
        self.usable = self.count(Decision::Unrecoverable) == 0;
    }

    fn new(slot_count: usize) -> RecoveryReport {
        let slot = SlotReport {
            case: Case::L,
            decision: Decision::Nil,
            header: EntrySummary::Reserved,
            prepare: EntrySummary::Reserved,
        };
        RecoveryReport {
            checkpoint_op: Op(0),
            op_prepare_max: Op(0),
            replica_count: 0,
            slots: vec![slot; slot_count],
            op_min: None,
            op_max: None,
            decision_counts: [0; Decision::ALL.len()],
            usable: false,
        }
    }

    pub fn count(&self, decision: Decision) -> u32 {
        self.decision_counts[decision as usize]
    }

    /// The highest op this replica may have acknowledged, given that its log's hash chain
    /// ends at `op_head`: what a replica whose journal may hide acknowledged prepares can
    /// still not deny holding (a view change counts none of its nacks up to here).
    ///
    /// A prepare is acknowledged only once its header is durable in the header ring, and in
    /// op order. So walking up from `op_head + 1`, an op `z` may have been acknowledged only
    /// if its slot's redundant header names `z`, or is unreadable (a rotten sector may hide
    /// it); a reserved header or one naming another op proves `z`'s header was never
    /// durable, and no op above `z` was acknowledged either. The walk uses the entries as
    /// recovery found them, and stays within `op_prepare_max`.
    pub fn op_acknowledged_max(&self, op_head: Op) -> Op {
        let slot_count = self.slots.len() as u64;
        let mut op = op_head;
        while op < self.op_prepare_max && op - op_head < slot_count {
            let next = op + 1;
            let slot = &self.slots[next.slot(slot_count)];
            let may_hold = match slot.header {
                EntrySummary::Prepare { op: named, .. } => named == next,
                EntrySummary::Invalid(_) => true,
                EntrySummary::Reserved => false,
            };
            if !may_hold {
                break;
            }
            op = next;
        }
        assert!(op >= op_head);
        assert!(op <= op_head.max(self.op_prepare_max));
        op
    }
}

/// Why `read_prepare` did not return the prepare asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    Io(IoError),
    Invalid(EntryInvalid),
    /// The slot holds no prepare.
    Reserved,
    /// The slot holds a valid prepare of another op (another wrap of the ring).
    WrongOp {
        found: Op,
    },
    /// The slot holds a valid prepare of this op, but another version of it.
    WrongChecksum {
        found: Checksum,
    },
}

/// What the journal reports back to its caller.
#[derive(Debug)]
pub enum Event {
    /// The prepare and a header sector holding its redundant header are on disk.
    PrepareDurable { op: Op, checksum: Checksum },
    /// The result of `read_prepare`.
    PrepareRead { op: Op, checksum: Checksum, result: Result<Message, ReadError> },
    /// `recover` or `inspect` finished; see `recovery_report()`.
    Recovered { usable: bool },
    /// Every truncation of `truncate_after` is durable.
    Truncated,
    /// A write failed: the replica must stop. For a header sector, `slot` is its first slot.
    WriteFailed { zone: Zone, slot: Slot, error: IoError },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Init,
    Recovering,
    Recovered,
    /// `inspect` finished: the report is ready, and the journal takes no requests.
    Inspected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecoveryPhase {
    Reading,
    WritingHeaders,
    WritingPrepares,
    Done,
}

struct Recovery {
    phase: RecoveryPhase,
    checkpoint_op: Op,
    replica_count: u8,
    /// `inspect`: classify only, never write.
    read_only: bool,
    sector_next: usize,
    slot_next: usize,
    read_pool: Option<MessagePool>,
}

/// Where `truncate_after` is: like recovery's cut, header sectors first, then prepares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TruncatePhase {
    Idle,
    WritingHeaders,
    WritingPrepares,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteState {
    Free,
    /// Waiting for the slot's earlier write to become durable.
    Queued,
    /// The prepare is being written.
    Prepare,
    /// The prepare is on disk; its header waits for the next header-sector snapshot.
    HeaderAwaited,
    /// In the snapshot being written.
    HeaderInFlight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    /// A prepare from the caller.
    Append,
    /// Recovery or `truncate_after` truncating a slot: a reserved header into the prepare
    /// ring.
    Truncate,
}

struct Write {
    state: WriteState,
    kind: WriteKind,
    slot: Slot,
    header: Header,
    /// Call order, to start queued writes of one slot in order.
    sequence: u64,
    /// Held only while queued; in flight, the storage holds it.
    message: Option<Message>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadPurpose {
    Recovery,
    Caller,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadTarget {
    HeaderSector { sector: usize },
    Prepare { slot: Slot, op: Op, checksum: Checksum, purpose: ReadPurpose },
}

struct Read {
    target: Option<ReadTarget>,
    /// Bytes of the buffer filled so far.
    length_read: usize,
}

/// A set of `bit_count` bits, allocated once.
struct BitSet {
    words: Vec<u64>,
    bit_count: usize,
    count: usize,
}

impl BitSet {
    fn new(bit_count: usize) -> BitSet {
        BitSet { words: vec![0; bit_count.div_ceil(64)], bit_count, count: 0 }
    }

    fn get(&self, index: usize) -> bool {
        assert!(index < self.bit_count);
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    fn set(&mut self, index: usize) {
        if !self.get(index) {
            self.words[index / 64] |= 1 << (index % 64);
            self.count += 1;
        }
    }

    fn clear(&mut self, index: usize) {
        if self.get(index) {
            self.words[index / 64] &= !(1 << (index % 64));
            self.count -= 1;
        }
    }

    fn fill(&mut self) {
        for index in 0..self.bit_count {
            self.set(index);
        }
    }
}

fn sector_ceil(size: usize) -> usize {
    size.next_multiple_of(SECTOR_SIZE)
}

/// The WAL of one replica. See the module docs.
pub struct Journal {
    context: RingContext,
    layout: Layout,
    status: Status,
    /// A write failed: no more requests are accepted.
    failed: bool,
    /// What each slot should hold (set before the prepare is written). During recovery: the
    /// headers found in the prepare ring.
    headers: Vec<Header>,
    /// What the header ring holds, or will once the pending sector write lands (set after the
    /// prepare is written). For a faulty slot: the bytes recovery found.
    headers_redundant: Vec<Header>,
    /// The slot needs writing or repair.
    dirty: BitSet,
    /// The slot was written and then lost; implies dirty.
    faulty: BitSet,
    /// The index of the slot's current (not queued) write.
    slot_writes: Vec<Option<u8>>,
    writes: Vec<Write>,
    write_sequence: u64,
    sectors_writing: BitSet,
    /// Sectors recovery must rewrite.
    sectors_needed: BitSet,
    /// For each sector write in flight: the slots its snapshot confirms.
    sector_confirms: Vec<u32>,
    header_pool: MessagePool,
    reads: Vec<Read>,
    /// Recovery: why each slot's prepare is invalid, if it is.
    prepares_invalid: Vec<Option<EntryInvalid>>,
    /// Recovery and `truncate_after`: slots whose prepare must be overwritten with a reserved
    /// header.
    truncate: BitSet,
    truncation: TruncatePhase,
    recovery: Recovery,
    report: RecoveryReport,
    events: VecDeque<Event>,
    completions: Vec<Completion>,
}

impl Journal {
    /// Allocates every table, pool and queue the journal will ever use.
    pub fn new(config: &Config) -> Journal {
        let context = RingContext::new(config);
        let slot_count = config.journal_slot_count as usize;
        let sector_count = slot_count / JOURNAL_HEADERS_PER_SECTOR;
        assert_eq!(slot_count % JOURNAL_HEADERS_PER_SECTOR, 0);
        let mut writes = Vec::with_capacity(JOURNAL_IOPS_WRITE_MAX);
        for _ in 0..JOURNAL_IOPS_WRITE_MAX {
            writes.push(Write {
                state: WriteState::Free,
                kind: WriteKind::Append,
                slot: Slot(0),
                header: Header::zeroed(),
                sequence: 0,
                message: None,
            });
        }
        let mut reads = Vec::with_capacity(JOURNAL_IOPS_READ_MAX);
        for _ in 0..JOURNAL_IOPS_READ_MAX {
            reads.push(Read { target: None, length_read: 0 });
        }
        let mut dirty = BitSet::new(slot_count);
        let mut faulty = BitSet::new(slot_count);
        dirty.fill();
        faulty.fill();
        Journal {
            context,
            layout: Layout::new(config),
            status: Status::Init,
            failed: false,
            headers: vec![Header::zeroed(); slot_count],
            headers_redundant: vec![Header::zeroed(); slot_count],
            dirty,
            faulty,
            slot_writes: vec![None; slot_count],
            writes,
            write_sequence: 0,
            sectors_writing: BitSet::new(sector_count),
            sectors_needed: BitSet::new(sector_count),
            sector_confirms: vec![0; sector_count],
            header_pool: MessagePool::new(JOURNAL_IOPS_WRITE_MAX, SECTOR_SIZE),
            reads,
            prepares_invalid: vec![None; slot_count],
            truncate: BitSet::new(slot_count),
            truncation: TruncatePhase::Idle,
            recovery: Recovery {
                phase: RecoveryPhase::Reading,
                checkpoint_op: Op(0),
                replica_count: 0,
                read_only: false,
                sector_next: 0,
                slot_next: 0,
                read_pool: None,
            },
            report: RecoveryReport::new(slot_count),
            events: VecDeque::with_capacity(JOURNAL_EVENTS_MAX),
            completions: Vec::with_capacity(JOURNAL_COMPLETIONS_MAX),
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn slot_count(&self) -> usize {
        self.headers.len()
    }

    pub fn slot_for_op(&self, op: Op) -> Slot {
        Slot(op.slot(self.context.slot_count))
    }

    /// What `slot` should hold (reserved if empty or awaiting repair).
    pub fn header(&self, slot: Slot) -> &Header {
        assert_eq!(self.status, Status::Recovered);
        &self.headers[slot.0]
    }

    /// The prepare header for `op`, if the journal holds (or is writing) that op.
    pub fn header_with_op(&self, op: Op) -> Option<&Header> {
        let header = self.header(self.slot_for_op(op));
        (header.command == Command::Prepare as u8 && header.op == op).then_some(header)
    }

    /// Whether a slot holds a prepare of an op above `op_head` that `matches` names.
    pub fn holds_above(&self, op_head: Op, matches: impl Fn(&Header) -> bool) -> bool {
        self.headers.iter().any(|header| {
            header.command == Command::Prepare as u8 && header.op > op_head && matches(header)
        })
    }

    pub fn dirty(&self, slot: Slot) -> bool {
        self.dirty.get(slot.0)
    }

    pub fn faulty(&self, slot: Slot) -> bool {
        self.faulty.get(slot.0)
    }

    /// A prepare or header write is in flight or queued.
    pub fn writing(&self) -> bool {
        self.writes_busy() > 0 || self.sectors_writing.count > 0
    }

    /// Prepare writes in flight or queued (at most `JOURNAL_IOPS_WRITE_MAX`).
    pub fn writes_in_flight(&self) -> usize {
        self.writes_busy()
    }

    /// Whether a `write_prepare` may be started now: every write slot may be busy while the
    /// disk is slow, with prepares that already left the pipeline (committed on the other
    /// replicas' copies) still being written here.
    pub fn write_available(&self) -> bool {
        self.writes_busy() < self.writes.len()
    }

    /// A `truncate_after` is in progress.
    pub fn truncating(&self) -> bool {
        self.truncation != TruncatePhase::Idle
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.count
    }

    pub fn faulty_count(&self) -> usize {
        self.faulty.count
    }

    /// The report of the last `recover` or `inspect`.
    pub fn recovery_report(&self) -> &RecoveryReport {
        assert!(matches!(self.status, Status::Recovered | Status::Inspected));
        &self.report
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Routes a completion of one of the journal's requests to its handler.
    pub fn on_completion<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        match completion.request.token.owner {
            IoOwner::JournalPrepare => self.write_prepare_complete(storage, completion),
            IoOwner::JournalHeaders => self.write_headers_complete(storage, completion),
            IoOwner::JournalRead => self.read_complete(storage, completion),
            owner => panic!("journal given a completion of {owner:?}"),
        }
    }

    /// Polls `storage` and routes completions until nothing is in flight. For startup, tools
    /// and tests, where the journal is the storage's only user; events stay queued.
    pub fn run_until_idle<S: Storage>(&mut self, storage: &mut S) {
        let mut completions = std::mem::take(&mut self.completions);
        assert_eq!(completions.capacity(), JOURNAL_COMPLETIONS_MAX);
        while storage.in_flight() > 0 {
            assert!(completions.is_empty());
            storage.poll(&mut completions, JOURNAL_COMPLETIONS_MAX);
            for completion in completions.drain(..) {
                self.on_completion(storage, completion);
            }
        }
        self.completions = completions;
    }

    /// `recover`, driven to the end through `run_until_idle`. Fails if a recovery write failed.
    pub fn recover_blocking<S: Storage>(
        &mut self,
        storage: &mut S,
        checkpoint_op: Op,
        replica_count: u8,
        read_pool: &MessagePool,
    ) -> Result<&RecoveryReport, IoError> {
        assert!(self.events.is_empty());
        self.recover(storage, checkpoint_op, replica_count, read_pool);
        self.recover_blocking_finish(storage)
    }

    /// `inspect`, driven to the end through `run_until_idle`, for `kimberlite inspect`.
    pub fn inspect_blocking<S: Storage>(
        &mut self,
        storage: &mut S,
        checkpoint_op: Op,
        replica_count: u8,
        read_pool: &MessagePool,
    ) -> Result<&RecoveryReport, IoError> {
        assert!(self.events.is_empty());
        self.inspect(storage, checkpoint_op, replica_count, read_pool);
        self.recover_blocking_finish(storage)
    }

    fn recover_blocking_finish<S: Storage>(
        &mut self,
        storage: &mut S,
    ) -> Result<&RecoveryReport, IoError> {
        self.run_until_idle(storage);
        let mut result = Ok(());
        while let Some(event) = self.poll_event() {
            match event {
                Event::Recovered { usable } => assert_eq!(usable, self.report.usable),
                Event::WriteFailed { error, .. } => result = result.and(Err(error)),
                event => panic!("unexpected event during recovery: {event:?}"),
            }
        }
        result?;
        Ok(self.recovery_report())
    }

    fn event_push(&mut self, event: Event) {
        assert!(self.events.len() < JOURNAL_EVENTS_MAX, "journal events not drained");
        self.events.push_back(event);
    }

    fn writes_busy(&self) -> usize {
        self.writes.iter().filter(|write| write.state != WriteState::Free).count()
    }

    fn reads_busy(&self) -> usize {
        self.reads.iter().filter(|read| read.target.is_some()).count()
    }

    /// Asserts that the events every request in flight may still emit, plus one, fit.
    fn assert_event_room(&self) {
        let outstanding = self.writes_busy() + self.reads_busy() + self.sectors_writing.count;
        assert!(self.events.len() + outstanding < JOURNAL_EVENTS_MAX, "journal events not drained");
    }

    fn write_failed(&mut self, zone: Zone, slot: Slot, error: IoError) {
        self.failed = true;
        self.event_push(Event::WriteFailed { zone, slot, error });
    }
}

/// The write path.
impl Journal {
    /// Writes `message`, a valid prepare of this cluster whose buffer is zero from `size` to the
    /// next sector boundary, to its slot. Emits `PrepareDurable` (or `WriteFailed`) later. If the
    /// slot's previous write is not yet durable, this one is queued behind it.
    pub fn write_prepare<S: Storage>(&mut self, storage: &mut S, message: Message) {
        assert_eq!(self.status, Status::Recovered);
        assert!(self.report.usable);
        assert!(!self.failed);
        assert_eq!(self.truncation, TruncatePhase::Idle, "write_prepare during truncate_after");
        let header = *message.header();
        assert!(header.valid_checksum());
        assert_eq!(header.invalid(), None);
        assert_eq!(header.command, Command::Prepare as u8);
        assert_eq!(header.cluster, self.context.cluster);
        assert!(u64::from(header.size) <= self.context.message_size_max);
        assert!(header.valid_checksum_body(message.body()));
        let size = header.size as usize;
        let padding = &message.buffer()[size..sector_ceil(size)];
        assert!(padding.iter().all(|byte| *byte == 0), "prepare padding must be zero");
        self.assert_event_room();

        let slot = self.slot_for_op(header.op);
        let index = self.write_acquire(WriteKind::Append, slot, header);
        self.headers[slot.0] = header;
        self.dirty.set(slot.0);
        if self.slot_writes[slot.0].is_some() {
            self.writes[index].state = WriteState::Queued;
            self.writes[index].message = Some(message);
        } else {
            self.write_prepare_start(storage, index, message);
        }
    }

    fn write_acquire(&mut self, kind: WriteKind, slot: Slot, header: Header) -> usize {
        let index = self.writes.iter().position(|write| write.state == WriteState::Free);
        let index = index.expect("more than JOURNAL_IOPS_WRITE_MAX journal writes");
        self.write_sequence += 1;
        let write = &mut self.writes[index];
        assert!(write.message.is_none());
        write.state = WriteState::Queued;
        write.kind = kind;
        write.slot = slot;
        write.header = header;
        write.sequence = self.write_sequence;
        index
    }

    fn write_prepare_start<S: Storage>(&mut self, storage: &mut S, index: usize, buffer: Message) {
        assert!(!self.recovery.read_only);
        let write = &mut self.writes[index];
        assert_eq!(write.state, WriteState::Queued);
        assert!(self.slot_writes[write.slot.0].is_none());
        assert!(write.message.is_none());
        write.state = WriteState::Prepare;
        self.slot_writes[write.slot.0] = Some(index as u8);
        let slot_offset = write.slot.0 as u64 * self.context.message_size_max;
        let request = IoRequest {
            token: IoToken { owner: IoOwner::JournalPrepare, index: index as u32 },
            kind: IoKind::Write,
            zone: Zone::WalPrepares,
            offset: self.layout.offset(Zone::WalPrepares, slot_offset),
            length: sector_ceil(write.header.size as usize),
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
    }

    /// A prepare write completed: record its header as on disk and write its header sector.
    pub fn write_prepare_complete<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        assert_eq!(completion.request.token.owner, IoOwner::JournalPrepare);
        let index = completion.request.token.index as usize;
        let result = completion.result;
        drop(completion);
        let write = &mut self.writes[index];
        assert_eq!(write.state, WriteState::Prepare);
        let slot = write.slot;
        assert_eq!(self.slot_writes[slot.0], Some(index as u8));
        if let Err(error) = result {
            write.state = WriteState::Free;
            self.slot_writes[slot.0] = None;
            self.write_failed(Zone::WalPrepares, slot, error);
            return;
        }
        match write.kind {
            WriteKind::Append => {
                write.state = WriteState::HeaderAwaited;
                self.headers_redundant[slot.0] = write.header;
                let sector = slot.0 / JOURNAL_HEADERS_PER_SECTOR;
                if !self.sectors_writing.get(sector) {
                    self.write_headers(storage, sector);
                }
            }
            WriteKind::Truncate => {
                write.state = WriteState::Free;
                self.slot_writes[slot.0] = None;
                assert_eq!(self.headers[slot.0], self.headers_redundant[slot.0]);
                assert_eq!(self.headers[slot.0].command, Command::Reserved as u8);
                self.dirty.clear(slot.0);
                self.truncate_pump(storage);
            }
        }
    }

    /// Whether `sector` has anything new to write.
    fn write_headers_wanted(&self, sector: usize) -> bool {
        let first = sector * JOURNAL_HEADERS_PER_SECTOR;
        self.sectors_needed.get(sector)
            || (first..first + JOURNAL_HEADERS_PER_SECTOR).any(|slot| {
                self.slot_writes[slot].is_some_and(|index| {
                    self.writes[usize::from(index)].state == WriteState::HeaderAwaited
                })
            })
    }

    /// Writes a snapshot of `sector`'s redundant headers (see the module docs).
    fn write_headers<S: Storage>(&mut self, storage: &mut S, sector: usize) {
        assert!(!self.recovery.read_only);
        assert!(!self.sectors_writing.get(sector));
        assert!(self.write_headers_wanted(sector));
        let mut buffer = self.header_pool.get();
        let bytes = buffer.buffer_mut_unique();
        let mut confirms: u32 = 0;
        for entry in 0..JOURNAL_HEADERS_PER_SECTOR {
            let slot = sector * JOURNAL_HEADERS_PER_SECTOR + entry;
            let (header, confirmed) = self.write_headers_entry(slot);
            bytes[entry * HEADER_SIZE..][..HEADER_SIZE].copy_from_slice(header.as_bytes());
            confirms |= u32::from(confirmed) << entry;
        }
        self.sectors_needed.clear(sector);
        self.sectors_writing.set(sector);
        self.sector_confirms[sector] = confirms;
        let request = IoRequest {
            token: IoToken { owner: IoOwner::JournalHeaders, index: sector as u32 },
            kind: IoKind::Write,
            zone: Zone::WalHeaders,
            offset: self.layout.offset(Zone::WalHeaders, (sector * SECTOR_SIZE) as u64),
            length: SECTOR_SIZE,
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
    }

    /// The header a snapshot holds for `slot`, and whether the snapshot landing makes the slot
    /// durable (a write whose prepare is on disk) or clean (a header fixed by recovery).
    fn write_headers_entry(&mut self, slot: usize) -> (Header, bool) {
        let state = self.slot_writes[slot].map(|index| self.writes[usize::from(index)].state);
        let header = if self.faulty.get(slot) {
            self.headers_redundant[slot]
        } else if state == Some(WriteState::Prepare) {
            reserved_header(self.context.cluster, slot as u64)
        } else {
            self.headers_redundant[slot]
        };
        assert_ne!(state, Some(WriteState::HeaderInFlight));
        let confirmed = match (state, self.slot_writes[slot]) {
            (Some(WriteState::HeaderAwaited), Some(index)) => {
                self.writes[usize::from(index)].state = WriteState::HeaderInFlight;
                true
            }
            (Some(_), _) => false,
            (None, _) => self.slot_clean_once_written(slot),
        };
        (header, confirmed)
    }

    /// A slot with no write whose header only needs to reach the header ring to be clean.
    fn slot_clean_once_written(&self, slot: usize) -> bool {
        assert!(self.slot_writes[slot].is_none());
        self.dirty.get(slot)
            && !self.faulty.get(slot)
            && self.headers_redundant[slot] == self.headers[slot]
    }

    /// A header-sector write completed: the slots its snapshot confirms are durable.
    pub fn write_headers_complete<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        assert_eq!(completion.request.token.owner, IoOwner::JournalHeaders);
        let sector = completion.request.token.index as usize;
        let result = completion.result;
        drop(completion);
        assert!(self.sectors_writing.get(sector));
        self.sectors_writing.clear(sector);
        let confirms = std::mem::take(&mut self.sector_confirms[sector]);
        let first = sector * JOURNAL_HEADERS_PER_SECTOR;
        if let Err(error) = result {
            self.write_failed(Zone::WalHeaders, Slot(first), error);
            return;
        }
        for entry in 0..JOURNAL_HEADERS_PER_SECTOR {
            if confirms & (1 << entry) == 0 {
                continue;
            }
            let slot = first + entry;
            match self.slot_writes[slot] {
                Some(index)
                    if self.writes[usize::from(index)].state == WriteState::HeaderInFlight =>
                {
                    self.write_prepare_durable(storage, usize::from(index));
                }
                // A newer write of the slot started after the snapshot was taken.
                Some(_) => {}
                None => {
                    if self.slot_clean_once_written(slot) {
                        self.dirty.clear(slot);
                    }
                }
            }
        }
        if self.write_headers_wanted(sector) {
            self.write_headers(storage, sector);
        }
        if self.status == Status::Recovering || self.truncation != TruncatePhase::Idle {
            self.truncate_pump(storage);
        }
    }

    fn write_prepare_durable<S: Storage>(&mut self, storage: &mut S, index: usize) {
        let write = &mut self.writes[index];
        assert_eq!(write.state, WriteState::HeaderInFlight);
        assert_eq!(write.kind, WriteKind::Append);
        let slot = write.slot;
        let header = write.header;
        write.state = WriteState::Free;
        self.slot_writes[slot.0] = None;
        self.event_push(Event::PrepareDurable { op: header.op, checksum: header.checksum });

        let queued = self
            .writes
            .iter()
            .enumerate()
            .filter(|(_, write)| write.state == WriteState::Queued && write.slot == slot)
            .min_by_key(|(_, write)| write.sequence)
            .map(|(index, _)| index);
        match queued {
            Some(next) => {
                let message = self.writes[next].message.take().expect("a queued write's message");
                self.write_prepare_start(storage, next, message);
            }
            None => {
                // Every later write_prepare of this slot would still be queued.
                assert_eq!(self.headers[slot.0], header);
                self.dirty.clear(slot.0);
                self.faulty.clear(slot.0);
            }
        }
    }
}

/// The read path.
impl Journal {
    /// Reads the prepare (`op`, `checksum`) into `buffer` (unshared, `message_size_max` bytes at
    /// least). Emits `PrepareRead` with the message or the reason. A failed read of a prepare the
    /// journal holds as durable marks its slot faulty. A read of a slot being written may see its
    /// older contents: serve prepares in flight from memory.
    pub fn read_prepare<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        checksum: Checksum,
        buffer: Message,
    ) {
        assert_eq!(self.status, Status::Recovered);
        assert!(!self.failed);
        assert_eq!(buffer.references(), 1);
        assert!(buffer.buffer().len() as u64 >= self.context.message_size_max);
        self.assert_event_room();
        let slot = self.slot_for_op(op);
        let purpose = ReadPurpose::Caller;
        let index = self.read_acquire(ReadTarget::Prepare { slot, op, checksum, purpose });
        let known = &self.headers[slot.0];
        let length = if known.command == Command::Prepare as u8
            && known.op == op
            && known.checksum == checksum
        {
            sector_ceil(known.size as usize)
        } else {
            SECTOR_SIZE
        };
        self.read_prepare_submit(storage, index, buffer, 0, length);
    }

    fn read_acquire(&mut self, target: ReadTarget) -> usize {
        let index = self.reads.iter().position(|read| read.target.is_none());
        let index = index.expect("more than JOURNAL_IOPS_READ_MAX journal reads");
        self.reads[index] = Read { target: Some(target), length_read: 0 };
        index
    }

    fn read_prepare_submit<S: Storage>(
        &mut self,
        storage: &mut S,
        index: usize,
        buffer: Message,
        buffer_offset: usize,
        length: usize,
    ) {
        let Some(ReadTarget::Prepare { slot, .. }) = self.reads[index].target else {
            panic!("read {index} is not a prepare read");
        };
        assert_eq!(self.reads[index].length_read, buffer_offset);
        assert!((buffer_offset + length) as u64 <= self.context.message_size_max);
        self.reads[index].length_read = buffer_offset + length;
        let slot_offset = slot.0 as u64 * self.context.message_size_max;
        let request = IoRequest {
            token: IoToken { owner: IoOwner::JournalRead, index: index as u32 },
            kind: IoKind::Read,
            zone: Zone::WalPrepares,
            offset: self.layout.offset(Zone::WalPrepares, slot_offset + buffer_offset as u64),
            length,
            buffer_offset,
        };
        storage.submit(request, buffer);
    }

    /// How much more of a prepare to read, if its header (untrusted) is intact and says the
    /// prepare is longer than what was read.
    fn read_rest_length(&self, buffer: &Message, length_read: usize) -> Option<usize> {
        let header = Header::from_prefix(buffer.buffer())?;
        if !header.valid_checksum() {
            return None;
        }
        let size = header.size as usize;
        if size < HEADER_SIZE || size as u64 > self.context.message_size_max {
            return None;
        }
        let length_total = sector_ceil(size);
        (length_total > length_read).then(|| length_total - length_read)
    }

    /// A read completed: a header sector or a prepare for recovery, or a caller's prepare.
    pub fn read_complete<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        assert_eq!(completion.request.token.owner, IoOwner::JournalRead);
        let index = completion.request.token.index as usize;
        let target = self.reads[index].target.expect("a completion for a busy read");
        let length_read = self.reads[index].length_read;
        let (slot, op, checksum, purpose) = match target {
            ReadTarget::HeaderSector { sector } => {
                self.recover_headers_read(sector, &completion);
                self.reads[index].target = None;
                drop(completion);
                self.recover_pump(storage);
                return;
            }
            ReadTarget::Prepare { slot, op, checksum, purpose } => (slot, op, checksum, purpose),
        };
        let Completion { buffer, result, .. } = completion;
        if result.is_ok()
            && let Some(length) = self.read_rest_length(&buffer, length_read)
        {
            self.read_prepare_submit(storage, index, buffer, length_read, length);
            return;
        }
        self.reads[index].target = None;
        let entry = match result {
            Ok(()) => Entry::from_prepare(&buffer.buffer()[..length_read], &self.context, slot),
            Err(_) => Entry::Invalid(EntryInvalid::Io),
        };
        match purpose {
            ReadPurpose::Recovery => {
                self.recover_prepare_read(slot, &buffer, entry);
                drop(buffer);
                self.recover_pump(storage);
            }
            ReadPurpose::Caller => {
                let outcome = match result {
                    Err(error) => Err(ReadError::Io(error)),
                    Ok(()) => read_outcome(&entry, op, checksum),
                };
                self.read_prepare_complete(slot, op, checksum, buffer, outcome);
            }
        }
    }

    fn read_prepare_complete(
        &mut self,
        slot: Slot,
        op: Op,
        checksum: Checksum,
        buffer: Message,
        outcome: Result<(), ReadError>,
    ) {
        let result = match outcome {
            Ok(()) => Ok(buffer),
            Err(reason) => {
                drop(buffer);
                self.read_prepare_fault(slot, op, checksum);
                Err(reason)
            }
        };
        self.event_push(Event::PrepareRead { op, checksum, result });
    }

    /// Marks the slot faulty if the journal held (`op`, `checksum`) there as durable.
    fn read_prepare_fault(&mut self, slot: Slot, op: Op, checksum: Checksum) {
        let header = &self.headers[slot.0];
        let held = header.command == Command::Prepare as u8
            && header.op == op
            && header.checksum == checksum
            && !self.dirty.get(slot.0)
            && self.slot_writes[slot.0].is_none();
        if held {
            self.dirty.set(slot.0);
            self.faulty.set(slot.0);
        }
    }
}

fn read_outcome(entry: &Entry, op: Op, checksum: Checksum) -> Result<(), ReadError> {
    match entry {
        Entry::Invalid(reason) => Err(ReadError::Invalid(*reason)),
        Entry::Reserved => Err(ReadError::Reserved),
        Entry::Prepare(header) if header.op != op => Err(ReadError::WrongOp { found: header.op }),
        Entry::Prepare(header) if header.checksum != checksum => {
            Err(ReadError::WrongChecksum { found: header.checksum })
        }
        Entry::Prepare(_) => Ok(()),
    }
}

/// Recovery.
impl Journal {
    /// Starts recovery: reads every header sector and every prepare slot (at most
    /// `JOURNAL_IOPS_READ_MAX` reads in flight, prepares into buffers of `read_pool`), classifies
    /// each slot (module docs), applies the decisions (fix and cut write to disk, unless the
    /// journal is unusable) and then emits `Recovered`.
    pub fn recover<S: Storage>(
        &mut self,
        storage: &mut S,
        checkpoint_op: Op,
        replica_count: u8,
        read_pool: &MessagePool,
    ) {
        self.recover_start(storage, checkpoint_op, replica_count, read_pool, false);
    }

    /// Starts a read-only recovery, for a data file opened read-only: reads and classifies
    /// exactly like `recover` and fills the same report, but applies no decision and submits no
    /// write. Then emits `Recovered`, and the journal (`Status::Inspected`) takes no requests.
    pub fn inspect<S: Storage>(
        &mut self,
        storage: &mut S,
        checkpoint_op: Op,
        replica_count: u8,
        read_pool: &MessagePool,
    ) {
        self.recover_start(storage, checkpoint_op, replica_count, read_pool, true);
    }

    fn recover_start<S: Storage>(
        &mut self,
        storage: &mut S,
        checkpoint_op: Op,
        replica_count: u8,
        read_pool: &MessagePool,
        read_only: bool,
    ) {
        assert_eq!(self.status, Status::Init);
        assert!(replica_count >= 1 && usize::from(replica_count) <= REPLICAS_MAX);
        assert!(read_pool.buffer_size() as u64 >= self.context.message_size_max);
        assert!(read_pool.free_count() >= JOURNAL_IOPS_READ_MAX);
        assert!(storage.size() >= self.layout.file_size());
        self.status = Status::Recovering;
        self.recovery = Recovery {
            phase: RecoveryPhase::Reading,
            checkpoint_op,
            replica_count,
            read_only,
            sector_next: 0,
            slot_next: 0,
            read_pool: Some(read_pool.clone()),
        };
        self.recover_pump(storage);
    }

    fn recover_pump<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.status, Status::Recovering);
        if self.failed {
            return;
        }
        match self.recovery.phase {
            RecoveryPhase::Reading => self.recover_read_pump(storage),
            RecoveryPhase::WritingHeaders => self.recover_write_headers_pump(storage),
            RecoveryPhase::WritingPrepares => self.recover_write_prepares_pump(storage),
            RecoveryPhase::Done => unreachable!(),
        }
    }

    fn recover_read_pump<S: Storage>(&mut self, storage: &mut S) {
        let sector_count = self.sectors_writing.bit_count;
        while self.reads_busy() < JOURNAL_IOPS_READ_MAX {
            if self.recovery.sector_next < sector_count {
                let sector = self.recovery.sector_next;
                self.recovery.sector_next += 1;
                let buffer = self.header_pool.get();
                let index = self.read_acquire(ReadTarget::HeaderSector { sector });
                self.reads[index].length_read = SECTOR_SIZE;
                let request = IoRequest {
                    token: IoToken { owner: IoOwner::JournalRead, index: index as u32 },
                    kind: IoKind::Read,
                    zone: Zone::WalHeaders,
                    offset: self.layout.offset(Zone::WalHeaders, (sector * SECTOR_SIZE) as u64),
                    length: SECTOR_SIZE,
                    buffer_offset: 0,
                };
                storage.submit(request, buffer);
            } else if self.recovery.slot_next < self.slot_count() {
                let slot = Slot(self.recovery.slot_next);
                self.recovery.slot_next += 1;
                let pool = self.recovery.read_pool.as_ref().expect("recovery holds a read pool");
                let buffer = pool.get();
                let purpose = ReadPurpose::Recovery;
                let target =
                    ReadTarget::Prepare { slot, op: Op(0), checksum: Checksum(0), purpose };
                let index = self.read_acquire(target);
                self.read_prepare_submit(storage, index, buffer, 0, SECTOR_SIZE);
            } else {
                break;
            }
        }
        if self.reads_busy() == 0 {
            self.recover_slots(storage);
        }
    }

    fn recover_headers_read(&mut self, sector: usize, completion: &Completion) {
        assert_eq!(self.status, Status::Recovering);
        let bytes = completion.buffer.buffer();
        for entry in 0..JOURNAL_HEADERS_PER_SECTOR {
            let slot = sector * JOURNAL_HEADERS_PER_SECTOR + entry;
            // An unreadable sector reads as zeros, whose checksum fails.
            self.headers_redundant[slot] = match completion.result {
                Ok(()) => Header::read_from_bytes(&bytes[entry * HEADER_SIZE..][..HEADER_SIZE])
                    .unwrap_or_else(|_| Header::zeroed()),
                Err(_) => Header::zeroed(),
            };
        }
    }

    fn recover_prepare_read(&mut self, slot: Slot, buffer: &Message, entry: Entry) {
        assert_eq!(self.status, Status::Recovering);
        self.headers[slot.0] = match entry {
            Entry::Invalid(EntryInvalid::Io) => Header::zeroed(),
            _ => *Header::from_prefix(buffer.buffer()).expect("buffers are sector aligned"),
        };
        self.prepares_invalid[slot.0] = match entry {
            Entry::Invalid(reason) => Some(reason),
            Entry::Reserved | Entry::Prepare(_) => None,
        };
    }

    fn recover_redundant_entry(&self, slot: Slot) -> Entry {
        Entry::from_header(&self.headers_redundant[slot.0], &self.context, slot)
    }

    fn recover_prepare_entry(&self, slot: Slot) -> Entry {
        match self.prepares_invalid[slot.0] {
            Some(reason) => Entry::Invalid(reason),
            None => Entry::from_header(&self.headers[slot.0], &self.context, slot),
        }
    }

    /// The log-wide facts of the cases. A prepare that is cut for being beyond (@H) or under a
    /// header beyond (@I) is not counted in `op_max`, so that a second recovery, after the cut
    /// is written, finds the same head and decides the same.
    fn recover_context(&self) -> RecoveryContext {
        let op_prepare_max = op_prepare_max(self.recovery.checkpoint_op, self.context.slot_count);
        let beyond = |header: &Header| header.op > op_prepare_max;
        let op_max = (0..self.slot_count())
            .filter_map(|index| {
                let header = self.recover_redundant_entry(Slot(index));
                match (header, self.recover_prepare_entry(Slot(index))) {
                    (Entry::Prepare(header), _) if beyond(&header) => None,
                    (_, Entry::Prepare(prepare)) if !beyond(&prepare) => Some(prepare.op),
                    _ => None,
                }
            })
            .max();
        RecoveryContext { op_max, op_prepare_max, checkpoint_op: self.recovery.checkpoint_op }
    }

    /// Classifies every slot, applies the decisions in memory, and starts the writes.
    fn recover_slots<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.recovery.phase, RecoveryPhase::Reading);
        assert_eq!(self.reads_busy(), 0);
        assert_eq!(self.writes_busy(), 0);
        assert_eq!(self.dirty.count, self.slot_count());
        assert_eq!(self.faulty.count, self.slot_count());
        let context = self.recover_context();
        for index in 0..self.slot_count() {
            let header = self.recover_redundant_entry(Slot(index));
            let prepare = self.recover_prepare_entry(Slot(index));
            let case = recovery_case(&header, &prepare, &context);
            self.report.slots[index] = SlotReport {
                case,
                decision: case.decision(self.recovery.replica_count),
                header: header.summary(),
                prepare: prepare.summary(),
            };
        }
        self.recover_torn_prepares(&context);
        self.recover_report_totals(&context);
        if !self.report.usable || self.recovery.read_only {
            // Leave the disk as found, for the operator.
            self.recover_done();
            return;
        }
        for index in 0..self.slot_count() {
            self.recover_slot(Slot(index));
        }
        self.recovery.phase = RecoveryPhase::WritingHeaders;
        self.recover_pump(storage);
    }

    /// Marks cut_torn every slot whose prepare was torn while it was appended, if they can be
    /// truncated safely (see the module docs), from the cases already decided.
    fn recover_torn_prepares(&mut self, context: &RecoveryContext) {
        let Some((op_torn_min, op_torn_max)) = self.recover_torn_window(context) else {
            return;
        };
        assert!(op_torn_min <= op_torn_max);
        assert!(op_torn_max - op_torn_min < PIPELINE_PREPARE_QUEUE_MAX as u64);
        for index in 0..self.slot_count() {
            let op = self.recover_slot_op(Slot(index), context);
            if (op_torn_min..=op_torn_max).contains(&op) && self.recover_torn(Slot(index), op) {
                assert!(self.report.slots[index].decision.is_fault());
                self.report.slots[index].decision = Decision::CutTorn;
            }
        }
    }

    /// The lowest and highest op of the torn prepares to cut, if any: conditions 3 and 4 of
    /// cut_torn in the module docs.
    fn recover_torn_window(&self, context: &RecoveryContext) -> Option<(Op, Op)> {
        let pipeline = PIPELINE_PREPARE_QUEUE_MAX as u64;
        // Every op of the window has its own slot.
        assert!(self.context.slot_count > 2 * pipeline);
        let checkpoint_op = self.recovery.checkpoint_op;
        let op_head = context.op_max.unwrap_or(checkpoint_op);
        if op_head < checkpoint_op {
            return None;
        }
        assert!(op_head <= context.op_prepare_max);
        let window_min = (op_head + 1).saturating_sub(pipeline).max(checkpoint_op + 1);
        let window_max = (op_head + pipeline).min(context.op_prepare_max);
        let mut torn: Option<(Op, Op)> = None;
        for (index, report) in self.report.slots.iter().enumerate() {
            if !report.decision.is_fault() {
                continue;
            }
            let op = self.recover_slot_op(Slot(index), context);
            if (window_min..=window_max).contains(&op) && self.recover_torn(Slot(index), op) {
                torn = Some(torn.map_or((op, op), |(min, max)| (min.min(op), max.max(op))));
            } else if op > op_head {
                // This fault may be the true head: no torn-looking slot is certainly torn.
                return None;
            }
        }
        // The ops in flight at a crash fit in one pipeline.
        torn.filter(|(op_torn_min, op_torn_max)| *op_torn_max - *op_torn_min < pipeline)
    }

    /// Whether `slot`, whose op in this checkpoint's log is `op`, looks like a prepare torn
    /// while it was appended: conditions 1 and 2 of cut_torn in the module docs.
    fn recover_torn(&self, slot: Slot, op: Op) -> bool {
        let report = &self.report.slots[slot.0];
        if !matches!(report.case, Case::B | Case::C) {
            return false;
        }
        let header_older = match report.header {
            EntrySummary::Reserved => true,
            EntrySummary::Prepare { op: header_op, .. } => header_op < op,
            EntrySummary::Invalid(_) => false,
        };
        let prepare_corrupt = matches!(
            report.prepare,
            EntrySummary::Invalid(EntryInvalid::Checksum | EntryInvalid::BodyChecksum)
        );
        header_older && prepare_corrupt
    }

    /// The op `slot` holds in this checkpoint's log: the one op of
    /// `(checkpoint_op, op_prepare_max]` whose slot it is.
    fn recover_slot_op(&self, slot: Slot, context: &RecoveryContext) -> Op {
        let slot_count = self.context.slot_count;
        assert!((slot.0 as u64) < slot_count);
        assert!(context.op_prepare_max >= Op(slot_count));
        let distance =
            (context.op_prepare_max.get() % slot_count + slot_count - slot.0 as u64) % slot_count;
        let op = context.op_prepare_max - distance;
        assert_eq!(self.slot_for_op(op), slot);
        op
    }

    fn recover_report_totals(&mut self, context: &RecoveryContext) {
        let report = &mut self.report;
        report.checkpoint_op = self.recovery.checkpoint_op;
        report.op_prepare_max = context.op_prepare_max;
        report.replica_count = self.recovery.replica_count;
        report.totals();
    }

    /// Applies `slot`'s decision in memory; the writes follow.
    fn recover_slot(&mut self, slot: Slot) {
        let prepare = self.recover_prepare_entry(slot);
        let reserved = reserved_header(self.context.cluster, slot.0 as u64);
        let intact = match prepare {
            Entry::Prepare(header) => Some(header),
            Entry::Reserved => Some(reserved),
            Entry::Invalid(_) => None,
        };
        let sector = slot.0 / JOURNAL_HEADERS_PER_SECTOR;
        let (header, redundant, dirty, faulty) = match self.report.slots[slot.0].decision {
            Decision::Eql | Decision::Nil => {
                let header = intact.expect("a clean slot has an intact prepare");
                assert_eq!(self.headers_redundant[slot.0], header);
                (header, header, false, false)
            }
            Decision::Fix => {
                let header = intact.expect("a fixed slot has an intact prepare");
                self.sectors_needed.set(sector);
                (header, header, true, false)
            }
            // Keep the header-ring bytes as found (see "Never laundering a fault").
            Decision::Repair => (reserved, self.headers_redundant[slot.0], true, true),
            Decision::Cut | Decision::CutTorn => {
                self.sectors_needed.set(sector);
                if prepare != Entry::Reserved {
                    self.truncate.set(slot.0);
                }
                (reserved, reserved, true, false)
            }
            Decision::Unrecoverable => unreachable!("an unusable journal is not applied"),
        };
        self.headers[slot.0] = header;
        self.headers_redundant[slot.0] = redundant;
        if !dirty {
            self.dirty.clear(slot.0);
        }
        if !faulty {
            self.faulty.clear(slot.0);
        }
    }

    fn recover_write_headers_pump<S: Storage>(&mut self, storage: &mut S) {
        if self.write_headers_needed_pump(storage) {
            // Headers first: a crash before the prepares are truncated recovers to the same
            // decision (see the module docs).
            self.recovery.phase = RecoveryPhase::WritingPrepares;
            self.recover_write_prepares_pump(storage);
        }
    }

    fn recover_write_prepares_pump<S: Storage>(&mut self, storage: &mut S) {
        if self.write_truncates_pump(storage) {
            self.recover_done();
        }
    }

    /// Writes every sector of `sectors_needed` that is not being written, as far as buffers
    /// allow. Returns whether all of them are on disk.
    fn write_headers_needed_pump<S: Storage>(&mut self, storage: &mut S) -> bool {
        for sector in 0..self.sectors_needed.bit_count {
            if self.sectors_needed.get(sector) && !self.sectors_writing.get(sector) {
                if self.header_pool.free_count() == 0 {
                    break;
                }
                self.write_headers(storage, sector);
            }
        }
        self.sectors_writing.count == 0 && self.sectors_needed.count == 0
    }

    /// Writes a reserved header into the prepare ring of every slot of `truncate`, as far as
    /// writes and buffers allow. Returns whether all of them are on disk.
    fn write_truncates_pump<S: Storage>(&mut self, storage: &mut S) -> bool {
        assert_eq!(self.sectors_writing.count, 0);
        for slot in 0..self.slot_count() {
            if !self.truncate.get(slot) {
                continue;
            }
            if self.writes_busy() == JOURNAL_IOPS_WRITE_MAX || self.header_pool.free_count() == 0 {
                break;
            }
            self.truncate.clear(slot);
            let header = reserved_header(self.context.cluster, slot as u64);
            assert_eq!(self.headers[slot], header);
            let index = self.write_acquire(WriteKind::Truncate, Slot(slot), header);
            let mut buffer = self.header_pool.get();
            let bytes = buffer.buffer_mut_unique();
            bytes.fill(0);
            bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
            self.write_prepare_start(storage, index, buffer);
        }
        self.writes_busy() == 0 && self.truncate.count == 0
    }

    fn recover_done(&mut self) {
        assert_eq!(self.reads_busy(), 0);
        assert_eq!(self.writes_busy(), 0);
        assert_eq!(self.sectors_writing.count, 0);
        self.recovery.phase = RecoveryPhase::Done;
        self.recovery.read_pool = None;
        if self.recovery.read_only {
            // Nothing was applied: every slot is still dirty and faulty.
            assert_eq!(self.faulty.count, self.slot_count());
            self.status = Status::Inspected;
        } else {
            self.status = Status::Recovered;
        }
        if self.status == Status::Recovered && self.report.usable {
            assert_eq!(self.dirty.count, self.faulty.count);
            assert_eq!(self.faulty.count as u32, self.report.count(Decision::Repair));
        }
        self.event_push(Event::Recovered { usable: self.report.usable });
    }
}

/// Truncation after replay.
impl Journal {
    /// Truncates every entry beyond `op_head`, the head of the hash chain the replica's replay
    /// followed: each slot whose header is a prepare of a higher op (see "Truncating after
    /// replay" in the module docs). Like recovery's cut: reserved headers into the header ring
    /// first (whole sectors), then reserved headers into the prepare ring. Emits `Truncated`
    /// once every write is durable, at once if there is nothing to truncate. No other write
    /// may be issued until then.
    pub fn truncate_after<S: Storage>(&mut self, storage: &mut S, op_head: Op) {
        self.truncate_after_keeping(storage, op_head, |_| false);
    }

    /// `truncate_after`, except for the entries `keep` names (a replica installing a newer
    /// view's log keeps the intact entries that log holds above its head). Returns how many
    /// entries beyond `op_head` it kept.
    pub fn truncate_after_keeping<S: Storage>(
        &mut self,
        storage: &mut S,
        op_head: Op,
        keep: impl Fn(&Header) -> bool,
    ) -> u64 {
        assert_eq!(self.status, Status::Recovered);
        assert!(self.report.usable);
        assert!(!self.failed);
        assert_eq!(self.truncation, TruncatePhase::Idle);
        assert_eq!(self.writes_busy(), 0, "truncate_after with journal writes in flight");
        assert_eq!(self.sectors_writing.count, 0);
        assert_eq!(self.sectors_needed.count, 0);
        assert_eq!(self.truncate.count, 0);
        self.assert_event_room();
        let mut kept = 0;
        for index in 0..self.slot_count() {
            let header = &self.headers[index];
            if header.command == Command::Prepare as u8 && header.op > op_head {
                if keep(header) {
                    kept += 1;
                } else {
                    self.truncate_slot(Slot(index));
                }
            }
        }
        self.report.totals();
        assert!(kept > 0 || self.report.op_max.is_none_or(|op_max| op_max <= op_head));
        self.truncation = TruncatePhase::WritingHeaders;
        self.truncate_after_pump(storage);
        kept
    }

    /// Applies the truncation of `slot` in memory, and in the report as a cut; the writes
    /// follow. Both rings are overwritten, so a slot a failed read marked faulty is not anymore.
    fn truncate_slot(&mut self, slot: Slot) {
        assert!(self.slot_writes[slot.0].is_none());
        assert_eq!(self.headers[slot.0].command, Command::Prepare as u8);
        let reserved = reserved_header(self.context.cluster, slot.0 as u64);
        self.headers[slot.0] = reserved;
        self.headers_redundant[slot.0] = reserved;
        self.dirty.set(slot.0);
        self.faulty.clear(slot.0);
        self.truncate.set(slot.0);
        self.sectors_needed.set(slot.0 / JOURNAL_HEADERS_PER_SECTOR);
        self.report.slots[slot.0].decision = Decision::Cut;
    }

    /// A truncation write completed: recovery's, or `truncate_after`'s.
    fn truncate_pump<S: Storage>(&mut self, storage: &mut S) {
        if self.status == Status::Recovering {
            self.recover_pump(storage);
        } else {
            assert_ne!(self.truncation, TruncatePhase::Idle);
            self.truncate_after_pump(storage);
        }
    }

    fn truncate_after_pump<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.status, Status::Recovered);
        if self.failed {
            return;
        }
        if self.truncation == TruncatePhase::WritingHeaders
            && self.write_headers_needed_pump(storage)
        {
            // Headers first: a crash in between finds a reserved header over the prepare, @G,
            // and recovers the slot as it was, to be truncated again.
            self.truncation = TruncatePhase::WritingPrepares;
        }
        if self.truncation == TruncatePhase::WritingPrepares && self.write_truncates_pump(storage) {
            self.truncate_after_done();
        }
    }

    fn truncate_after_done(&mut self) {
        assert_eq!(self.writes_busy(), 0);
        assert_eq!(self.sectors_writing.count, 0);
        assert_eq!(self.sectors_needed.count, 0);
        assert_eq!(self.truncate.count, 0);
        // Only the faults recovery left (or a failed read found) remain dirty.
        assert_eq!(self.dirty.count, self.faulty.count);
        self.truncation = TruncatePhase::Idle;
        self.event_push(Event::Truncated);
    }
}

#[cfg(test)]
mod tests;
