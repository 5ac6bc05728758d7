//! Checksum benchmark: the throughput of the 128-bit checksum (`vsr::header::checksum`, XXH3-128)
//! at the sizes the replica checksums: a header (240 bytes covered), a 4 KiB sector, a 1 MiB
//! message body, a 512 KiB grid block through its sector hash list (`block_checksum`), and one
//! step of a stream's event chain for a 128-byte event (`chain_next`).
//!
//! Run with `cargo bench --bench checksum`. The figures are for reading, not for pass/fail: the
//! machine may be shared, so the load average is printed beside them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kimberlite::constants::{BLOCK_SIZE, HEADER_SIZE, SECTOR_SIZE};
use kimberlite::state_machine::block::block_checksum;
use kimberlite::state_machine::types::{Event, EventRecord, chain_next};
use kimberlite::stdx::prng::Prng;
use kimberlite::vsr::header::{Checksum, ChecksumBytes, checksum};

/// Each size is hashed for at least this long.
const RUN_TIME: Duration = Duration::from_millis(500);

fn main() {
    let mut bytes = vec![0u8; 1024 * 1024];
    Prng::new(1).fill(&mut bytes);
    println!("checksum: XXH3-128; load average {}", load_average());
    let header = &bytes[..HEADER_SIZE - 16];
    let sector = &bytes[..SECTOR_SIZE];
    run("header (240 B)", header.len(), || checksum(black_box(header)));
    run("sector (4 KiB)", sector.len(), || checksum(black_box(sector)));
    run("message (1 MiB)", bytes.len(), || checksum(black_box(&bytes)));
    let block = &bytes[..BLOCK_SIZE];
    run("grid block (512 KiB, hash list)", BLOCK_SIZE, || block_checksum(black_box(block)));
    let event = Event { event_type: b"e", metadata: b"", data: &bytes[..127] };
    let record = EventRecord {
        stream: 1,
        offset: 2,
        position: 3,
        timestamp: 4,
        chain: ChecksumBytes::ZERO,
        data_size: 127,
        metadata_size: 0,
        type_size: 1,
        reserved: 0,
    };
    run("event chain (128 B event)", 128, || {
        chain_next(Checksum(7), black_box(&record), black_box(&event))
    });
}

/// Hashes `size` bytes with `hash` repeatedly for `RUN_TIME`, and prints the rate.
fn run(label: &str, size: usize, mut hash: impl FnMut() -> Checksum) {
    let start = Instant::now();
    let mut count: u64 = 0;
    let mut sum: u128 = 0;
    while start.elapsed() < RUN_TIME {
        for _ in 0..64 {
            sum = sum.wrapping_add(hash().get());
        }
        count += 64;
    }
    black_box(sum);
    let elapsed = start.elapsed().as_secs_f64();
    let per_second = count as f64 / elapsed;
    let gigabytes = per_second * size as f64 / 1e9;
    let nanoseconds = elapsed * 1e9 / count as f64;
    println!("  {label:34} {gigabytes:7.2} GB/s  {nanoseconds:10.1} ns each");
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}
