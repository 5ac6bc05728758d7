//! Every limit of the replica, in one place, with compile-time checks of how they relate.
//!
//! A value here is either fixed for all builds (the sector and header sizes) or the default and
//! maximum of a per-cluster setting that `kimberlite format` stores in the superblock (the slot
//! count, `message_size_max`, the grid size). Buffers are sized from the maxima here, once, at
//! startup; nothing grows afterwards.

use static_assertions::const_assert;

/// The unit of every disk read and write: buffers, lengths and offsets are multiples of it.
/// `O_DIRECT` here needs only 512 bytes, but the physical block is 4 KiB, and smaller writes risk
/// a read-modify-write below us that can tear neighbouring data.
pub const SECTOR_SIZE: usize = 4096;

/// The size of every message header, on the wire and on disk.
pub const HEADER_SIZE: usize = 256;

/// The largest message (header plus body), and the size of one WAL prepare slot.
pub const MESSAGE_SIZE_MAX: usize = 1024 * 1024;

/// The smallest `message_size_max` a cluster may be formatted with (used by tests to keep
/// simulated disks small).
pub const MESSAGE_SIZE_MAX_MIN: usize = 3 * SECTOR_SIZE;

/// The largest message body.
pub const MESSAGE_BODY_SIZE_MAX: usize = MESSAGE_SIZE_MAX - HEADER_SIZE;

/// Redundant WAL headers packed in one sector of the `wal_headers` zone.
pub const JOURNAL_HEADERS_PER_SECTOR: usize = SECTOR_SIZE / HEADER_SIZE;

/// The default number of WAL slots (slot = op mod slot count).
pub const JOURNAL_SLOT_COUNT: usize = 1024;

/// The fewest WAL slots: four sectors' worth of redundant headers (at least two, so that one
/// torn sector can never destroy every redundant header; four, to hold more than four full
/// pipelines).
pub const JOURNAL_SLOT_COUNT_MIN: usize = 4 * JOURNAL_HEADERS_PER_SECTOR;

/// The most WAL slots a data file may have (bounds the in-memory slot tables).
pub const JOURNAL_SLOT_COUNT_MAX: usize = 8192;

/// Prepares the primary keeps in flight (written, replicated, not yet committed). It bounds
/// ops, not requests: the appends that queue behind a full pipeline become one packed op
/// (`append_packed`), so many small requests still keep the disk busy with a few large writes.
/// Measured before packing, 32 in flight did no better than 8 at 64 clients (5,100-5,300 against
/// 4,400-5,000 events/s), and a deeper pipeline means more, smaller packed ops and more I/O.
pub const PIPELINE_PREPARE_QUEUE_MAX: usize = 8;

/// Concurrent journal writes: one per prepare of a backup's pipeline, plus prepares being
/// repaired (written ahead of the chain).
pub const JOURNAL_IOPS_WRITE_MAX: usize = PIPELINE_BACKUP_MAX + 2 * PIPELINE_PREPARE_QUEUE_MAX;

/// Concurrent journal reads (recovery and repair).
pub const JOURNAL_IOPS_READ_MAX: usize = 8;

/// The largest reply to a write (`register`, `create_stream`, `append`): one sector, the size
/// of a session's slot in the client_replies zone and in memory. Bodies that would need a
/// larger reply are refused (`APPEND_BATCHES_MAX`, `CREATE_STREAMS_MAX`).
pub const REPLY_SIZE_MAX: usize = SECTOR_SIZE;

/// Streams one `create_stream` request may create: its reply, 8 bytes a stream, fits in
/// `REPLY_SIZE_MAX` with its header.
pub const CREATE_STREAMS_MAX: usize = (REPLY_SIZE_MAX - HEADER_SIZE) / 8;

/// Batches one `append` request may carry: its reply, 16 bytes a batch, fits in
/// `REPLY_SIZE_MAX` with its header.
pub const APPEND_BATCHES_MAX: usize = (REPLY_SIZE_MAX - HEADER_SIZE) / 16;

/// Reads or writes of the client_replies zone in flight (each a chunk of consecutive sessions'
/// reply sectors, one message buffer long), at open and at a checkpoint.
pub const CLIENT_REPLIES_IOS_MAX: usize = 2;

/// The most client sessions a data file may be formatted for (`format --clients-max`): it
/// sizes the superblock's session trailer (`SUPERBLOCK_SESSIONS_SIZE_MAX`), 384 KiB a copy.
pub const CLIENTS_MAX: usize = 8192;

/// Client sessions a data file keeps unless formatted otherwise: enough for a fleet of
/// application processes; each costs its reply sector on disk and in memory (4 KiB) and its
/// connection's small buffers (40 KiB).
pub const CLIENTS_DEFAULT: usize = 1024;

/// The size of one checkpointed client session (`ClientSessionRecord`).
pub const CLIENT_SESSION_RECORD_SIZE: usize = 48;

/// The most replicas in a cluster (2f + 1 with f = 3).
pub const REPLICAS_MAX: usize = 7;

/// Copies of the superblock, written one after another.
pub const SUPERBLOCK_COPIES: usize = 4;

/// Copies that must read back identical after an update before it counts as written.
pub const SUPERBLOCK_QUORUM_VERIFY: usize = 3;

/// Copies that must agree at open. Write quorum plus open quorum exceed the copy count, so an
/// open always sees the newest completed update.
pub const SUPERBLOCK_QUORUM_OPEN: usize = 2;

/// The size of a superblock copy's header: two sectors. A copy is its header and then the
/// session trailer (one `ClientSessionRecord` per session of `clients_max`, whose checksum the
/// header holds), written in one write (a torn copy fails a checksum, and the other copies
/// stand in).
pub const SUPERBLOCK_HEADER_SIZE: usize = 2 * SECTOR_SIZE;

/// The most bytes a copy's session trailer takes: `CLIENTS_MAX` records, in whole sectors.
pub const SUPERBLOCK_SESSIONS_SIZE_MAX: usize =
    (CLIENTS_MAX * CLIENT_SESSION_RECORD_SIZE).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;

/// The distance between two copies: the largest copy. A copy's place must not depend on the
/// configuration, which is only known once a copy has been read.
pub const SUPERBLOCK_COPY_SIZE: usize = SUPERBLOCK_HEADER_SIZE + SUPERBLOCK_SESSIONS_SIZE_MAX;

/// The bytes a copy of a data file formatted for `clients_max` sessions takes.
pub const fn superblock_copy_size(clients_max: usize) -> usize {
    let sessions = clients_max * CLIENT_SESSION_RECORD_SIZE;
    SUPERBLOCK_HEADER_SIZE + sessions.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
}

/// Log-suffix headers the superblock keeps for view changes (the pipeline plus the head).
pub const VIEW_HEADERS_MAX: usize = PIPELINE_PREPARE_QUEUE_MAX + 1;

/// Grid chunk reads a replica serves to syncing peers at once, and chunk writes a syncing
/// replica keeps in flight (state sync).
pub const SYNC_READS_MAX: usize = 4;
pub const SYNC_WRITES_MAX: usize = 8;

/// Headers of the log's suffix that a do_view_change or start_view carries: more than the
/// uncommitted ops a log can hold (`PIPELINE_PREPARE_QUEUE_MAX`), so that they always reach
/// back to a committed op, and few enough to fit the smallest message.
pub const VIEW_CHANGE_HEADERS_MAX: usize = 4 * PIPELINE_PREPARE_QUEUE_MAX;

/// The size of a grid block (events and checkpointed tables).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Grid blocks the background scrubber reads per second, at most: enough to read a default
/// 1 GiB grid (2,048 blocks) about every 9 minutes, little next to the disk's bandwidth (2 MiB/s).
pub const GRID_SCRUB_BLOCKS_PER_SECOND: u64 = 4;

/// Ticks between the starts of two scrubber block reads.
pub const GRID_SCRUB_BLOCK_TICKS: u64 = 1000 / TICK_MS / GRID_SCRUB_BLOCKS_PER_SECOND;

/// Grid blocks found bad (at open, by a read, by the scrubber) that wait to be fetched again
/// from a peer; one is fetched at a time, and a block found bad while the queue is full is
/// found again later.
pub const GRID_REPAIRS_MAX: usize = 8;

/// Chunk reads the scrubber keeps in flight. (Grid repair gathers a fetched block in a
/// block-sized buffer of its own and writes it whole.)
pub const GRID_SCRUB_READS_MAX: usize = 4;

/// The default grid size for `kimberlite format`.
pub const GRID_SIZE_DEFAULT: u64 = 1024 * 1024 * 1024;

/// The largest grid a data file may have (16 TiB).
pub const GRID_SIZE_MAX: u64 = 16 * 1024 * 1024 * 1024 * 1024;

/// Blocks in the largest grid.
pub const GRID_BLOCKS_MAX: u64 = GRID_SIZE_MAX / BLOCK_SIZE as u64;

/// Streams a data file holds unless formatted otherwise (`format --streams-max`). Each costs
/// its entry and skip-list frontier in memory (440 bytes on the default grid) and the same in
/// the grid's reserve for the streams table, which every checkpoint writes whole: at 1,000,000
/// streams that is 440 MB of memory and 420 MiB of a 1 GiB grid, written at every checkpoint.
pub const STREAMS_DEFAULT: u32 = 65_536;

/// The most streams a data file may be formatted for: a checkpoint's root must list the blocks
/// of the largest streams table in the largest grid (about 9.6 million streams fit;
/// `Config::invalid` checks it), and the table's memory grows with it (about 3.5 GB at this
/// limit on the default grid).
pub const STREAMS_MAX: u32 = 1 << 23;

/// The length of one tick: every protocol timeout counts ticks.
pub const TICK_MS: u64 = 10;

/// The io_uring submission queue size.
pub const IO_ENTRIES: u32 = 256;

/// In-flight io_uring disk operations a replica can have.
pub const IO_OPERATIONS_DISK_MAX: usize = 512;

/// In-flight io_uring operations of all kinds a replica can have: the disk's, and the bus's (its
/// accepts, and per connection a receive and a send, or a connect, or a close) for the most
/// clients a data file may be formatted for. The ring is set up before the data file's
/// configuration is read; a slot costs a few dozen bytes.
pub const IO_OPERATIONS_MAX: usize = IO_OPERATIONS_DISK_MAX
    + ACCEPTS_IN_FLIGHT_MAX
    + 2 * connections_max(CLIENTS_MAX)
    + 1
    + METRICS_CONNECTIONS_MAX;

/// Scrapes the metrics endpoint serves at once (each holds one operation in the ring, beside
/// the endpoint's one accept); a scraper beyond them waits in the listen backlog.
pub const METRICS_CONNECTIONS_MAX: usize = 4;

/// The buffer of one metrics connection: its request is received into it, then the response
/// rendered over it.
pub const METRICS_BUFFER_SIZE: usize = 64 * 1024;

/// Ticks a metrics connection may take to send its request (1 s) before it is closed.
pub const METRICS_REQUEST_TICKS_MAX: u64 = 1_000 / TICK_MS;

/// Ticks from a metrics connection's accept until its response must have been sent (5 s): a
/// scraper that does not read its response is closed, so it cannot hold a connection.
pub const METRICS_RESPONSE_TICKS_MAX: u64 = 5_000 / TICK_MS;

/// Ticks after which a request timed for the metrics and never answered by this replica is
/// forgotten (60 s): it was dropped, or its client went to another replica.
pub const REQUEST_TIMING_EXPIRY_TICKS: u64 = 60_000 / TICK_MS;

/// Buckets of a latency histogram: upper bounds in microseconds, each about 2.5 times the last
/// (Prometheus's `le`, in seconds, is written from them); above the last, only `+Inf`.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// Accepts the message bus keeps in the ring at once, so that a crowd of clients connecting
/// together is taken in a few turns of the event loop.
pub const ACCEPTS_IN_FLIGHT_MAX: usize = 64;

/// Completions drained from the ring in one go before any is dispatched.
pub const IO_COMPLETIONS_BATCH_MAX: usize = 256;

/// Bytes written by one `format` write, and how many such writes are in flight. The disk
/// peaks with 2 to 4 MiB in flight (see the machine measurements in `docs/`).
pub const FORMAT_WRITE_SIZE: usize = 1024 * 1024;
pub const FORMAT_WRITES_IN_FLIGHT: usize = 4;

/// The wire and disk protocol version carried by every header.
pub const PROTOCOL_VERSION: u16 = 8;

/// The data-file format version carried by the superblock.
pub const SUPERBLOCK_VERSION: u16 = 8;

/// Ops between checkpoints for a journal of `slot_count` slots. A checkpoint must be durable
/// before the ring wraps over the ops it covers, so a replica takes no prepare beyond its
/// checkpoint op plus `slot_count` (`op_prepare_max`); the headroom is what it may take past
/// the checkpoint trigger while it checkpoints. At least a full pipeline on each side of the
/// trigger; where the journal is large enough, a backup's whole pipeline
/// (`PIPELINE_BACKUP_MAX`): with only 2 * P, a backup that checkpointed under load (3 ms, 15 ops
/// at 64 clients) dropped the prepares beyond the window and fell out of the chain for good.
pub const fn checkpoint_interval_ops(slot_count: u64) -> u64 {
    let pipelines = 2 * PIPELINE_PREPARE_QUEUE_MAX as u64;
    let backup = PIPELINE_BACKUP_MAX as u64;
    let headroom = if backup < slot_count / 8 { backup } else { slot_count / 8 };
    slot_count - if headroom > pipelines { headroom } else { pipelines }
}

// The replica: queues, the pipeline, repair, and its timeouts (in ticks of `TICK_MS`).

// Limits that grow with the client sessions a data file was formatted for (`clients_max`): the
// replica sizes its tables from them at startup.

/// Messages the replica may have queued for the bus at once: a reply to every client, a
/// pipeline to the peers, and some.
pub const fn outbox_max(clients_max: usize) -> usize {
    clients_max + 2 * PIPELINE_PREPARE_QUEUE_MAX + 8
}

/// Requests waiting for room in the pipeline: one per client.
pub const fn request_queue_max(clients_max: usize) -> usize {
    clients_max
}

/// Queued requests in full-size buffers (larger than a small one) at once; a large request
/// beyond this gets a busy answer. Large requests are not packed together, so a deeper queue of
/// them adds latency, not throughput: 64 clients of 1 MiB batches queue without a busy answer
/// (a cap of 16 turned 32 such clients into a storm of retries).
pub const REQUEST_QUEUE_LARGE_MAX: usize = 64;

/// Prepares a backup keeps in memory above what it executed. The primary keeps at most
/// `PIPELINE_PREPARE_QUEUE_MAX` uncommitted, and a backup learns of commits a pipeline later,
/// so a backup that keeps up holds up to twice that; the rest is slack for a backup whose disk
/// or CPU stalls for a moment under load (a few milliseconds on a shared machine). A backup
/// whose pipeline is full drops the next prepare and must then fetch every later op through
/// repair: with only 2 * P of room, 64 closed-loop clients knocked a backup out of the chain
/// within seconds, and it state-synced again and again.
pub const PIPELINE_BACKUP_MAX: usize = 8 * PIPELINE_PREPARE_QUEUE_MAX;

/// Ticks before the primary sends a prepare again to backups that have not acknowledged it.
pub const PREPARE_TIMEOUT_TICKS: u64 = 25;

/// Ticks between commit heartbeats when nothing changes. They are what tells backups that
/// their primary is alive (`NORMAL_HEARTBEAT_TIMEOUT_TICKS`).
pub const COMMIT_HEARTBEAT_TICKS: u64 = 25;

/// Ticks between two repair requests of a backup that lacks prepares.
pub const REPAIR_TIMEOUT_TICKS: u64 = 1;

/// Ticks after which the primary stops waiting for a backup it has not heard from.
pub const BACKUP_LIVENESS_TICKS: u64 = 50;

/// Ticks between the pings a backup sends the primary (so it counts as live when idle).
pub const PING_TICKS: u64 = 10;

/// Consecutive ops one repair request asks for. Repair traffic is bounded by this window per
/// tick, so a lagging backup cannot flood the primary.
pub const REPAIR_WINDOW_MAX: usize = PIPELINE_PREPARE_QUEUE_MAX;

/// Ops one repair request asks for: no more than a peer serves from its WAL at once (it keeps
/// one of its journal reads for its own commits), so that a whole window arrives and the next
/// is asked for at once.
pub const REPAIR_REQUEST_OPS_MAX: usize = if REPAIR_WINDOW_MAX < JOURNAL_IOPS_READ_MAX - 1 {
    REPAIR_WINDOW_MAX
} else {
    JOURNAL_IOPS_READ_MAX - 1
};

// View changes (ticks).

/// Ticks a backup waits to hear from its primary before it votes to leave the view (1 s: four
/// commit heartbeats in a row lost or late), so that a cluster replaces a dead primary within
/// about 1.5 s with the jitter.
pub const NORMAL_HEARTBEAT_TIMEOUT_TICKS: u64 = 100;

/// Ticks a view change may take before the replica votes for the next view.
pub const VIEW_CHANGE_TIMEOUT_TICKS: u64 = 300;

/// Ticks between resends of start_view_change, do_view_change and request_start_view.
pub const VIEW_CHANGE_MESSAGE_TICKS: u64 = 20;

/// Ticks a primary's oldest uncommitted prepare may wait before the primary abdicates.
pub const PRIMARY_ABDICATE_TICKS: u64 = 300;

/// Ticks a vote to leave a view counts for (5 s).
pub const VOTE_WINDOW_TICKS: u64 = 500;

/// The most a timeout is lengthened by, at random, so that replicas do not time out together.
pub const TIMEOUT_JITTER_TICKS: u64 = 50;

/// Backoffs after which a retried timeout stops lengthening: at most 2^2 = 4 times its base
/// (plus jitter), so that the primary's prepare resends stay well inside
/// `PRIMARY_ABDICATE_TICKS`.
pub const TIMEOUT_BACKOFF_ATTEMPTS_MAX: u32 = 2;

/// Ticks between the view queries of a rejoining replica.
pub const REJOIN_QUERY_TICKS: u64 = 20;

// State sync and grid repair.

/// Chunks one block is fetched in, at most (the smallest message holds a sector of data).
pub const SYNC_CHUNKS_PER_BLOCK_MAX: usize = BLOCK_SIZE / SECTOR_SIZE;

/// Chunks asked for in one `request_blocks`.
pub const SYNC_CHUNKS_PER_REQUEST_MAX: usize = 8;

/// Ticks between requests of a syncing replica.
pub const SYNC_REQUEST_TICKS: u64 = 2;

/// Requests for a block's chunks that the one peer it is taken from may leave unanswered
/// before the next peer is asked (`ChunkFetch`), which drops the chunks received and starts
/// the block over: 64 requests, 128 ticks (1.28 s). Requests go every `SYNC_REQUEST_TICKS`,
/// far more often than a round trip (a busy source also drops what its reads in flight cannot
/// take): at 4, a source a round trip of 8 ticks away, or busy for as long, counted as gone,
/// and a block near its last chunks was thrown away again and again (seed
/// 8443291891475368597: a rejoining replica never finished state sync).
pub const BLOCK_SOURCE_UNANSWERED_MAX: u32 = 64;

/// Ticks between two requests for the block being repaired.
pub const GRID_REPAIR_REQUEST_TICKS: u64 = 2;

/// Times an open may fetch a block of its checkpoint again, beyond one fetch per block, before
/// it gives up: a peer's copy that passes its checks but still does not open is not a fault a
/// fetch can fix.
pub const GRID_REPAIRS_OPEN_MAX: u64 = 16;

/// Repair attempts in a row that go to the same replica before the next one is tried.
pub const REPAIR_WINDOW_ROTATE: u64 = 8;

// The journal.

/// Events the journal can hold before the caller drains them: one per write (durable or
/// failed), one per header-sector write (failed), one per read, and `Recovered` or `Truncated`.
pub const JOURNAL_EVENTS_MAX: usize = 2 * JOURNAL_IOPS_WRITE_MAX + JOURNAL_IOPS_READ_MAX + 1;

/// Completions the blocking helpers take from the storage in one `poll`.
pub const JOURNAL_COMPLETIONS_MAX: usize = 2 * JOURNAL_IOPS_WRITE_MAX + JOURNAL_IOPS_READ_MAX;

// Connections and the message pool.

/// Connections a replica keeps: one per peer replica, its clients, and one for a newcomer that
/// has not said who it is yet (so that a lower replica reconnecting, or a client, finds room
/// while the old connection it replaces is still open).
pub const fn connections_max(clients_max: usize) -> usize {
    REPLICAS_MAX + clients_max
}

/// Messages queued for sending on one connection.
pub const CONNECTION_SEND_QUEUE_MAX: usize = 4;

/// Messages queued for sending to one peer replica: a pipeline of prepares on top.
pub const REPLICA_SEND_QUEUE_MAX: usize = PIPELINE_PREPARE_QUEUE_MAX + CONNECTION_SEND_QUEUE_MAX;

/// The size of a small message buffer: a header and a small body (a client's request of a few
/// events, a write's reply, an acknowledgement). Client connections live on these
/// (`crate::vsr::message_pool`).
pub const MESSAGE_SIZE_SMALL: usize = 2 * SECTOR_SIZE;

/// Client connections that may hold a full-size receive buffer at once (receiving a request
/// larger than a small buffer); others wait for one.
pub const CLIENT_RECEIVES_LARGE_MAX: usize = 8;

/// Ticks a client may take to send the rest of a message that holds one of the
/// `CLIENT_RECEIVES_LARGE_MAX` full-size receive buffers (5 seconds), before its connection is
/// closed: a client that stalls half-way must not keep others' large requests waiting.
pub const RECEIVE_LARGE_TICKS_MAX: u64 = 5_000 / TICK_MS;

/// Full-size messages (read replies) queued to clients at once; beyond this they are dropped
/// and the client reads again.
pub const CLIENT_SENDS_LARGE_MAX: usize = 2 * GRID_READS_MAX;

/// Full-size messages in the bus's inbox at once (the rest of the inbox takes small ones).
pub const INBOX_LARGE_MAX: usize = 2 * REPLICAS_MAX + CLIENT_RECEIVES_LARGE_MAX;

/// Full-size messages in the replica's outbox at once: a pipeline of prepares to every peer,
/// and some. Beyond this they are dropped, as when the outbox is full.
pub const OUTBOX_LARGE_MAX: usize = (REPLICAS_MAX - 1) * PIPELINE_PREPARE_QUEUE_MAX + 16;

/// Messages a single step may build before any is released.
pub const MESSAGES_SLACK: usize = 4;

// The client session core.

/// Quick retries of a primary that answers it is between views, per request.
pub const PRIMARY_BUSY_RETRIES_MAX: u32 = 32;

// The superblock.

/// How many times an update rewrites the copies that did not read back identical before it
/// settles for the verify quorum or fails.
pub const SUPERBLOCK_UPDATE_REWRITES_MAX: u8 = 2;

// The event store.

/// The largest event payload. It bounds the space a block leaves unused when the next event
/// does not fit (at most 1/8 of a block), and with it the blocks one commit can seal. A cluster
/// with a small `message_size_max` has a lower effective maximum: an event must fit in one
/// read reply (see `Limits::event_size_max`).
pub const EVENT_SIZE_MAX: u32 = 64 * 1024;

/// The longest a read may ask a replica to hold it until an event commits (`wait_ms` of
/// read_stream and read_log): a subscriber asks again after that.
pub const READ_WAIT_MS_MAX: u32 = 60_000;

/// Held reads (parked, or linearizable ones confirmed) answered in one step, at most: each
/// reply takes a full-size buffer, and a thousand subscribers woken by one commit would
/// overflow the outbox and the bus's queues. The rest are answered on the next steps.
pub const READS_WAKE_PER_STEP_MAX: usize = 8;

/// Skip-list levels. A block's ordinal (in the log, or among one stream's blocks) never exceeds
/// the number of blocks in the largest grid, 2^25, so an ordinal has at most 26 significant bits
/// and a block at most 26 skip pointers.
pub const SKIP_LEVELS_MAX: usize = 26;

/// Reads in progress at once. Each owns one block buffer for its whole life.
pub const GRID_READS_MAX: usize = 8;

/// Block buffers beyond the worst case of one commit, so that a commit may start while the
/// blocks sealed by earlier commits are still being written.
pub const GRID_WRITES_PIPELINE: usize = 4;

// The message bus (the io_uring driver).

/// Ticks between two log lines about invalid peer messages.
pub const INVALID_LOG_TICKS: u64 = 1_000;

/// Connections waiting in the kernel to be accepted: room for every client to connect at once
/// (the kernel caps it at `net.core.somaxconn`, 4096 by default). Beyond the backlog the kernel
/// drops a SYN, and the client's connect waits a second for its retransmission: with a backlog
/// of 64, 1,024 clients starting together took 28 s to connect.
pub const fn listen_backlog(clients_max: usize) -> i32 {
    connections_max(clients_max) as i32
}

/// Messages received and not yet taken by the driver: one per connection.
pub const fn inbox_max(clients_max: usize) -> usize {
    connections_max(clients_max)
}

/// Buffers the bus leaves in the pool for the replica: it takes a receive buffer only while
/// more than this many are free.
pub const BUS_POOL_RESERVE: usize = MESSAGES_SLACK;

/// Ticks one send may stay in flight before its peer counts as stuck (5 seconds).
pub const SEND_STALL_TICKS_MAX: u64 = 5_000 / TICK_MS;

/// The largest kernel socket buffer the bus asks for, each way.
pub const SOCKET_BUFFER_SIZE_MAX: usize = 4 * 1024 * 1024;

/// The shortest wait before dialing a replica again (50 ms)...
pub const RECONNECT_DELAY_TICKS_MIN: u64 = 50 / TICK_MS;

/// ...and the longest, which the exponential backoff reaches after a few failures (1 s).
pub const RECONNECT_DELAY_TICKS_MAX: u64 = 1_000 / TICK_MS;

/// Ticks an accepted connection may stay open without a valid message saying who it is (1 s):
/// clients and replicas send one as soon as they connect.
pub const IDENTIFY_TICKS_MAX: u64 = 1_000 / TICK_MS;

/// Ticks a replica stopped by SIGTERM or SIGINT waits for its disk I/O in flight to land (1 s).
pub const STOP_DRAIN_TICKS: u64 = 1_000 / TICK_MS;

/// The shortest interval between two log lines about connections shed (10 s).
pub const SHED_LOG_TICKS: u64 = 10_000 / TICK_MS;

/// Lines of one log event written per `LOG_WINDOW_MS`; beyond them, lines are counted and the
/// count reported (a client of another cluster retrying in a loop must not flood the log).
pub const LOG_LINES_PER_WINDOW_MAX: u64 = 10;

/// The window of `LOG_LINES_PER_WINDOW_MAX` (1 s).
pub const LOG_WINDOW_MS: u64 = 1_000;

/// The longest log line, in bytes; longer ones are cut.
pub const LOG_LINE_SIZE_MAX: usize = 512;

const_assert!(SECTOR_SIZE.is_power_of_two());
const_assert!(VIEW_CHANGE_HEADERS_MAX > PIPELINE_PREPARE_QUEUE_MAX + 1);
const_assert!((VIEW_CHANGE_HEADERS_MAX + 1) * HEADER_SIZE <= MESSAGE_SIZE_MAX_MIN);
const_assert!(SECTOR_SIZE.is_multiple_of(HEADER_SIZE));
const_assert!(MESSAGE_SIZE_MAX.is_multiple_of(SECTOR_SIZE));
const_assert!(MESSAGE_SIZE_MAX_MIN.is_multiple_of(SECTOR_SIZE));
const_assert!(MESSAGE_SIZE_MAX_MIN <= MESSAGE_SIZE_MAX);
const_assert!(MESSAGE_SIZE_MAX <= u32::MAX as usize);
const_assert!(JOURNAL_SLOT_COUNT.is_multiple_of(JOURNAL_HEADERS_PER_SECTOR));
const_assert!(JOURNAL_SLOT_COUNT >= JOURNAL_SLOT_COUNT_MIN);
const_assert!(JOURNAL_SLOT_COUNT <= JOURNAL_SLOT_COUNT_MAX);
const_assert!(JOURNAL_SLOT_COUNT_MAX.is_multiple_of(JOURNAL_HEADERS_PER_SECTOR));
const_assert!(JOURNAL_SLOT_COUNT_MIN > 4 * PIPELINE_PREPARE_QUEUE_MAX);
const_assert!(checkpoint_interval_ops(JOURNAL_SLOT_COUNT_MIN as u64) > 0);
// A checkpoint reuses the blocks its predecessor's predecessor superseded once its op
// committed, which proves a replication quorum holds its predecessor durable only if the
// interval exceeds the headroom (`state_machine::checkpoint`).
const_assert!(
    2 * checkpoint_interval_ops(JOURNAL_SLOT_COUNT_MIN as u64) > JOURNAL_SLOT_COUNT_MIN as u64
);
const_assert!(2 * checkpoint_interval_ops(JOURNAL_SLOT_COUNT as u64) > JOURNAL_SLOT_COUNT as u64);
const_assert!(JOURNAL_IOPS_WRITE_MAX > PIPELINE_BACKUP_MAX);
const_assert!(REPLICAS_MAX <= u8::MAX as usize);
const_assert!(CLIENTS_MAX >= 1);
const_assert!(MESSAGE_SIZE_SMALL.is_multiple_of(SECTOR_SIZE));
const_assert!(MESSAGE_SIZE_SMALL < MESSAGE_SIZE_MAX_MIN);
const_assert!(REPLY_SIZE_MAX <= MESSAGE_SIZE_SMALL);
const_assert!(SUPERBLOCK_QUORUM_VERIFY + SUPERBLOCK_QUORUM_OPEN > SUPERBLOCK_COPIES);
const_assert!(SUPERBLOCK_QUORUM_VERIFY <= SUPERBLOCK_COPIES);
const_assert!(SUPERBLOCK_HEADER_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(SUPERBLOCK_COPY_SIZE == superblock_copy_size(CLIENTS_MAX));
const_assert!(CLIENTS_DEFAULT <= CLIENTS_MAX);
const_assert!(STREAMS_DEFAULT <= STREAMS_MAX);
const_assert!(STREAMS_MAX < u32::MAX);
const_assert!(BLOCK_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(GRID_SCRUB_BLOCK_TICKS >= 1);
const_assert!((PREPARE_TIMEOUT_TICKS << TIMEOUT_BACKOFF_ATTEMPTS_MAX) * 2 < PRIMARY_ABDICATE_TICKS);
const_assert!(GRID_SCRUB_BLOCKS_PER_SECOND * (BLOCK_SIZE as u64) <= 4 * 1024 * 1024);
const_assert!(GRID_REPAIRS_MAX >= 1);
const_assert!(GRID_SIZE_DEFAULT.is_multiple_of(BLOCK_SIZE as u64));
const_assert!(GRID_SIZE_MAX.is_multiple_of(BLOCK_SIZE as u64));
const_assert!(FORMAT_WRITE_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(FORMAT_WRITES_IN_FLIGHT < IO_OPERATIONS_MAX);
const_assert!(IO_COMPLETIONS_BATCH_MAX <= IO_OPERATIONS_MAX);
const_assert!((IO_ENTRIES as usize) <= IO_OPERATIONS_MAX);
