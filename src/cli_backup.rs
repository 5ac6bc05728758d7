//! `kimberlite export` and `kimberlite import`: a cluster's committed log to a file and back,
//! with every event's stream, offset, position, timestamp, type, metadata, data and chain.
//!
//! An export file is a `FileHead`, then import batches exactly as an `import` request carries
//! them (`ImportBatch` and its events: consecutive events of one stream committed with one
//! timestamp), then a `FileTail`, whose first 8 bytes are zero where a batch would name its
//! stream. The export checks every event it reads against its stream's chain (from the seed
//! that `stream_info`'s tenant gives) before it writes it; the import sends the batches in
//! order, and the cluster appends each only if it chains to the checksum it carries, at the
//! position and offset it names: the imported log is the exported one, chains included. The
//! import reads the whole file once before it sends anything, checking its structure and its
//! tail's counts and checksum, so that a truncated or damaged file imports nothing. Both then
//! compare each stream's chain and length with the cluster's. The export covers the log up to
//! its end when the export's first read was served.
//!
//! Streams that hold no event are not in the log, so not in the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::arguments::{Arguments, parse_addresses};
use crate::client::Client;
use crate::constants::{APPEND_BATCHES_MAX, MESSAGE_SIZE_MAX};
use crate::state_machine::types::{
    AppendResult, Event, EventRecord, ImportBatch, ImportEncoder, ReadLog, ReadReplyHeader,
    ResultCode, StreamInfo, StreamInfoReply, chain_next, chain_seed, record_next,
};
use crate::vsr::header::{Checksum, ChecksumBytes, ClusterId, Operation, checksum};

const FILE_MAGIC: [u8; 8] = *b"KIMBLOG\0";
const FILE_VERSION: u32 = 1;

/// Events one read of the export asks for.
const EXPORT_READ_COUNT_MAX: u32 = 8_192;

/// The start of an export file.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct FileHead {
    magic: [u8; 8],
    version: u32,
    reserved: u32,
    /// The cluster exported (an import may go to any).
    cluster: u64,
    /// When the export started, in nanoseconds since the epoch.
    exported_at_ns: u64,
}

/// The end of an export file: what it holds, for the import to check it read all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct FileTail {
    /// Zero: no batch names stream 0.
    end: u64,
    events: u64,
    batches: u64,
    streams: u64,
    /// A checksum chained over every batch's bytes, in order.
    batches_checksum: ChecksumBytes,
    /// Zero: the tail is as long as a batch head, which the import reads it as first.
    reserved: [u8; 16],
}

static_assertions::assert_eq_size!(FileTail, ImportBatch);

/// Where a stream stands, as the export or the import has seen it.
#[derive(Clone, Copy, Debug)]
struct StreamState {
    tenant: u64,
    offset_next: u64,
    chain: Checksum,
}

pub fn command_export(arguments: &[String]) -> Result<(), String> {
    let (client, cluster, path) = connect(arguments)?;
    let started = Instant::now();
    let file = File::create_new(&path).map_err(|error| format!("{path}: {error}"))?;
    let mut export = Export::new(client, BufWriter::new(file));
    export.cluster = cluster;
    let tail = export.run().map_err(|error| format!("{path}: {error}"))?;
    let file = export.output.into_inner().map_err(|error| format!("{path}: {error}"))?;
    file.sync_all().map_err(|error| format!("{path}: {error}"))?;
    let bytes = file.metadata().map_err(|error| format!("{path}: {error}"))?.len();
    let what = format!("to {path} ({bytes} bytes)");
    summary("exported", &tail, &what, bytes, started, "every event chained");
    Ok(())
}

/// The line export and import end with: what moved, and how fast.
fn summary(verb: &str, tail: &FileTail, what: &str, bytes: u64, started: Instant, checked: &str) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{verb} {} events of {} streams in {} batches {what} in {seconds:.2} s: {:.0} events/s, \
         {:.1} MiB/s; {checked}",
        tail.events,
        tail.streams,
        tail.batches,
        tail.events as f64 / seconds,
        bytes as f64 / seconds / f64::from(1 << 20),
    );
}

pub fn command_import(arguments: &[String]) -> Result<(), String> {
    let (client, _, path) = connect(arguments)?;
    let started = Instant::now();
    let file = File::open(&path).map_err(|error| format!("{path}: {error}"))?;
    let bytes = file.metadata().map_err(|error| format!("{path}: {error}"))?.len();
    let mut import = Import::new(client, BufReader::new(file));
    let tail = import.run().map_err(|error| format!("{path}: {error}"))?;
    let checked = "every stream's chain matches the export";
    summary("imported", &tail, &format!("from {path}"), bytes, started, checked);
    Ok(())
}

/// The client the arguments name, and the file's path.
fn connect(arguments: &[String]) -> Result<(Client, ClusterId, String), String> {
    let arguments = Arguments::parse(arguments, &["addresses", "cluster"])?;
    let addresses: Vec<SocketAddr> = parse_addresses(arguments.flag_required("addresses")?)?;
    let cluster: u64 = arguments.integer("cluster")?;
    let [path] = &arguments.positionals[..] else {
        return Err("expects one FILE".to_string());
    };
    let client = Client::new(ClusterId(cluster), &addresses, MESSAGE_SIZE_MAX);
    Ok((client, ClusterId(cluster), path.clone()))
}

/// Chains `checksum` (of a batch's bytes) onto `running`.
fn checksum_chain(running: Checksum, batch: &[u8]) -> Checksum {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&running.to_le_bytes());
    bytes[16..].copy_from_slice(&checksum(batch).to_le_bytes());
    checksum(&bytes)
}

/// The stream's tenant, length and chain, as the cluster has them.
fn stream_info(client: &mut Client, stream: u64) -> Result<StreamInfoReply, String> {
    let reply = client
        .read(Operation::StreamInfo, StreamInfo { stream }.as_bytes())
        .map_err(|error| format!("stream_info of stream {stream}: {error}"))?;
    let (info, _) = StreamInfoReply::read_from_prefix(reply.body)
        .map_err(|_| format!("stream_info of stream {stream}: short reply"))?;
    match ResultCode::from_u32(info.result) {
        Some(ResultCode::Ok) => Ok(info),
        code => Err(format!("stream_info of stream {stream}: {code:?}")),
    }
}

struct Export {
    client: Client,
    cluster: ClusterId,
    output: BufWriter<File>,
    streams: HashMap<u64, StreamState>,
    encoder: ImportEncoder,
    tail: FileTail,
    batches_checksum: Checksum,
}

impl Export {
    fn new(client: Client, output: BufWriter<File>) -> Export {
        let encoder = ImportEncoder::new(client.body_size_max());
        Export {
            client,
            cluster: ClusterId(0),
            output,
            streams: HashMap::new(),
            encoder,
            tail: FileTail::new_zeroed(),
            batches_checksum: Checksum(0),
        }
    }

    /// Reads the log from position 0 until a read returns everything committed when it
    /// started, and writes it.
    fn run(&mut self) -> Result<FileTail, String> {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let head = FileHead {
            magic: FILE_MAGIC,
            version: FILE_VERSION,
            reserved: 0,
            cluster: self.cluster.0,
            exported_at_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
        };
        self.output.write_all(head.as_bytes()).map_err(|error| error.to_string())?;
        // Up to the log's end when the first read started: a cluster written to faster than the
        // export reads would otherwise never let it finish.
        let (mut position, mut end) = (0, None);
        loop {
            let request =
                ReadLog { position_from: position, count_max: EXPORT_READ_COUNT_MAX, wait_ms: 0 };
            let reply = self
                .client
                .read(Operation::ReadLog, request.as_bytes())
                .map_err(|error| format!("read_log at position {position}: {error}"))?;
            let body = reply.body.to_vec();
            let (head, records) = ReadReplyHeader::read_from_prefix(&body)
                .map_err(|_| format!("read_log at position {position}: short reply"))?;
            if ResultCode::from_u32(head.result) != Some(ResultCode::Ok) {
                return Err(format!("read_log at position {position}: result {}", head.result));
            }
            let end = *end.get_or_insert(head.end);
            let count = head.event_count.min(u32::try_from(end - position).unwrap_or(u32::MAX));
            self.records_take(position, count, records)?;
            position += u64::from(count);
            if position >= end {
                break;
            }
        }
        if let Some(batch) = self.encoder.finish() {
            self.batch_write(&batch)?;
        }
        self.streams_verify()?;
        self.tail.streams = self.streams.len() as u64;
        self.tail.batches_checksum = ChecksumBytes::from(self.batches_checksum);
        self.output.write_all(self.tail.as_bytes()).map_err(|error| error.to_string())?;
        Ok(self.tail)
    }

    /// Checks each record of a read reply against its stream's chain, and adds it to a batch.
    fn records_take(
        &mut self,
        position: u64,
        count: u32,
        mut records: &[u8],
    ) -> Result<(), String> {
        for index in 0..u64::from(count) {
            let (record, event, rest) = record_next(records)
                .map_err(|reason| format!("read_log at position {position}: {reason}"))?;
            records = rest;
            if record.position != position + index {
                return Err(format!(
                    "read_log at position {position}: event {index} has position {}",
                    record.position
                ));
            }
            self.record_check(&record, &event)?;
            self.record_add(&record, &event)?;
        }
        Ok(())
    }

    /// Whether `record` is its stream's next event and chains from the one before it.
    fn record_check(&mut self, record: &EventRecord, event: &Event<'_>) -> Result<(), String> {
        let stream = match self.streams.get(&record.stream) {
            Some(stream) => *stream,
            None => {
                let info = stream_info(&mut self.client, record.stream)?;
                let chain = chain_seed(record.stream, info.tenant);
                StreamState { tenant: info.tenant, offset_next: 0, chain }
            }
        };
        if record.offset != stream.offset_next {
            return Err(format!(
                "position {}: stream {} offset {} where {} was next",
                record.position, record.stream, record.offset, stream.offset_next
            ));
        }
        let chain = chain_next(stream.chain, record, event);
        if chain != Checksum::from(record.chain) {
            return Err(format!(
                "position {}: stream {} offset {} does not chain from the events before it",
                record.position, record.stream, record.offset
            ));
        }
        let next = StreamState { offset_next: record.offset + 1, chain, ..stream };
        self.streams.insert(record.stream, next);
        Ok(())
    }

    /// Adds a checked event to the batch being gathered, writing the batch it closes.
    fn record_add(&mut self, record: &EventRecord, event: &Event<'_>) -> Result<(), String> {
        let tenant = self.streams[&record.stream].tenant;
        match self.encoder.push(record, event, tenant) {
            Some(batch) => self.batch_write(&batch),
            None => Ok(()),
        }
    }

    fn batch_write(&mut self, batch: &[u8]) -> Result<(), String> {
        let (head, _) = ImportBatch::read_from_prefix(batch).expect("an encoded batch");
        self.tail.events += u64::from(head.append.event_count);
        self.tail.batches += 1;
        self.batches_checksum = checksum_chain(self.batches_checksum, batch);
        self.output.write_all(batch).map_err(|error| error.to_string())
    }

    /// Each exported stream's length and chain against the cluster's now: the stream may have
    /// grown since (the cluster serves while it is exported), never changed.
    fn streams_verify(&mut self) -> Result<(), String> {
        for (stream, state) in &self.streams {
            let info = stream_info(&mut self.client, *stream)?;
            if info.offset_next < state.offset_next || info.tenant != state.tenant {
                return Err(format!("stream {stream} shrank or changed tenant during the export"));
            }
            if info.offset_next == state.offset_next && Checksum::from(info.chain) != state.chain {
                return Err(format!("stream {stream}: the cluster's chain is not the export's"));
            }
        }
        Ok(())
    }
}

struct Import {
    client: Client,
    input: BufReader<File>,
    streams: HashMap<u64, StreamState>,
    /// The request being gathered: whole batches, at most `APPEND_BATCHES_MAX`.
    body: Vec<u8>,
    /// The heads of the batches in `body`, in order.
    heads: Vec<ImportBatch>,
    tail: FileTail,
    batches_checksum: Checksum,
}

impl Import {
    fn new(client: Client, input: BufReader<File>) -> Import {
        Import {
            client,
            input,
            streams: HashMap::new(),
            body: Vec::new(),
            heads: Vec::new(),
            tail: FileTail::new_zeroed(),
            batches_checksum: Checksum(0),
        }
    }

    /// Reads the whole file once to check it (its structure, and its tail's counts and
    /// checksum), so that a damaged file imports nothing; then again, sending it.
    fn run(&mut self) -> Result<FileTail, String> {
        self.pass(false)?;
        self.input.seek(SeekFrom::Start(0)).map_err(|error| error.to_string())?;
        self.pass(true)?;
        self.request_send()?;
        self.streams_verify()?;
        Ok(self.tail)
    }

    /// One pass over the file: checking it (`send` false: counts, checksum, streams, tail), or
    /// sending its batches.
    fn pass(&mut self, send: bool) -> Result<(), String> {
        let mut head = FileHead::new_zeroed();
        self.read_exact(head.as_mut_bytes(), "the file head")?;
        if head.magic != FILE_MAGIC || head.version != FILE_VERSION {
            return Err("not a kimberlite export file (or of another version)".to_string());
        }
        loop {
            let mut batch = ImportBatch::new_zeroed();
            self.read_exact(batch.as_mut_bytes(), "a batch head or the file tail")?;
            if batch.append.stream == 0 {
                return if send { Ok(()) } else { self.tail_check(&batch) };
            }
            let size = size_of::<ImportBatch>() + batch.append.events_size_bytes as usize;
            if size > self.client.body_size_max() {
                let position = batch.position;
                return Err(format!("batch at position {position} is larger than a request"));
            }
            let mut events = vec![0u8; batch.append.events_size_bytes as usize];
            self.read_exact(&mut events, "a batch's events")?;
            if send {
                self.batch_send(batch, &events)?;
            } else {
                self.batch_count(batch, &events);
            }
        }
    }

    fn read_exact(&mut self, bytes: &mut [u8], what: &str) -> Result<(), String> {
        self.input.read_exact(bytes).map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => format!("ends before {what}: truncated"),
            _ => format!("reading {what}: {error}"),
        })
    }

    /// The tail, whose first bytes were read as a batch head: the counts and checksum of what
    /// was read must be its.
    fn tail_check(&mut self, start: &ImportBatch) -> Result<(), String> {
        let tail = FileTail::read_from_bytes(start.as_bytes()).expect("of one size");
        let mut after = [0u8; 1];
        if self.input.read(&mut after).map_err(|error| error.to_string())? > 0 {
            return Err("bytes after the file's tail".to_string());
        }
        let read = (self.tail.events, self.tail.batches, self.streams.len() as u64);
        if (tail.events, tail.batches, tail.streams) != read
            || Checksum::from(tail.batches_checksum) != self.batches_checksum
        {
            return Err("the batches read are not those the file's tail counts".to_string());
        }
        self.tail = tail;
        Ok(())
    }

    /// Adds a batch to the request being gathered, sending that request first if it is full.
    fn batch_send(&mut self, batch: ImportBatch, events: &[u8]) -> Result<(), String> {
        let size = size_of::<ImportBatch>() + events.len();
        let full = self.body.len() + size > self.client.body_size_max()
            || self.heads.len() == APPEND_BATCHES_MAX;
        if full {
            self.request_send()?;
        }
        self.body.extend_from_slice(batch.as_bytes());
        self.body.extend_from_slice(events);
        self.heads.push(batch);
        Ok(())
    }

    /// Counts a batch for the check against the tail, and notes its stream's chain.
    fn batch_count(&mut self, batch: ImportBatch, events: &[u8]) {
        let bytes = [batch.as_bytes(), events].concat();
        self.batches_checksum = checksum_chain(self.batches_checksum, &bytes);
        self.tail.events += u64::from(batch.append.event_count);
        self.tail.batches += 1;
        let stream = self.streams.entry(batch.append.stream).or_insert(StreamState {
            tenant: batch.tenant,
            offset_next: 0,
            chain: chain_seed(batch.append.stream, batch.tenant),
        });
        stream.offset_next = batch.append.expected_offset + u64::from(batch.append.event_count);
        stream.chain = Checksum::from(batch.chain);
    }

    /// Sends the gathered batches as one import request; every batch must be appended.
    fn request_send(&mut self) -> Result<(), String> {
        if self.heads.is_empty() {
            return Ok(());
        }
        let reply = self
            .client
            .write(Operation::Import, &self.body)
            .map_err(|error| format!("import: {error}"))?;
        let size = size_of::<AppendResult>();
        if reply.body.len() != self.heads.len() * size {
            return Err("import: the reply is not one result per batch".to_string());
        }
        let results = reply.body.chunks_exact(size);
        let results = results.map(|bytes| AppendResult::read_from_bytes(bytes).expect("sized"));
        for (head, result) in self.heads.iter().zip(results) {
            let code = ResultCode::from_u32(result.result);
            if code == Some(ResultCode::Ok) {
                continue;
            }
            let what = format!(
                "batch at position {} (stream {} offset {})",
                head.position, head.append.stream, head.append.expected_offset
            );
            return Err(match code {
                Some(ResultCode::ImportPositionWrong) => format!(
                    "{what}: the cluster's log already holds {} events, not those of the \
                     export: import into a fresh cluster that nothing else writes to",
                    result.offset
                ),
                Some(ResultCode::ImportChainWrong) => {
                    format!("{what}: its events do not chain to the checksum it carries")
                }
                code => format!("{what}: {}", code.map_or("unknown result", ResultCode::name)),
            });
        }
        self.body.clear();
        self.heads.clear();
        Ok(())
    }

    /// Each stream's length and chain, as the cluster now has them, against the file's.
    fn streams_verify(&mut self) -> Result<(), String> {
        for (stream, state) in &self.streams {
            let info = stream_info(&mut self.client, *stream)?;
            let found = (info.offset_next, info.tenant, Checksum::from(info.chain));
            if found != (state.offset_next, state.tenant, state.chain) {
                return Err(format!("stream {stream}: the cluster's chain is not the file's"));
            }
        }
        Ok(())
    }
}
