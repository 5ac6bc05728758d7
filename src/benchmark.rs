//! `kimberlite benchmark`: the bundled load generator.
//!
//! With no `--addresses` it formats a temporary data file in a scratch directory under the
//! current directory, starts a replica child process on a free loopback port, runs the load,
//! stops the replica and deletes the directory, also on Ctrl-C or SIGTERM (checked between
//! data files and during the load). With `--addresses` it loads an existing cluster.
//!
//! The load: `--streams` streams are created, then `--clients` independent client sessions (each
//! its own connection and client id, one request in flight each, driven by `--client-threads`
//! event loops: `driver`) append `--events` events of `--event-size` bytes (a payload of a
//! one-byte type, `EVENT_TYPE`, and the data) in batches of
//! `--batch` events per request (default: as many as fit in a message). Closed loop by default;
//! `--rate=R` makes it open loop, R requests a second in all. It prints a progress line while
//! it runs (a plain line a second when stderr is not a terminal), then events/s, MiB/s of event
//! data, and request latency percentiles up to p99.99, taken from every latency.

mod driver;

/// The type of every event the benchmark appends: one byte, so that `--event-size` is the
/// bytes of each event's whole payload (type, no metadata, data).
const EVENT_TYPE: &[u8] = b"e";

use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use crate::client::Client;
use crate::constants::{
    BLOCK_SIZE, CLIENTS_MAX, CREATE_STREAMS_MAX, GRID_SIZE_DEFAULT, HEADER_SIZE, MESSAGE_SIZE_MAX,
};
use crate::state_machine::types::{
    AppendEncoder, CreateStream, CreateStreamResult, ResultCode, padded_size,
};
use crate::vsr::client::ClientMetrics;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::{ClusterId, Operation};
use crate::vsr::layout::Config;

#[derive(Clone, Debug)]
pub struct Options {
    pub addresses: Vec<SocketAddr>,
    pub cluster: ClusterId,
    pub clients: usize,
    pub events: u64,
    pub event_size: u32,
    /// Events per request; `None` for as many as fit.
    pub batch: Option<u32>,
    pub streams: u64,
    /// Replicas of the local cluster started when no `--addresses` are given.
    pub replica_count: u8,
    /// Threads that drive the clients; `None` for one per `CLIENTS_PER_THREAD` clients.
    pub client_threads: Option<usize>,
    /// Open loop: requests a second, over every client; `None` for closed loop.
    pub rate: Option<f64>,
}

/// Clients one driver thread takes by default: one thread drives hundreds of sessions, and on
/// a machine that also runs the replicas, every extra thread competes with them.
pub const CLIENTS_PER_THREAD: usize = 1024;

impl Default for Options {
    fn default() -> Options {
        Options {
            addresses: Vec::new(),
            cluster: ClusterId(0),
            clients: 4,
            events: 1_000_000,
            event_size: 128,
            batch: None,
            streams: 4,
            replica_count: 1,
            client_threads: None,
            rate: None,
        }
    }
}

/// What one run measured.
pub struct Results {
    pub events: u64,
    pub requests: u64,
    pub elapsed: Duration,
    /// Request latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub event_size: u32,
    pub batch: u32,
    /// The client sessions' counters, summed (copies sent again, and why).
    pub client: ClientMetrics,
}

impl Results {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    pub fn mebibytes_per_second(&self) -> f64 {
        self.events_per_second() * f64::from(self.event_size) / (1024.0 * 1024.0)
    }

    /// The latency at `percent` (0 to 100), in microseconds.
    pub fn latency_percentile_us(&self, percent: u64) -> u64 {
        self.latency_quantile_us(percent, 100)
    }

    /// The latency below which `numerator / denominator` of the requests stayed, in
    /// microseconds (exact: every latency is kept, sorted).
    pub fn latency_quantile_us(&self, numerator: u64, denominator: u64) -> u64 {
        assert!(numerator <= denominator && denominator > 0);
        if self.latencies_us.is_empty() {
            return 0;
        }
        let last = self.latencies_us.len() as u64 - 1;
        let index = (u128::from(last) * u128::from(numerator) / u128::from(denominator)) as usize;
        self.latencies_us[index]
    }
}

/// Runs the benchmark and prints its results. Returns an error line on failure.
pub fn run(options: &Options) -> Result<Results, String> {
    if options.clients == 0 || options.events == 0 || options.streams == 0 {
        return Err("--clients, --events and --streams must be at least 1".to_string());
    }
    if options.event_size == 0 {
        return Err("--event-size must be at least 1".to_string());
    }
    if options.clients > CLIENTS_MAX {
        // Each session needs a slot in the replicas' session table (`clients_max`, at most
        // CLIENTS_MAX): more would evict one another. The embedded cluster is formatted for
        // `--clients` sessions; a cluster of `--addresses` must have been.
        return Err(format!(
            "--clients must be at most {CLIENTS_MAX}, the largest session table a replica has"
        ));
    }
    if options.client_threads == Some(0) {
        return Err("--client-threads must be at least 1".to_string());
    }
    if options.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
        return Err("--rate must be a positive number of requests a second".to_string());
    }
    if options.addresses.is_empty() {
        // Ctrl-C stops the run at the next check and still removes the scratch data files.
        crate::io::signal::catch_interrupts().map_err(|error| format!("sigaction: {error}"))?;
        let mut cluster = LocalCluster::start(options)?;
        let result = load(options, &cluster.addresses, cluster.cluster);
        cluster.stop();
        result
    } else {
        load(options, &options.addresses, options.cluster)
    }
}

/// Replica child processes on scratch data files, all removed on `stop`.
struct LocalCluster {
    directory: PathBuf,
    children: Vec<Child>,
    addresses: Vec<SocketAddr>,
    cluster: ClusterId,
}

impl LocalCluster {
    fn start(options: &Options) -> Result<LocalCluster, String> {
        let count = usize::from(options.replica_count);
        if count == 0 || count > crate::constants::REPLICAS_MAX {
            return Err("--replica-count must be between 1 and 7".to_string());
        }
        let directory = PathBuf::from(format!("kimberlite-benchmark-{}", std::process::id()));
        std::fs::create_dir(&directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        let mut cluster = LocalCluster {
            directory,
            children: Vec::new(),
            addresses: Vec::new(),
            cluster: ClusterId(u64::from(std::process::id())),
        };
        if let Err(error) = cluster.spawn(options) {
            cluster.stop();
            return Err(error);
        }
        Ok(cluster)
    }

    fn spawn(&mut self, options: &Options) -> Result<(), String> {
        let count = options.replica_count;
        for _ in 0..count {
            let port = free_port()?;
            self.addresses.push(([127, 0, 0, 1], port).into());
        }
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        let addresses = addresses.join(",");
        // Every data file first, then every replica at once: a replica started while the next
        // one is still being formatted backs off dialing it (up to a second), and the load
        // would start with that replica out of the cluster, to catch up by state sync.
        let mut paths = Vec::new();
        for replica in 0..count {
            let path = self.directory.join(format!("0_{replica}.kimberlite"));
            let mut config = Config::new(self.cluster, ReplicaIndex(replica), count);
            config.grid_size = grid_size_for(options);
            config.clients_max = config.clients_max.max(options.clients as u32);
            eprintln!(
                "benchmark: formatting {} (grid {} MiB)",
                path.display(),
                config.grid_size >> 20
            );
            crate::io::format::format_file(&path, &config).map_err(|error| error.to_string())?;
            paths.push(path);
            interrupt_check()?;
        }
        let connected: Arc<Vec<AtomicU64>> =
            Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        for (replica, path) in paths.iter().enumerate() {
            let executable = std::env::current_exe().map_err(|error| error.to_string())?;
            let mut child = Command::new(executable)
                .arg("start")
                .arg(format!("--addresses={addresses}"))
                .arg(path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|error| format!("starting replica {replica}: {error}"))?;
            let stderr = child.stderr.take().expect("piped");
            let connected = connected.clone();
            std::thread::spawn(move || forward_replica_log(stderr, &connected[replica]));
            self.children.push(child);
        }
        wait_for_connections(&connected)?;
        eprintln!("benchmark: every replica is connected to its peers");
        Ok(())
    }

    fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A grid big enough for the run's events (with their records and block directories).
fn grid_size_for(options: &Options) -> u64 {
    let per_event = 64 + padded_size(u64::from(options.event_size));
    let needed = options.events.saturating_mul(per_event) / 10 * 13 + 64 * BLOCK_SIZE as u64;
    needed.max(GRID_SIZE_DEFAULT).next_multiple_of(BLOCK_SIZE as u64)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|error| error.to_string())?;
    let port = listener.local_addr().map_err(|error| error.to_string())?.port();
    Ok(port)
}

/// The bit of a replica's `connected` set once it listens.
const LISTENING: u64 = 1 << 63;

/// Copies a replica's log to ours, sets `LISTENING` in `connected` once it listens, and bit `j`
/// once it logs that it connected to replica `j`.
fn forward_replica_log(stderr: std::process::ChildStderr, connected: &AtomicU64) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        eprintln!("{line}");
        if line.contains(" event=replica_listening ") {
            connected.fetch_or(LISTENING, Ordering::Relaxed);
        }
        let peer_connected = line.contains(" event=peer_connected ");
        let peer = line.split(' ').find_map(|field| field.strip_prefix("peer_replica="));
        let peer = peer.filter(|_| peer_connected).and_then(|peer| peer.parse::<u32>().ok());
        if let Some(peer) = peer.filter(|peer| *peer < 64) {
            connected.fetch_or(1 << peer, Ordering::Relaxed);
        }
    }
}

/// Waits until every replica listens and has connected to every replica above it (the lower
/// one dials), so that the load starts on the whole cluster.
fn wait_for_connections(connected: &[AtomicU64]) -> Result<(), String> {
    let count = connected.len();
    let start = Instant::now();
    loop {
        let missing = (0..count).find(|&replica| {
            let wanted = ((1u64 << count) - 1) & !((1u64 << (replica + 1)) - 1) | LISTENING;
            connected[replica].load(Ordering::Relaxed) & wanted != wanted
        });
        let Some(replica) = missing else { return Ok(()) };
        interrupt_check()?;
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "replica {replica} did not listen and connect to its peers within 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An error once SIGINT or SIGTERM arrived (`run` then stops the replicas and removes the
/// scratch directory).
fn interrupt_check() -> Result<(), String> {
    if crate::io::signal::interrupted() {
        return Err("interrupted".to_string());
    }
    Ok(())
}

/// Events of `event_size` bytes that fit in one request body.
fn batch_size_max(event_size: u32) -> u32 {
    let body_max = (MESSAGE_SIZE_MAX - HEADER_SIZE) as u64;
    let per_event = AppendEncoder::event_size(u64::from(event_size)) as u64;
    ((body_max - AppendEncoder::batch_size([]) as u64) / per_event) as u32
}

fn load(
    options: &Options,
    addresses: &[SocketAddr],
    cluster: ClusterId,
) -> Result<Results, String> {
    let batch_max = batch_size_max(options.event_size);
    let batch = options.batch.unwrap_or(batch_max);
    if batch == 0 || batch > batch_max {
        return Err(format!("--batch must be between 1 and {batch_max} for this event size"));
    }
    create_streams(options, addresses, cluster)?;
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let load = driver::Load { options, addresses, cluster, batch, done: &done, failed: &failed };
    let threads = options
        .client_threads
        .unwrap_or(options.clients.div_ceil(CLIENTS_PER_THREAD))
        .min(options.clients);
    let start = Instant::now();
    let results: Vec<driver::ShareResult> = std::thread::scope(|scope| {
        let load = &load;
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let share = share(options, thread, threads);
                scope.spawn(move || driver::run(load, share))
            })
            .collect();
        let finished = || handles.iter().all(|handle| handle.is_finished());
        progress(options.events, &done, &failed, start, &finished);
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err("a client thread panicked".to_string())))
            .collect()
    });
    if crate::io::signal::interrupted() {
        return Err("interrupted".to_string());
    }
    let mut latencies_us = Vec::new();
    // The run ends at the last client's last reply, not when the progress loop (which sleeps
    // between reports) notices it: that would add up to one report interval to every run.
    let mut finished = start;
    let mut client = ClientMetrics::default();
    for result in results {
        let thread = result?;
        latencies_us.extend(thread.latencies_us);
        finished = finished.max(thread.last_reply);
        client.add(&thread.client);
    }
    let requests = latencies_us.len() as u64;
    let elapsed = finished - start;
    latencies_us.sort_unstable();
    let results = Results {
        events: options.events,
        requests,
        elapsed,
        latencies_us,
        event_size: options.event_size,
        batch,
        client,
    };
    print_results(&results, options);
    Ok(results)
}

/// Thread `thread` of `threads`: its clients (a contiguous range) and their share of the
/// events and of the open-loop rate.
fn share(options: &Options, thread: usize, threads: usize) -> driver::Share {
    let clients = options.clients;
    let first = clients * thread / threads;
    let end = clients * (thread + 1) / threads;
    let events_first = options.events * first as u64 / clients as u64;
    let events_end = options.events * end as u64 / clients as u64;
    driver::Share {
        clients: first..end,
        events: events_end - events_first,
        rate: options.rate.map(|rate| rate * (end - first) as f64 / clients as f64),
    }
}

fn progress(
    total: u64,
    done: &AtomicU64,
    failed: &AtomicBool,
    start: Instant,
    finished: &dyn Fn() -> bool,
) {
    // On a terminal one line is redrawn four times a second; in a log, a line a second.
    let terminal = std::io::stderr().is_terminal();
    let mut reports = 0u64;
    while !finished() {
        std::thread::sleep(Duration::from_millis(250));
        reports += 1;
        if crate::io::signal::interrupted() {
            // The clients stop at their next request; `run` then removes the scratch files.
            failed.store(true, Ordering::Relaxed);
        }
        if failed.load(Ordering::Relaxed) {
            break;
        }
        if !terminal && !reports.is_multiple_of(4) {
            continue;
        }
        let count = done.load(Ordering::Relaxed);
        let seconds = start.elapsed().as_secs_f64();
        let line = format!(
            "benchmark: {count}/{total} events, {:.0} events/s, {:.1} s",
            count as f64 / seconds.max(1e-9),
            seconds
        );
        if terminal {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    if terminal {
        eprintln!();
    }
}

fn print_results(results: &Results, options: &Options) {
    println!(
        "{} events of {} bytes in {} requests of up to {} events, {} clients, {} streams",
        results.events,
        results.event_size,
        results.requests,
        results.batch,
        options.clients,
        options.streams
    );
    let threads = options.client_threads.unwrap_or(options.clients.div_ceil(CLIENTS_PER_THREAD));
    let threads = threads.min(options.clients);
    match options.rate {
        None => println!("closed loop, {threads} client thread(s)"),
        Some(rate) => println!(
            "open loop at {rate:.0} requests/s (achieved {:.0}), {threads} client thread(s)",
            results.requests as f64 / results.elapsed.as_secs_f64()
        ),
    }
    println!("elapsed: {:.2} s", results.elapsed.as_secs_f64());
    println!(
        "throughput: {:.0} events/s, {:.1} MiB/s",
        results.events_per_second(),
        results.mebibytes_per_second()
    );
    println!(
        "request latency: p1 {} us, p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, p99.99 {} us, \
         p100 {} us",
        results.latency_percentile_us(1),
        results.latency_percentile_us(50),
        results.latency_percentile_us(90),
        results.latency_percentile_us(99),
        results.latency_quantile_us(999, 1_000),
        results.latency_quantile_us(9_999, 10_000),
        results.latency_percentile_us(100)
    );
    let client = &results.client;
    println!(
        "requests sent again: {} after a timeout, {} after a busy answer, {} after a redirect",
        client.client_timeouts, client.client_busy, client.client_redirects
    );
}

fn create_streams(
    options: &Options,
    addresses: &[SocketAddr],
    cluster: ClusterId,
) -> Result<(), String> {
    let mut client = Client::new(cluster, addresses, MESSAGE_SIZE_MAX);
    let per_request =
        (client.body_size_max() / std::mem::size_of::<CreateStream>()).min(CREATE_STREAMS_MAX);
    let mut stream = 1;
    while stream <= options.streams {
        let count = (options.streams - stream + 1).min(per_request as u64);
        let mut body = Vec::with_capacity(count as usize * 16);
        for offset in 0..count {
            body.extend_from_slice(CreateStream { stream: stream + offset, tenant: 1 }.as_bytes());
        }
        let reply =
            client.write(Operation::CreateStream, &body).map_err(|error| error.to_string())?;
        for (index, chunk) in reply.body.chunks_exact(8).enumerate() {
            let result = CreateStreamResult::read_from_bytes(chunk).map_err(|_| "short reply")?;
            let code = ResultCode::from_u32(result.result);
            if code != Some(ResultCode::Ok) && code != Some(ResultCode::StreamExists) {
                return Err(format!(
                    "creating stream {}: {}",
                    stream + index as u64,
                    code.map(ResultCode::name).unwrap_or("unknown result")
                ));
            }
        }
        stream += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_share_every_client_and_event_once() {
        // Goal: the driver threads' shares cover every client and every event exactly once,
        // in contiguous ranges, and the open-loop rate in proportion to the clients.
        for (clients, events, threads) in [(64, 100_000, 1), (10, 7, 3), (4096, 1_000_003, 4)] {
            let options = Options { clients, events, rate: Some(1000.0), ..Options::default() };
            let shares: Vec<_> =
                (0..threads).map(|thread| share(&options, thread, threads)).collect();
            let mut next = 0;
            for share in &shares {
                assert_eq!(share.clients.start, next);
                next = share.clients.end;
            }
            assert_eq!(next, clients);
            assert_eq!(shares.iter().map(|share| share.events).sum::<u64>(), events);
            let rate: f64 = shares.iter().map(|share| share.rate.unwrap()).sum();
            assert!((rate - 1000.0).abs() < 1e-6);
        }
    }

    #[test]
    fn latency_quantiles_index_the_sorted_latencies() {
        // Goal: quantiles finer than a percent (p99.9, p99.99) pick the latency at that rank,
        // and the ends are the least and the greatest.
        let results = Results {
            events: 10_000,
            requests: 10_000,
            elapsed: Duration::from_secs(1),
            latencies_us: (1..=10_000).collect(),
            event_size: 128,
            batch: 1,
            client: ClientMetrics::default(),
        };
        assert_eq!(results.latency_percentile_us(0), 1);
        assert_eq!(results.latency_percentile_us(50), 5_000);
        assert_eq!(results.latency_quantile_us(999, 1_000), 9_990);
        assert_eq!(results.latency_quantile_us(9_999, 10_000), 9_999);
        assert_eq!(results.latency_percentile_us(100), 10_000);
        let empty = Results { latencies_us: Vec::new(), ..results };
        assert_eq!(empty.latency_quantile_us(9_999, 10_000), 0);
    }
}
