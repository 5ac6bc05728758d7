//! Storage benchmark: what the data file costs on this disk through `io::IoStorage`.
//!
//! (a) the time to format the default data file; (b) sequential durable (`RWF_DSYNC`) journal
//! write throughput, 1 MiB prepares into the `wal_prepares` zone slot after slot, with 1 and 4
//! in flight as a pipelining primary would; (c) the end-to-end latency of one durable prepare
//! write: the prepare, then the 4 KiB sector holding its redundant header, both durable. The
//! requests mirror the journal's write pattern without depending on the journal.
//!
//! Run with `cargo bench --bench storage`. Settings come from the environment:
//! `KIMBERLITE_BENCH_DIRECTORY` (scratch directory on the disk to measure; default under the
//! cargo target directory), `KIMBERLITE_BENCH_WRITES` (writes per throughput run, default 2048)
//! and `KIMBERLITE_BENCH_SAMPLES` (latency samples per size, default 3000). The scratch files are
//! deleted at the end. The figures are for reading, not for pass/fail: this VM is shared, so the
//! load average is printed beside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kimberlite::constants::{HEADER_SIZE, MESSAGE_SIZE_MAX, SECTOR_SIZE};
use kimberlite::io::data_file;
use kimberlite::io::format::format_file;
use kimberlite::io::storage::IoStorage;
use kimberlite::vsr::header::{ClusterId, ReplicaIndex};
use kimberlite::vsr::layout::{Config, Layout, Zone};
use kimberlite::vsr::message_pool::{Message, MessagePool};
use kimberlite::vsr::storage::{Completion, IoKind, IoOwner, IoRequest, IoToken, Storage};

const WRITES_DEFAULT: usize = 2048;
const SAMPLES_DEFAULT: usize = 3000;
const IN_FLIGHT_MAX: usize = 4;
const MEGABYTE: f64 = 1_000_000.0;

struct Options {
    directory: PathBuf,
    writes_count: usize,
    samples_count: usize,
}

/// Removes the scratch directory however the benchmark ends.
struct Scratch {
    directory: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
        if let Some(parent) = self.directory.parent() {
            // Only succeeds when empty: another run's files are left alone.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn main() {
    let options = options();
    std::fs::create_dir_all(&options.directory).expect("create the scratch directory");
    let scratch = Scratch { directory: options.directory.clone() };
    let path = scratch.directory.join("0_0.kimberlite");
    println!("kimberlite storage benchmark");
    println!("  scratch directory  {}", scratch.directory.display());
    println!("  load average       {} (before)", load_average());

    let config = Config::new(ClusterId(0), ReplicaIndex(0), 1);
    let layout = Layout::new(&config);
    bench_format(&path, &config);

    let mut storage = open_storage(&path, true);
    let pool = MessagePool::new(IN_FLIGHT_MAX, MESSAGE_SIZE_MAX);
    let headers_pool = MessagePool::new(1, SECTOR_SIZE);
    fill_random(&pool, &headers_pool);
    bench_throughput_table(&mut storage, &pool, &layout, options.writes_count, &path);
    bench_latency_table(&mut storage, &pool, &headers_pool, &layout, options.samples_count);
    drop(storage);
    println!();
    println!("  load average       {} (after)", load_average());
    drop(scratch);
}

fn options() -> Options {
    let number = |name: &str, default: usize| match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be a number: {text:?}")),
        Err(_) => default,
    };
    let directory = match std::env::var("KIMBERLITE_BENCH_DIRECTORY") {
        Ok(directory) => PathBuf::from(directory),
        Err(_) => Path::new(env!("CARGO_TARGET_TMPDIR")).join("storage-bench"),
    };
    let directory = directory.join(format!("run-{}", std::process::id()));
    Options {
        directory,
        writes_count: number("KIMBERLITE_BENCH_WRITES", WRITES_DEFAULT).max(IN_FLIGHT_MAX),
        samples_count: number("KIMBERLITE_BENCH_SAMPLES", SAMPLES_DEFAULT).max(1),
    }
}

fn bench_format(path: &Path, config: &Config) {
    let report = format_file(path, config).unwrap_or_else(|error| panic!("format: {error}"));
    println!();
    println!("(a) format the default data file, Config::new(ClusterId(0), ReplicaIndex(0), 1)");
    println!("  {:<16} {:>16} {:>16}", "zone", "offset (bytes)", "size");
    for extent in report.zones {
        let size = format_size(extent.size_bytes);
        println!("  {:<16} {:>16} {:>16}", extent.zone.name(), extent.offset, size);
    }
    let seconds = report.elapsed.as_secs_f64();
    println!(
        "  file size {} ({} bytes), written in {:.2} s ({:.0} MB/s), file and directory fsynced",
        format_size(report.size_bytes),
        report.size_bytes,
        seconds,
        report.written_bytes as f64 / MEGABYTE / seconds,
    );
}

fn open_storage(path: &Path, durable_writes: bool) -> IoStorage {
    let data_file = data_file::open(path, false).unwrap_or_else(|error| panic!("open: {error}"));
    IoStorage::new(data_file.file, durable_writes).expect("io_uring setup")
}

/// Fills every buffer with pseudo-random bytes, so no layer below can shortcut zero pages.
fn fill_random(pool: &MessagePool, headers_pool: &MessagePool) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut messages: Vec<Message> = (0..pool.count()).map(|_| pool.get()).collect();
    messages.push(headers_pool.get());
    for message in &mut messages {
        for word in message.buffer_mut_unique().chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
    }
}

fn write_request(index: u32, zone: Zone, offset: u64, length: usize) -> IoRequest {
    IoRequest {
        token: IoToken { owner: IoOwner::Benchmark, index },
        kind: IoKind::Write,
        zone,
        offset,
        length,
        buffer_offset: 0,
    }
}

/// The absolute offset of WAL slot `slot`'s prepare.
fn prepare_offset(layout: &Layout, slot: u64) -> u64 {
    layout.offset(Zone::WalPrepares, slot * layout.message_size_max)
}

/// The absolute offset of the `wal_headers` sector holding slot `slot`'s redundant header.
fn header_sector_offset(layout: &Layout, slot: u64) -> u64 {
    let headers_per_sector = (SECTOR_SIZE / HEADER_SIZE) as u64;
    layout.offset(Zone::WalHeaders, slot / headers_per_sector * SECTOR_SIZE as u64)
}

fn bench_throughput_table(
    storage: &mut IoStorage,
    pool: &MessagePool,
    layout: &Layout,
    writes_count: usize,
    path: &Path,
) {
    println!();
    println!("(b) sequential journal writes: 1 MiB prepares into wal_prepares, slot after slot");
    println!(
        "  {:<34} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "mode", "writes", "MiB", "seconds", "MB/s", "mean µs"
    );
    for in_flight in [1, IN_FLIGHT_MAX] {
        let label = format!("RWF_DSYNC, {in_flight} in flight");
        let elapsed = bench_throughput(storage, pool, layout, writes_count, in_flight);
        print_throughput(&label, writes_count, in_flight, elapsed);
    }
    // The same with plain O_DIRECT writes, for the cost of the cache flush per write.
    let mut plain = open_storage_after(storage, path);
    let elapsed = bench_throughput(&mut plain, pool, layout, writes_count, IN_FLIGHT_MAX);
    let label = format!("plain O_DIRECT, {IN_FLIGHT_MAX} in flight (ref)");
    print_throughput(&label, writes_count, IN_FLIGHT_MAX, elapsed);
}

/// A non-durable storage on the same file. The durable one keeps its lock meanwhile, so this
/// opens the file directly rather than through `data_file::open`.
fn open_storage_after(durable: &IoStorage, path: &Path) -> IoStorage {
    use std::os::unix::fs::OpenOptionsExt;
    assert_eq!(durable.in_flight(), 0);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("reopen the data file");
    IoStorage::new(file, false).expect("io_uring setup")
}

fn print_throughput(label: &str, writes_count: usize, in_flight: usize, elapsed: Duration) {
    let bytes = (writes_count * MESSAGE_SIZE_MAX) as f64;
    let seconds = elapsed.as_secs_f64();
    // Little's law: the mean time a write spends in flight.
    let mean_us = seconds / writes_count as f64 * in_flight as f64 * 1e6;
    println!(
        "  {:<34} {:>8} {:>10} {:>10.3} {:>10.0} {:>12.0}",
        label,
        writes_count,
        writes_count * MESSAGE_SIZE_MAX / (1024 * 1024),
        seconds,
        bytes / MEGABYTE / seconds,
        mean_us
    );
}

/// Writes `writes_count` prepares of `message_size_max`, keeping `in_flight` in flight.
fn bench_throughput(
    storage: &mut IoStorage,
    pool: &MessagePool,
    layout: &Layout,
    writes_count: usize,
    in_flight: usize,
) -> Duration {
    assert!(in_flight <= pool.count());
    assert_eq!(layout.message_size_max as usize, MESSAGE_SIZE_MAX);
    let mut buffers: Vec<Message> = (0..in_flight).map(|_| pool.get()).collect();
    let mut completions: Vec<Completion> = Vec::with_capacity(in_flight);
    let mut submitted = 0;
    let mut completed = 0;
    let start = Instant::now();
    while completed < writes_count {
        while submitted < writes_count && storage.in_flight() < in_flight {
            let slot = submitted as u64 % layout.journal_slot_count;
            let offset = prepare_offset(layout, slot);
            let request = write_request(slot as u32, Zone::WalPrepares, offset, MESSAGE_SIZE_MAX);
            storage.submit(request, buffers.pop().expect("a free buffer"));
            submitted += 1;
        }
        storage.poll(&mut completions, in_flight);
        for completion in completions.drain(..) {
            completion.result.unwrap_or_else(|error| panic!("write failed: {error}"));
            buffers.push(completion.buffer);
            completed += 1;
        }
    }
    start.elapsed()
}

fn bench_latency_table(
    storage: &mut IoStorage,
    pool: &MessagePool,
    headers_pool: &MessagePool,
    layout: &Layout,
    samples_count: usize,
) {
    println!();
    println!("(c) durable prepare latency, end to end: the prepare write, then the 4 KiB write of");
    println!(
        "    the wal_headers sector holding its redundant header; both RWF_DSYNC, one at a time"
    );
    println!(
        "  {:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "prepare", "samples", "p50 µs", "p90 µs", "p99 µs", "max µs", "prepares/s"
    );
    let mut samples_ns: Vec<u64> = Vec::with_capacity(samples_count);
    for prepare_size in [MESSAGE_SIZE_MAX, SECTOR_SIZE] {
        samples_ns.clear();
        let start = Instant::now();
        for sample in 0..samples_count {
            let slot = sample as u64 % layout.journal_slot_count;
            let latency = prepare_latency(storage, pool, headers_pool, layout, slot, prepare_size);
            samples_ns.push(latency.as_nanos() as u64);
        }
        let rate = samples_count as f64 / start.elapsed().as_secs_f64();
        samples_ns.sort_unstable();
        let percentile_us = |percent: usize| {
            let index = (samples_ns.len() * percent / 100).min(samples_ns.len() - 1);
            samples_ns[index] as f64 / 1000.0
        };
        println!(
            "  {:<10} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>12.0}",
            format_size(prepare_size as u64),
            samples_count,
            percentile_us(50),
            percentile_us(90),
            percentile_us(99),
            percentile_us(100),
            rate
        );
    }
}

/// One prepare as the journal writes it: the prepare, then (once it is durable) its header's
/// sector in the redundant ring.
fn prepare_latency(
    storage: &mut IoStorage,
    pool: &MessagePool,
    headers_pool: &MessagePool,
    layout: &Layout,
    slot: u64,
    prepare_size: usize,
) -> Duration {
    let start = Instant::now();
    let offset = prepare_offset(layout, slot);
    let request = write_request(slot as u32, Zone::WalPrepares, offset, prepare_size);
    write_and_wait(storage, request, pool.get());
    let offset = header_sector_offset(layout, slot);
    let request = write_request(slot as u32, Zone::WalHeaders, offset, SECTOR_SIZE);
    write_and_wait(storage, request, headers_pool.get());
    start.elapsed()
}

fn write_and_wait(storage: &mut IoStorage, request: IoRequest, buffer: Message) {
    assert_eq!(storage.in_flight(), 0);
    let mut completions: Vec<Completion> = Vec::with_capacity(1);
    storage.submit(request, buffer);
    while completions.is_empty() {
        storage.poll(&mut completions, 1);
    }
    let completion = completions.pop().expect("one completion");
    completion.result.unwrap_or_else(|error| panic!("write failed: {error}"));
}

fn format_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}
