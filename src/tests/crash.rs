//! Crash safety with a real process: a replica under load is killed with SIGKILL at several
//! points and restarted from its data file. Every event the client saw acknowledged must be
//! readable afterwards at the offset it was given, and no event may be applied twice.
//!
//! The client keeps its session across the crashes: a request in flight when the replica dies
//! is retried with the same request number after the restart, so the dedup table is exercised
//! through the restart too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kimberlite::client::{Client, Subscription};
use kimberlite::constants::MESSAGE_SIZE_MAX;
use kimberlite::state_machine::constants::EXPECTED_OFFSET_ANY;
use kimberlite::state_machine::types::{
    AppendResult, CreateStream, Event, ReadLog, ReadReplyHeader, ReadStream, ResultCode,
    StreamInfo, StreamInfoReply, append_batch_body, record_next,
};
use kimberlite::vsr::header::{ClientId, ClusterId, Op, Operation, ReplicaIndex};
use kimberlite::vsr::layout::{Config, Layout, Zone};
use zerocopy::{FromBytes, IntoBytes};

const BINARY: &str = env!("CARGO_BIN_EXE_kimberlite");
const CLUSTER: ClusterId = ClusterId(42);
const STREAMS: u64 = 3;
const EVENT_SIZE: usize = 48;

struct Scratch(PathBuf);

/// Replica processes, killed when the test ends, also when it fails: an orphan would keep the
/// test harness's output pipe open and hang CI.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// The caller owns the child and waits for it; a panic here fails the test anyway.
#[allow(clippy::zombie_processes)]
fn start(path: &Path, address: SocketAddr) -> Child {
    start_replica(path, &[address])
}

// The caller owns the child and waits for it; a panic here fails the test anyway.
#[allow(clippy::zombie_processes)]
fn start_replica(path: &Path, addresses: &[SocketAddr]) -> Child {
    start_replica_with(path, addresses, &[])
}

// The caller owns the child and waits for it; a panic here fails the test anyway.
#[allow(clippy::zombie_processes)]
fn start_replica_with(path: &Path, addresses: &[SocketAddr], options: &[String]) -> Child {
    lock_wait(path);
    let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let mut child = Command::new(BINARY)
        .arg("start")
        .arg(format!("--addresses={}", list.join(",")))
        .args(options)
        .arg(path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the replica");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("replica exited before listening").unwrap();
        eprintln!("{line}");
        if line.contains(" event=replica_listening ") {
            std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
            return child;
        }
    }
}

/// Waits until no process holds the data file's lock. A replica killed with SIGKILL, even once
/// reaped, can hold it a while longer: its io_uring instance is torn down asynchronously, and
/// the operations still in flight keep the file open.
fn lock_wait(path: &Path) {
    let file = std::fs::File::open(path).expect("the data file exists");
    let started = Instant::now();
    while file.try_lock().is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{} stays locked", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    if started.elapsed() > Duration::from_millis(100) {
        println!("lock: waited {} ms for a killed replica's lock", started.elapsed().as_millis());
    }
}

/// A free loopback address, on a port below the kernel's ephemeral range (32768 and up): a
/// port from that range could be handed to another socket's connect (a peer's dial, a client)
/// between the test choosing it and the replica binding it, or while the replica is down
/// between a kill and its restart. Processes start at different ports, by their id.
fn address_free() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first = std::process::id() % 1_000 * 20;
    loop {
        let offset = (first + NEXT.fetch_add(1, Ordering::Relaxed)) % 20_000;
        let address = SocketAddr::from(([127, 0, 0, 1], 10_000 + offset as u16));
        if TcpListener::bind(address).is_ok() {
            return address;
        }
    }
}

/// The event data: unique per (stream, sequence) so a duplicate is detectable.
fn event_data(stream: u64, sequence: u64) -> [u8; EVENT_SIZE] {
    let mut data = [0u8; EVENT_SIZE];
    data[..8].copy_from_slice(&stream.to_le_bytes());
    data[8..16].copy_from_slice(&sequence.to_le_bytes());
    data[16..24].copy_from_slice(&(stream ^ sequence.rotate_left(17)).to_le_bytes());
    data
}

fn append_body(stream: u64, first_sequence: u64, count: u64) -> Vec<u8> {
    let sequences = first_sequence..first_sequence + count;
    let events: Vec<_> = sequences.map(|sequence| event_data(stream, sequence)).collect();
    let events: Vec<Event<'_>> =
        events.iter().map(|data| Event { event_type: b"t", metadata: b"", data }).collect();
    append_batch_body(stream, EXPECTED_OFFSET_ANY, &events)
}

/// Acknowledged events: stream → (offset → sequence).
type Acknowledged = Arc<Mutex<HashMap<u64, HashMap<u64, u64>>>>;

/// When each append was acknowledged, in order.
type AcknowledgedAt = Arc<Mutex<Vec<Instant>>>;

/// Appends until `stop`; returns the commit number of the last acknowledged write.
fn load(
    addresses: &[SocketAddr],
    acknowledged: Acknowledged,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> u64 {
    load_timed(addresses, (acknowledged, AcknowledgedAt::default(), None), stop, pause)
}

/// What a load records: the events acknowledged, when, and, if the load expects the grid to
/// fill, how many appends got `storage_full` (else any result but `ok` fails it).
type LoadRecord = (Acknowledged, AcknowledgedAt, Option<Arc<AtomicU64>>);

fn load_timed(
    addresses: &[SocketAddr],
    (acknowledged, acknowledged_at, storage_full): LoadRecord,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> u64 {
    let mut client = Client::new(CLUSTER, addresses, MESSAGE_SIZE_MAX);
    let mut sequence = 0u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let stream = 1 + round % STREAMS;
        let count = 1 + round % 50;
        let body = append_body(stream, sequence, count);
        let reply = client.write(Operation::Append, &body).expect("append acknowledged");
        let result = AppendResult::read_from_prefix(reply.body).unwrap().0;
        if let Some(storage_full) = &storage_full
            && result.result == ResultCode::StorageFull as u32
        {
            storage_full.fetch_add(1, Ordering::Relaxed);
            round += 1;
            std::thread::sleep(pause);
            continue;
        }
        assert_eq!(result.result, ResultCode::Ok as u32);
        let mut acknowledged = acknowledged.lock().unwrap();
        let offsets = acknowledged.entry(stream).or_default();
        for index in 0..count {
            let previous = offsets.insert(result.offset + index, sequence + index);
            assert_eq!(previous, None, "offset {} acknowledged twice", result.offset + index);
        }
        drop(acknowledged);
        acknowledged_at.lock().unwrap().push(Instant::now());
        sequence += count;
        round += 1;
        std::thread::sleep(pause);
    }
    client.commit_latest().get()
}

/// A load thread (`load_timed`) on `addresses`, with what it acknowledged and when.
struct Load {
    acknowledged: Acknowledged,
    acknowledged_at: AcknowledgedAt,
    /// Appends answered `storage_full`, if the load expects the grid to fill.
    storage_full: Option<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Load {
    fn start(addresses: &[SocketAddr], pause: Duration) -> Load {
        Load::start_recording(addresses, pause, None)
    }

    /// A load that counts appends answered `storage_full` instead of failing on them.
    fn start_filling(addresses: &[SocketAddr], pause: Duration) -> Load {
        Load::start_recording(addresses, pause, Some(Arc::default()))
    }

    fn start_recording(
        addresses: &[SocketAddr],
        pause: Duration,
        storage_full: Option<Arc<AtomicU64>>,
    ) -> Load {
        let acknowledged: Acknowledged = Arc::default();
        let acknowledged_at: AcknowledgedAt = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let record = (acknowledged.clone(), acknowledged_at.clone(), storage_full.clone());
            let (stop, addresses) = (stop.clone(), addresses.to_vec());
            std::thread::spawn(move || load_timed(&addresses, record, stop, pause))
        };
        Load { acknowledged, acknowledged_at, storage_full, stop, thread }
    }

    /// Stops the load; returns the commit number of its last acknowledged write.
    fn stop(self, what: &str) -> (Acknowledged, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let commit = self.thread.join().unwrap_or_else(|_| panic!("the load failed: {what}"));
        (self.acknowledged, commit)
    }
}

/// Reads a whole stream: offset → sequence, asserting each event's data is intact.
fn read_stream(client: &mut Client, stream: u64) -> Vec<u64> {
    let mut sequences = Vec::new();
    loop {
        let body =
            ReadStream { stream, offset_from: sequences.len() as u64, count_max: 1000, wait_ms: 0 };
        let reply = client.read(Operation::ReadStream, body.as_bytes()).expect("read");
        let (head, mut rest) = ReadReplyHeader::read_from_prefix(reply.body).unwrap();
        assert_eq!(head.result, ResultCode::Ok as u32);
        for _ in 0..head.event_count {
            let (record, event, after) = record_next(rest).unwrap();
            let data = event.data;
            assert_eq!(record.stream, stream);
            assert_eq!(record.offset, sequences.len() as u64);
            let data_stream = u64::from_le_bytes(data[..8].try_into().unwrap());
            let sequence = u64::from_le_bytes(data[8..16].try_into().unwrap());
            assert_eq!(data_stream, stream);
            assert_eq!(&data[..EVENT_SIZE], &event_data(stream, sequence));
            sequences.push(sequence);
            rest = after;
        }
        if head.event_count == 0 || head.next >= head.end {
            return sequences;
        }
    }
}

#[test]
fn acknowledged_events_survive_kill_9_and_none_is_applied_twice() {
    // Goal: kill -9 under load at several points; every acknowledged event is readable after
    // the restart, at its offset, exactly once.
    let directory =
        std::env::current_dir().unwrap().join(format!("target/crash-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let _scratch = Scratch(directory.clone());
    let path = directory.join("0_0.kimberlite");
    let status = Command::new(BINARY)
        .args(["format", "--cluster=42", "--replica=0", "--replica-count=1", "--grid-size=256MiB"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let address = address_free();
    let mut replicas = Replicas(vec![start(&path, address)]);
    let mut client = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    for stream in 1..=STREAMS {
        let body = CreateStream { stream, tenant: 1 };
        client.write(Operation::CreateStream, body.as_bytes()).unwrap();
    }
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || load(&[address], acknowledged, stop, Duration::ZERO))
    };
    for delay_ms in [150, 400, 50, 700] {
        std::thread::sleep(Duration::from_millis(delay_ms));
        replicas.0[0].kill().unwrap();
        replicas.0[0].wait().unwrap();
        replicas.0[0] = start(&path, address);
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("the load survived every crash");
    let acknowledged = acknowledged.lock().unwrap();
    let mut seen = std::collections::HashSet::new();
    for stream in 1..=STREAMS {
        let sequences = read_stream(&mut client, stream);
        for sequence in &sequences {
            assert!(seen.insert((stream, *sequence)), "event {sequence} applied twice");
        }
        for (offset, sequence) in acknowledged.get(&stream).into_iter().flatten() {
            assert_eq!(sequences.get(*offset as usize), Some(sequence), "lost acknowledged event");
        }
    }
    assert!(acknowledged.values().map(HashMap::len).sum::<usize>() > 0);
}

#[test]
fn three_replicas_keep_every_acknowledged_event_through_backup_kills() {
    // Goal: a 3-replica cluster on loopback under load; each backup is killed with SIGKILL and
    // restarted in turn. Afterwards every replica holds every acknowledged event, exactly once,
    // and the cluster still commits.
    let cluster = TestCluster::start("backup-kills");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (acknowledged, stop, addresses) =
            (acknowledged.clone(), stop.clone(), addresses.clone());
        // A moderate rate keeps a restarted backup within the primary's WAL window (catching
        // up from further behind needs state sync).
        std::thread::spawn(move || load(&addresses, acknowledged, stop, Duration::from_millis(2)))
    };
    for (backup, delay_ms) in [(1usize, 300), (2, 200), (1, 100)] {
        std::thread::sleep(Duration::from_millis(delay_ms));
        replicas.0[backup].kill().unwrap();
        replicas.0[backup].wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        replicas.0[backup] = start_replica(&paths[backup], &addresses);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let commit = loader.join().expect("the load survived every crash");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
}

/// Reads every stream from each replica directly. Reads carry the commit of the last
/// acknowledged write, so a replica that has not caught up yet does not answer (the client
/// retries).
fn every_replica_holds_every_acknowledged_event(
    addresses: &[SocketAddr],
    acknowledged: &Acknowledged,
    commit: u64,
) {
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.values().map(HashMap::len).sum::<usize>() > 0);
    for address in addresses {
        let mut reader = Client::new(CLUSTER, &[*address], MESSAGE_SIZE_MAX);
        reader.observe_commit(Op(commit));
        for stream in 1..=STREAMS {
            let sequences = read_stream(&mut reader, stream);
            let unique: std::collections::HashSet<_> = sequences.iter().collect();
            assert_eq!(unique.len(), sequences.len(), "an event applied twice at {address}");
            for (offset, sequence) in acknowledged.get(&stream).into_iter().flatten() {
                let found = sequences.get(*offset as usize);
                assert_eq!(found, Some(sequence), "acknowledged event lost at {address}");
            }
        }
    }
}

/// Three formatted replicas on free loopback ports, started, with the test's streams created.
struct TestCluster {
    _scratch: Scratch,
    addresses: Vec<SocketAddr>,
    paths: Vec<PathBuf>,
    replicas: Replicas,
}

impl TestCluster {
    fn start(name: &str) -> TestCluster {
        TestCluster::start_formatted(name, &["--grid-size=256MiB"])
    }

    /// A cluster whose data files are formatted with `options` besides the cluster's own.
    fn start_formatted(name: &str, options: &[&str]) -> TestCluster {
        TestCluster::start_formatted_with(name, options, |_| Vec::new())
    }

    /// `start_formatted`, replica i started with `start_options(i)` besides its addresses.
    fn start_formatted_with(
        name: &str,
        options: &[&str],
        start_options: impl Fn(usize) -> Vec<String>,
    ) -> TestCluster {
        let directory = std::env::current_dir()
            .unwrap()
            .join(format!("target/crash-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let scratch = Scratch(directory.clone());
        let addresses: Vec<SocketAddr> = (0..3).map(|_| address_free()).collect();
        let paths: Vec<PathBuf> =
            (0..3).map(|replica| directory.join(format!("0_{replica}.kimberlite"))).collect();
        for (replica, path) in paths.iter().enumerate() {
            let status = Command::new(BINARY)
                .args(["format", "--cluster=42", "--replica-count=3"])
                .args(options)
                .arg(format!("--replica={replica}"))
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let started = paths.iter().enumerate();
        let started =
            started.map(|(i, path)| start_replica_with(path, &addresses, &start_options(i)));
        let replicas = Replicas(started.collect());
        let mut client = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
        for stream in 1..=STREAMS {
            let body = CreateStream { stream, tenant: 1 };
            client.write(Operation::CreateStream, body.as_bytes()).unwrap();
        }
        TestCluster { _scratch: scratch, addresses, paths, replicas }
    }
}

/// Overwrites one sector of replica `replica`'s WAL prepare ring (slot `slot`) with garbage,
/// as a rotten sector would.
fn wal_sector_corrupt(path: &Path, replica: u8, slot: u64) {
    use std::os::unix::fs::FileExt;
    let config =
        Config { grid_size: 256 * 1024 * 1024, ..Config::new(CLUSTER, ReplicaIndex(replica), 3) };
    let layout = Layout::new(&config);
    let offset = layout.zone_offset(Zone::WalPrepares) + slot * u64::from(config.message_size_max);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[0xA5; 4096], offset).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn three_replicas_keep_every_acknowledged_event_through_primary_kill_and_wal_rot() {
    // Goal: under load, kill -9 the primary (the cluster elects another and carries on), then
    // a backup, restarting each; then stop a backup, rot a sector of its WAL and restart it;
    // then keep a backup down while the others commit more than a WAL's worth of ops, so that
    // it must catch up by state sync. Afterwards every replica holds every acknowledged event
    // exactly once, and the cluster still commits. Prints how long the cluster took from the
    // kill of the primary to its next acknowledged write.
    let cluster = TestCluster::start("primary-kill");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let load = Load::start(&addresses, Duration::from_millis(2));
    let acknowledged_at = load.acknowledged_at.clone();
    std::thread::sleep(Duration::from_millis(500));
    // The primary: the replica whose turn the view is that all three answer with.
    let primary = (view_agreed(&addresses, &[0, 1, 2]) % 3) as usize;
    let killed_at = Instant::now();
    replicas.0[primary].kill().unwrap();
    replicas.0[primary].wait().unwrap();
    let failover = acknowledged_after(&acknowledged_at, killed_at) - killed_at;
    println!(
        "failover: first acknowledged write {} ms after kill -9 of the primary",
        failover.as_millis()
    );
    replicas.0[primary] = start_replica(&paths[primary], &addresses);
    std::thread::sleep(Duration::from_millis(500));
    // A backup of the new view (another replica leads it): the killed one is one either way.
    replicas.0[primary].kill().unwrap();
    replicas.0[primary].wait().unwrap();
    wal_sector_corrupt(&paths[primary], primary as u8, 5);
    replicas.0[primary] = start_replica(&paths[primary], &addresses);
    std::thread::sleep(Duration::from_millis(500));
    // A backup down long enough for the others to checkpoint and wrap their WAL past what it
    // holds: it catches up by state sync.
    replicas.0[primary].kill().unwrap();
    replicas.0[primary].wait().unwrap();
    let ops_before = acknowledged_at.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged_at.lock().unwrap().len() < ops_before + 1_500 {
        assert!(Instant::now() < deadline, "the cluster stopped committing without a backup");
        std::thread::sleep(Duration::from_millis(50));
    }
    replicas.0[primary] = start_replica(&paths[primary], &addresses);
    std::thread::sleep(Duration::from_millis(1_000));
    let (acknowledged, commit) = load.stop("the load survived every crash");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
}

/// Connections to replicas that never send a byte, `count` to each, kept open by a thread
/// that replaces each one the replica closes, until dropped: a flood that holds more sockets
/// than a replica has connection slots, for as long as the test runs.
struct IdleFlood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl IdleFlood {
    fn start(addresses: &[SocketAddr], count: usize) -> IdleFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let (addresses, stopped) = (addresses.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut streams: Vec<Vec<Option<std::net::TcpStream>>> =
                addresses.iter().map(|_| (0..count).map(|_| None).collect()).collect();
            let mut opened = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                for (address, streams) in addresses.iter().zip(streams.iter_mut()) {
                    for stream in streams.iter_mut() {
                        if stream.as_ref().is_none_or(|stream| !idle_stream_open(stream)) {
                            let timeout = Duration::from_millis(100);
                            *stream = std::net::TcpStream::connect_timeout(address, timeout).ok();
                            opened += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            opened
        });
        IdleFlood { stop, thread: Some(thread) }
    }

    /// Ends the flood; returns how many connections it opened.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for IdleFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the replica has not closed `stream` yet.
fn idle_stream_open(stream: &std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = match (&*stream).read(&mut byte) {
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    open
}

#[test]
fn idle_connections_lock_out_neither_clients_nor_replicas() {
    // Goal: while a flood holds 100 idle connections to each replica (more than its connection
    // slots, reopened as fast as the replicas close them), a client under load still gets its
    // writes acknowledged, a restarted replica reconnects to its peers through the flood (the
    // cluster needs it for a quorum once another replica is killed), and afterwards every
    // replica holds every acknowledged event.
    let cluster = TestCluster::start("idle-flood");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let flood = IdleFlood::start(&addresses, 100);
    std::thread::sleep(Duration::from_millis(500));
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (acknowledged, stop, addresses) =
            (acknowledged.clone(), stop.clone(), addresses.clone());
        std::thread::spawn(move || load(&addresses, acknowledged, stop, Duration::from_millis(2)))
    };
    std::thread::sleep(Duration::from_millis(500));
    replicas.0[0].kill().unwrap();
    replicas.0[0].wait().unwrap();
    replicas.0[0] = start_replica(&paths[0], &addresses);
    std::thread::sleep(Duration::from_millis(1_500));
    // Replicas 0 and 1 are the quorum now: replica 0 must have got through to replica 1.
    replicas.0[2].kill().unwrap();
    replicas.0[2].wait().unwrap();
    let written = acknowledged.lock().unwrap().values().map(HashMap::len).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().values().map(HashMap::len).sum::<usize>() < written + 500 {
        assert!(Instant::now() < deadline, "no progress with replicas 0 and 1 under the flood");
        std::thread::sleep(Duration::from_millis(50));
    }
    replicas.0[2] = start_replica(&paths[2], &addresses);
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    let commit = loader.join().expect("the load was served through the flood");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
    assert!(flood.stop() >= 300);
}

/// The view replica `address` is in, from its answer to a `ping_client`; `None` if it does not
/// answer within half a second.
fn replica_view(address: SocketAddr) -> Option<u64> {
    use kimberlite::vsr::header::{Command as Wire, Header};
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut ping = Header::new(Wire::PingClient, CLUSTER);
    ping.client = ClientId(0xF00D_0000_0000 + u64::from(std::process::id()));
    ping.timestamp = 1;
    ping.set_checksum_body(&[]);
    ping.set_checksum();
    stream.write_all(ping.as_bytes()).ok()?;
    let mut bytes = [0u8; std::mem::size_of::<Header>()];
    stream.read_exact(&mut bytes).ok()?;
    let pong = Header::decode(&bytes).ok()?;
    (pong.command() == Some(Wire::PongClient)).then_some(u64::from(pong.view.get()))
}

/// Waits until every replica of `live` answers with the same view, which it returns.
fn view_agreed(addresses: &[SocketAddr], live: &[usize]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Option<u64>> =
            live.iter().map(|replica| replica_view(addresses[*replica])).collect();
        if let Some(Some(view)) = views.first()
            && views.iter().all(|other| *other == Some(*view))
        {
            return *view;
        }
        assert!(Instant::now() < deadline, "the replicas never agreed on a view: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `rank`-th of `samples` in order, `rank` in 0..=100 (nearest rank).
fn percentile(samples: &[Duration], rank: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = (rank * sorted.len()).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Kills of the primary the failover measurement makes: `FAILOVER_KILLS` (set by
/// `scripts/failover.sh`), or a few, to keep the test suite short.
fn failover_kills() -> usize {
    let kills = std::env::var("FAILOVER_KILLS").map(|kills| kills.parse().expect("a number"));
    kills.unwrap_or(2)
}

#[test]
fn failover_time_after_kill_9_of_the_primary() {
    // Goal: measure failover on real processes. Under a steady write load on 3 replicas, find
    // the primary (the view the replicas answer pings with), kill -9 it, and time from the
    // kill to the next acknowledged write; restart it a while later, wait until all three
    // agree on a view, and repeat. Prints every sample and p50/p99/max; every acknowledged
    // event must be on every replica afterwards.
    let cluster = TestCluster::start("failover");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let load = Load::start(&addresses, Duration::from_millis(2));
    let acknowledged_at = load.acknowledged_at.clone();
    let mut samples = Vec::new();
    for kill in 0..failover_kills() {
        let view = view_agreed(&addresses, &[0, 1, 2]);
        std::thread::sleep(Duration::from_millis(500));
        let primary = (view % 3) as usize;
        let killed_at = Instant::now();
        replicas.0[primary].kill().unwrap();
        replicas.0[primary].wait().unwrap();
        let failover = acknowledged_after(&acknowledged_at, killed_at) - killed_at;
        println!(
            "failover: kill {kill}: primary {primary} of view {view}: first acknowledged write \
             {} ms after kill -9",
            failover.as_millis()
        );
        samples.push(failover);
        std::thread::sleep(Duration::from_millis(1_000));
        replicas.0[primary] = start_replica(&paths[primary], &addresses);
    }
    let milliseconds = |duration: Duration| duration.as_millis();
    println!(
        "failover: {} kills: p50 {} ms, p99 {} ms, max {} ms",
        samples.len(),
        milliseconds(percentile(&samples, 50)),
        milliseconds(percentile(&samples, 99)),
        milliseconds(percentile(&samples, 100)),
    );
    view_agreed(&addresses, &[0, 1, 2]);
    let (acknowledged, commit) = load.stop("the load survived every kill");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
}

/// When the first write sent after `instant` was acknowledged, waiting for it up to a minute.
/// Writes go one at a time, each sent as the previous one is acknowledged, so that is the
/// second acknowledgement after `instant`: the first may be a reply the killed primary sent
/// just before it died.
fn acknowledged_after(acknowledged_at: &AcknowledgedAt, instant: Instant) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let second =
            acknowledged_at.lock().unwrap().iter().copied().filter(|at| *at > instant).nth(1);
        if let Some(at) = second {
            return at;
        }
        assert!(Instant::now() < deadline, "no write acknowledged after the primary died");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Flips bytes in the second sector of grid block `address` of the data file at `path`, as a
/// rotten sector would.
fn grid_block_corrupt(path: &Path, replica: u8, address: u64) {
    use std::os::unix::fs::FileExt;
    let config =
        Config { grid_size: 256 * 1024 * 1024, ..Config::new(CLUSTER, ReplicaIndex(replica), 3) };
    let layout = Layout::new(&config);
    let block_size = kimberlite::constants::BLOCK_SIZE as u64;
    let offset = layout.zone_offset(Zone::Grid) + address * block_size + 4096;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut sector = [0u8; 4096];
    file.read_exact_at(&mut sector, offset).unwrap();
    for byte in &mut sector[..64] {
        *byte ^= 0x5A;
    }
    file.write_all_at(&sector, offset).unwrap();
    file.sync_all().unwrap();
}

/// `kimberlite inspect` of the data file at `path`: its exit status and what it printed.
fn inspect(path: &Path) -> (bool, String) {
    let output = Command::new(BINARY).arg("inspect").arg(path).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Reads every stream from the replica at `address` until none answers block_corrupt (a
/// retryable answer while the replica repairs a block from a peer), or the deadline passes.
fn streams_readable(address: SocketAddr, commit: u64, deadline: Instant) {
    let mut reader = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    reader.observe_commit(Op(commit));
    for stream in 1..=STREAMS {
        loop {
            let body = ReadStream { stream, offset_from: 0, count_max: 1000, wait_ms: 0 };
            let reply = reader.read(Operation::ReadStream, body.as_bytes()).expect("read");
            let head = ReadReplyHeader::read_from_prefix(reply.body).unwrap().0;
            if head.result == ResultCode::Ok as u32 {
                break;
            }
            assert_eq!(head.result, ResultCode::BlockCorrupt as u32);
            assert!(Instant::now() < deadline, "stream {stream} still unreadable at {address}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn rotten_grid_blocks_of_a_stopped_backup_are_repaired_from_its_peers() {
    // Goal: under load, past the first checkpoint, a backup is stopped and a sector of its
    // checkpoint's streams-table block and of its first event block rot; `inspect` names both
    // blocks bad but repairable. Restarted, the backup fetches the table block from a peer to
    // open, repairs the event block (on a read or by its scrubber), and serves every
    // acknowledged event, exactly once, as every other replica does.
    let cluster = TestCluster::start("grid-rot");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let load = Load::start(&addresses, Duration::from_millis(1));
    let acknowledged_at = load.acknowledged_at.clone();
    // More ops than one checkpoint interval (1,008 ops for 1,024 WAL slots).
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged_at.lock().unwrap().len() < 1_300 {
        assert!(Instant::now() < deadline, "the cluster stopped committing");
        std::thread::sleep(Duration::from_millis(50));
    }
    replicas.0[1].kill().unwrap();
    replicas.0[1].wait().unwrap();
    let (usable, text) = inspect(&paths[1]);
    assert!(usable, "{text}");
    let table = text
        .split("streams table at block ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|address| address.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no streams table in: {text}"));
    assert!(table > 0, "{text}");
    grid_block_corrupt(&paths[1], 1, table);
    grid_block_corrupt(&paths[1], 1, 0);
    let (usable, text) = inspect(&paths[1]);
    assert!(usable, "repairable from peers: {text}");
    assert!(text.contains("block 0 (events): BAD"), "{text}");
    assert!(text.contains(&format!("block {table} (streams table): BAD")), "{text}");
    replicas.0[1] = start_replica(&paths[1], &addresses);
    std::thread::sleep(Duration::from_millis(1_000));
    let (acknowledged, commit) = load.stop("the load survived the backup's restart");
    streams_readable(addresses[1], commit, Instant::now() + Duration::from_secs(30));
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
}

#[test]
fn a_replica_whose_data_file_is_lost_rejoins_under_load_and_loses_nothing() {
    // Goal: the README's rejoin procedure on real processes, under load: a backup is killed,
    // its data file deleted and formatted again with --rejoin, and restarted. It learns the
    // cluster's view, pulls the others into a newer one and catches up; then the other backup
    // is killed, so that every write from then on needs the rejoined replica's acknowledgement.
    // Afterwards every replica holds every acknowledged event exactly once.
    let cluster = TestCluster::start("rejoin");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let load = Load::start(&addresses, Duration::from_millis(2));
    let acknowledged_at = load.acknowledged_at.clone();
    std::thread::sleep(Duration::from_millis(500));
    let view_before = view_agreed(&addresses, &[0, 1, 2]);
    let lost = (view_before as usize + 1) % 3;
    replica_rejoin(&mut replicas, (&paths, &addresses), lost, &["--grid-size=256MiB"]);
    let view_rejoined = view_agreed(&addresses, &[0, 1, 2]);
    assert!(view_rejoined > view_before, "the rejoin joins a newer view");
    // The replicas agree on the view as soon as they enter it, before its view change is
    // over; killing the other backup then would leave the view change to the rejoining replica,
    // which has no log to vote with (two failures, beyond f). Writes committing again show
    // the view has started.
    let ops_rejoined = acknowledged_at.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged_at.lock().unwrap().len() < ops_rejoined + 20 {
        assert!(Instant::now() < deadline, "the view the rejoin started never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Until it holds the view's log the rejoined replica acknowledges nothing: with the other
    // backup down, the cluster commits only once it does.
    let view = view_agreed(&addresses, &[0, 1, 2]);
    let other = (0..3).find(|replica| *replica != lost && *replica != view as usize % 3).unwrap();
    replicas.0[other].kill().unwrap();
    replicas.0[other].wait().unwrap();
    let ops_before = acknowledged_at.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged_at.lock().unwrap().len() < ops_before + 200 {
        assert!(Instant::now() < deadline, "no quorum with the rejoined replica");
        std::thread::sleep(Duration::from_millis(50));
    }
    replicas.0[other] = start_replica(&paths[other], &addresses);
    std::thread::sleep(Duration::from_millis(1_000));
    let (acknowledged, commit) = load.stop("the load survived the rejoin");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
}

/// The README's procedure for a replica whose data file is lost, on replica `index`: kill it,
/// delete its file, format a new one with `--rejoin` and `options` (those of its peers, but
/// perhaps a larger grid), start it.
fn replica_rejoin(
    replicas: &mut Replicas,
    (paths, addresses): (&[PathBuf], &[SocketAddr]),
    index: usize,
    options: &[&str],
) {
    replicas.0[index].kill().unwrap();
    replicas.0[index].wait().unwrap();
    std::fs::remove_file(&paths[index]).unwrap();
    let status = Command::new(BINARY)
        .args(["format", "--cluster=42", "--replica-count=3", "--rejoin"])
        .args(options)
        .arg(format!("--replica={index}"))
        .arg(&paths[index])
        .status()
        .unwrap();
    assert!(status.success());
    replicas.0[index] = start_replica(&paths[index], addresses);
}

#[test]
fn a_running_cluster_grid_grows_by_replacing_its_replicas_with_larger_files() {
    // Goal: `docs/operating.md`'s procedure to grow a grid, on real processes under load. The
    // 4 MiB grid fills (appends answer storage_full); each replica in turn is replaced with a
    // 32 MiB file (`format --rejoin`) and waited for until it serves reads at the cluster's
    // commit; once the last is, appends succeed again. Every acknowledged event survives on
    // every replica, and each reports room beyond what the old grid held.
    let options = ["--grid-size=4MiB", "--streams-max=64"];
    let cluster = TestCluster::start_formatted("grow", &options);
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let load = Load::start_filling(&addresses, Duration::from_millis(1));
    let storage_full = load.storage_full.clone().expect("a filling load");
    let deadline = Instant::now() + Duration::from_secs(60);
    while storage_full.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the 4 MiB grid never filled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut probe = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
    for index in 0..3 {
        let larger = ["--grid-size=32MiB", "--streams-max=64"];
        replica_rejoin(&mut replicas, (&paths, &addresses), index, &larger);
        // A write commits (even one refused), then the replaced replica must serve reads at
        // its commit: it holds the cluster's state, and the next may be replaced.
        let body = CreateStream { stream: 1, tenant: 1 };
        probe.write(Operation::CreateStream, body.as_bytes()).expect("a write commits");
        let commit = probe.commit_latest().get();
        streams_readable(addresses[index], commit, Instant::now() + Duration::from_secs(60));
    }
    let appended = load.acknowledged_at.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.acknowledged_at.lock().unwrap().len() < appended + 200 {
        assert!(Instant::now() < deadline, "appends never succeeded again after the growth");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (acknowledged, commit) = load.stop("the load survived the growth");
    every_replica_holds_every_acknowledged_event(&addresses, &acknowledged, commit);
    for address in &addresses {
        // Room beyond all of the old grid: the limit is the new one on every replica.
        let mut reader = Client::new(CLUSTER, &[*address], MESSAGE_SIZE_MAX);
        reader.observe_commit(Op(commit));
        let body = StreamInfo { stream: 1 };
        let reply = reader.read(Operation::StreamInfo, body.as_bytes()).expect("stream_info");
        let info = StreamInfoReply::read_from_prefix(reply.body).unwrap().0;
        assert!(info.grid_room_bytes > 4 << 20, "{address}: {info:?}");
    }
}

/// A scratch directory holding one replica's small data file of cluster 42 (64 streams, a
/// 32 MiB grid), and the file's path.
fn formatted_small(name: &str) -> (Scratch, PathBuf) {
    let directory =
        std::env::current_dir().unwrap().join(format!("target/{name}-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let scratch = Scratch(directory.clone());
    let path = directory.join("0_0.kimberlite");
    let status = Command::new(BINARY)
        .args(["format", "--cluster=42", "--replica=0", "--replica-count=1", "--grid-size=32MiB"])
        .args(["--streams-max=64"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    (scratch, path)
}

#[test]
fn a_client_naming_another_cluster_is_told_to_check_cluster() {
    // Goal: a replica closes the connection of a client whose messages name another cluster;
    // `kimberlite client` then fails saying so (every replica closed it twice without a word),
    // instead of waiting out its deadline with "no replica answered in time". With the right
    // cluster the same command works, and it names the missing flag when there is none; then
    // `append --file=-` takes one event per line of standard input (blank lines skipped, CRLF
    // taken as a line end), and `--format=json` reads them back as JSON.
    let (_scratch, path) = formatted_small("wrong-cluster");
    let address = address_free();
    let _replicas = Replicas(vec![start(&path, address)]);
    let client = |cluster: Option<&str>| {
        let mut command = Command::new(BINARY);
        command.args(["client", &format!("--addresses={address}")]);
        command.args(cluster).args(["create-stream", "5"]);
        command.output().unwrap()
    };
    let output = client(Some("--cluster=7"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("closed the connection") && stderr.contains("check --cluster"));
    let output = client(None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'--cluster=...'"));
    let output = client(Some("--cluster=42"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("created stream 5"), "{stdout}");
    let mut append = Command::new(BINARY)
        .args(["client", &format!("--addresses={address}"), "--cluster=42"])
        .args(["append", "5", "--type=line", "--file=-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = append.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"first\n\nsecond\r\nthird\n").unwrap();
    drop(stdin);
    let output = append.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut client = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    let read = ReadStream { stream: 5, offset_from: 0, count_max: 10, wait_ms: 0 };
    let reply = client.read(Operation::ReadStream, read.as_bytes()).unwrap();
    let text = String::from_utf8_lossy(reply.body);
    let (first, second, third) = (text.find("first"), text.find("second"), text.find("third"));
    assert!(first < second && second < third && first.is_some(), "{text}");
    let json = |command: &[&str]| {
        let mut line = Command::new(BINARY);
        line.args(["client", &format!("--addresses={address}"), "--cluster=42", "--format=json"]);
        String::from_utf8_lossy(&line.args(command).output().unwrap().stdout).to_string()
    };
    let stdout = json(&["read", "5", "--offset=1", "--count=1"]);
    assert!(stdout.starts_with(r#"{"result":"ok","events":[{"stream":5,"offset":1,"#), "{stdout}");
    assert!(stdout.contains(r#""data":"second"}],"next":2,"end":3}"#), "{stdout}");
    // After the first positional argument, `-h` is an event, not a request for help.
    let stdout = json(&["append", "5", "--type=flag", "-h"]);
    assert!(stdout.starts_with(r#"{"result":"ok","stream":5,"offset":3,"count":1,"#), "{stdout}");
}

#[test]
fn sigterm_stops_a_replica_with_a_final_line_and_a_file_that_opens() {
    // Goal: SIGTERM ends `kimberlite start` with exit code 0 and a final line naming where the
    // replica stood, after events were acknowledged; the file then inspects as usable and the
    // replica reopens it with every acknowledged event.
    let (_scratch, path) = formatted_small("sigterm");
    let address = address_free();
    let mut child = Command::new(BINARY)
        .args(["start", &format!("--addresses={address}")])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines.next().unwrap().unwrap().contains(" event=replica_listening ") {}
    let mut client = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    let create = CreateStream { stream: 1, tenant: 1 };
    client.write(Operation::CreateStream, create.as_bytes()).unwrap();
    client.write(Operation::Append, &append_body(1, 0, 10)).unwrap();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(status.success(), "{status:?}: {rest:?}");
    assert!(rest.iter().all(|line| log_line_valid(line)), "{rest:?}");
    let stopped = |line: &String| {
        line.contains(" level=info event=replica_stopped ")
            && line.contains(" by=SIGTERM_or_SIGINT ")
    };
    assert!(rest.iter().any(stopped), "{rest:?}");
    assert!(inspect(&path).0, "the file inspects as usable");
    let _replicas = Replicas(vec![start(&path, address)]);
    let mut client = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    assert_eq!(read_stream(&mut client, 1), (0..10).collect::<Vec<u64>>());
}

/// The body of `GET /metrics` at `address`.
fn scrape(address: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body.to_string()
}

/// The value of sample `name` (with its labels, if any) in a scrape.
fn sample(body: &str, name: &str) -> u64 {
    let line = body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' '));
    line.unwrap_or_else(|| panic!("{name} missing from:\n{body}")).parse().unwrap()
}

#[test]
fn metrics_of_a_live_three_replica_cluster_move_as_writes_commit() {
    // Goal: each replica of a 3-replica cluster started with --metrics serves the Prometheus
    // format; exactly one says it is the primary; after 50 appends, every replica's commit,
    // prepares and bytes written have moved by at least as much, the primary timed 50 more
    // writes, and each sees its two peers connected (a dial that failed while a peer was not
    // yet listening is retried within a second).
    let metrics: Vec<SocketAddr> = (0..3).map(|_| address_free()).collect();
    let options = |replica: usize| vec![format!("--metrics={}", metrics[replica])];
    let cluster = TestCluster::start_formatted_with("metrics", &["--grid-size=256MiB"], options);
    let before: Vec<String> = metrics.iter().map(|address| scrape(*address)).collect();
    let primaries = before.iter().filter(|body| sample(body, "kimberlite_replica_primary") == 1);
    assert_eq!(primaries.count(), 1);
    let primary = before.iter().position(|body| sample(body, "kimberlite_replica_primary") == 1);
    let mut client = Client::new(CLUSTER, &cluster.addresses, MESSAGE_SIZE_MAX);
    for sequence in 0..50 {
        client.write(Operation::Append, &append_body(1, sequence, 1)).unwrap();
    }
    let writes = "kimberlite_request_duration_seconds_count{kind=\"write\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    for (replica, address) in metrics.iter().enumerate() {
        let moved = |name: &str, after: &str| sample(after, name) - sample(&before[replica], name);
        let after = loop {
            let after = scrape(*address);
            let peers = sample(&after, "kimberlite_connections{peer=\"replica\"}");
            let caught_up = moved("kimberlite_replica_commit", &after) >= 50 && peers == 2;
            if caught_up || Instant::now() > deadline {
                break after;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(moved("kimberlite_replica_commit", &after) >= 50, "{after}");
        assert!(moved("kimberlite_replica_commits_total", &after) >= 50, "{after}");
        assert!(moved("kimberlite_replica_prepares_total", &after) >= 50, "{after}");
        let written = moved("kimberlite_storage_written_bytes_total", &after);
        assert!(written >= 50 * EVENT_SIZE as u64, "{after}");
        assert_eq!(sample(&after, "kimberlite_connections{peer=\"replica\"}"), 2, "{after}");
        assert_eq!(sample(&after, "kimberlite_replica_status{status=\"normal\"}"), 1);
        if Some(replica) == primary {
            assert!(moved(writes, &after) >= 50, "{after}");
        }
    }
}

/// Whether `line` is a log line: `YYYY-MM-DDTHH:MM:SS.ffffffZ level=LEVEL event=NAME` and then
/// `key=value` fields, a value quoted when it holds spaces.
fn log_line_valid(line: &str) -> bool {
    let Some((timestamp, rest)) = line.split_once(' ') else { return false };
    let shape = timestamp.bytes().zip("dddd-dd-ddTdd:dd:dd.ddddddZ".bytes());
    let timestamp_valid = timestamp.len() == 27
        && shape.into_iter().all(|(byte, want)| match want {
            b'd' => byte.is_ascii_digit(),
            want => byte == want,
        });
    let levels = ["level=error ", "level=warn ", "level=info ", "level=debug "];
    let Some(rest) = levels.iter().find_map(|level| rest.strip_prefix(level)) else {
        return false;
    };
    let mut fields = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let Some((key, value)) = rest.split_once('=') else { return false };
        let (value, after) = match value.strip_prefix('"') {
            Some(quoted) => {
                let mut escaped = false;
                let end = quoted.char_indices().find(|&(_, character)| {
                    let end = character == '"' && !escaped;
                    escaped = character == '\\' && !escaped;
                    end
                });
                let Some((end, _)) = end else { return false };
                ("\"", &quoted[end + 1..])
            }
            None => value.split_once(' ').map_or((value, ""), |(value, after)| (value, after)),
        };
        fields.push((key, value));
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    let keys_valid = fields.iter().all(|(key, _)| {
        !key.is_empty() && key.bytes().all(|byte| byte.is_ascii_lowercase() || byte == b'_')
    });
    timestamp_valid && keys_valid && fields.first().is_some_and(|(key, _)| *key == "event")
}

/// Follows stream `stream` from offset 0 until `stop` is set and it holds `until()` events:
/// returns each event's sequence in the order seen.
fn subscribe(
    addresses: &[SocketAddr],
    stream: u64,
    stop: &AtomicBool,
    until: impl Fn() -> usize,
) -> Vec<u64> {
    let mut client = Client::new(CLUSTER, addresses, MESSAGE_SIZE_MAX);
    let mut subscription = Subscription::Stream { stream, offset: 0 };
    let mut sequences = Vec::new();
    while !stop.load(Ordering::Relaxed) || sequences.len() < until() {
        let wait = Duration::from_millis(500);
        let reply = client.subscription_next(&mut subscription, 1000, wait).expect("a read");
        let (head, mut rest) = ReadReplyHeader::read_from_prefix(reply.body).unwrap();
        assert_eq!(head.result, ResultCode::Ok as u32);
        for _ in 0..head.event_count {
            let (record, event, after) = record_next(rest).unwrap();
            assert_eq!(record.offset, sequences.len() as u64, "a gap or a repeat");
            sequences.push(u64::from_le_bytes(event.data[8..16].try_into().unwrap()));
            rest = after;
        }
    }
    sequences
}

#[test]
fn a_subscriber_sees_every_event_once_in_order_through_a_primary_failover() {
    // Goal: a subscription (reads the replicas hold until events commit) follows a stream
    // under load while the primary is killed and restarted: it sees every event of the stream
    // once, in order, with no gap, exactly what a full read returns afterwards, acknowledged
    // events included.
    let cluster = TestCluster::start("subscribe");
    let (addresses, paths) = (cluster.addresses.clone(), cluster.paths.clone());
    let mut replicas = cluster.replicas;
    let stop = Arc::new(AtomicBool::new(false));
    let stream_length = Arc::new(AtomicU64::new(0));
    let subscriber = {
        let (addresses, stop, length) = (addresses.clone(), stop.clone(), stream_length.clone());
        std::thread::spawn(move || {
            subscribe(&addresses, 1, &stop, || length.load(Ordering::Relaxed) as usize)
        })
    };
    let load = Load::start(&addresses, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));
    let primary = view_agreed(&addresses, &[0, 1, 2]) as usize % 3;
    replicas.0[primary].kill().unwrap();
    replicas.0[primary].wait().unwrap();
    std::thread::sleep(Duration::from_millis(2_000));
    replicas.0[primary] = start_replica(&paths[primary], &addresses);
    std::thread::sleep(Duration::from_millis(500));
    let (acknowledged, commit) = load.stop("the load survived the failover");
    let mut reader = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
    reader.observe_commit(Op(commit));
    let stream = read_stream(&mut reader, 1);
    stream_length.store(stream.len() as u64, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let seen = subscriber.join().expect("the subscriber survived the failover");
    assert_eq!(seen, stream);
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged[&1].len() > 100);
    for (offset, sequence) in &acknowledged[&1] {
        assert_eq!(seen.get(*offset as usize), Some(sequence), "acknowledged event not seen");
    }
}

#[test]
fn client_tail_prints_events_as_they_commit() {
    // Goal: `kimberlite client tail` prints events appended after it started, as they commit,
    // one line each, and `tail --log --format=json` one JSON object per event; a linearizable
    // read then returns them too.
    let (_scratch, path) = formatted_small("tail");
    let address = address_free();
    let _replicas = Replicas(vec![start(&path, address)]);
    let client_command = |arguments: &[&str]| {
        let mut command = Command::new(BINARY);
        command.args(["client", &format!("--addresses={address}"), "--cluster=42"]);
        command.args(arguments);
        command
    };
    let tail = |arguments: &[&str]| {
        let mut child = client_command(arguments).stdout(Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    };
    // The stream does not exist yet: the tail waits for it.
    let (mut stream_tail, mut stream_lines) = tail(&["tail", "9"]);
    let (mut log_tail, mut log_lines) = tail(&["--format=json", "tail", "--log"]);
    std::thread::sleep(Duration::from_millis(300));
    let append = client_command(&["append", "9", "--type=t", "--expected-offset=no-stream"])
        .args(["one", "two"])
        .output()
        .unwrap();
    assert!(append.status.success(), "{append:?}");
    let first = stream_lines.next().unwrap().unwrap();
    assert!(first.starts_with("stream 9 offset 0 ") && first.ends_with(": one"), "{first}");
    assert!(stream_lines.next().unwrap().unwrap().ends_with(": two"));
    let object = log_lines.next().unwrap().unwrap();
    assert!(object.starts_with(r#"{"stream":9,"offset":0,"position":0,"#), "{object}");
    assert!(object.ends_with(r#""data":"one"}"#), "{object}");
    let read = client_command(&["read", "9", "--linearizable"]).output().unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success() && text.contains(": one\n") && text.contains(": two\n"));
    for child in [&mut stream_tail, &mut log_tail] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn status_reports_each_replica_and_says_which_is_down() {
    // Goal: `kimberlite status` asks each replica over the wire and prints a row each: all
    // normal, one primary, commits equal once writes stop; after a backup is killed its row
    // says it is unreachable while the others still answer, in the table and in JSON.
    let cluster = TestCluster::start("status");
    let (addresses, mut replicas) = (cluster.addresses.clone(), cluster.replicas);
    let mut client = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
    client.write(Operation::Append, &append_body(1, 0, 10)).unwrap();
    let list = addresses.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");
    let status = |format: &str| {
        let output = Command::new(BINARY)
            .args(["status", &format!("--addresses={list}"), "--cluster=42", format])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    std::thread::sleep(Duration::from_millis(300));
    let table = status("--format=text");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows.iter().all(|row| row.contains(" normal ")), "{table}");
    assert_eq!(rows.iter().filter(|row| row.contains(" yes ")).count(), 1, "{table}");
    let primary = view_agreed(&addresses, &[0, 1, 2]) as usize % 3;
    let backup = (primary + 1) % 3;
    replicas.0[backup].kill().unwrap();
    replicas.0[backup].wait().unwrap();
    let json = status("--format=json");
    assert_eq!(json.matches(r#""reachable":false"#).count(), 1, "{json}");
    assert_eq!(json.matches(r#""status":"normal""#).count(), 2, "{json}");
    assert!(json.contains(&format!(r#""primary":{primary}"#)), "{json}");
    let table = status("--format=text");
    assert!(table.lines().nth(1 + backup).unwrap().contains("unreachable"), "{table}");
}

#[test]
fn start_takes_its_addresses_and_data_file_from_the_environment() {
    // Goal: `kimberlite start` with no argument runs the replica that KIMBERLITE_ADDRESSES and
    // KIMBERLITE_DATA_FILE name, as the systemd unit starts it, at the log level that
    // KIMBERLITE_LOG_LEVEL names: at `warn`, a replica that starts, serves and stops writes no
    // line at all (its lines on the way are `info`).
    let (_scratch, path) = formatted_small("environment");
    let address = address_free();
    let child = Command::new(BINARY)
        .arg("start")
        .env("KIMBERLITE_ADDRESSES", address.to_string())
        .env("KIMBERLITE_DATA_FILE", &path)
        .env("KIMBERLITE_LOG_LEVEL", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = Client::new(CLUSTER, &[address], MESSAGE_SIZE_MAX);
    let create = CreateStream { stream: 1, tenant: 1 };
    client.write(Operation::CreateStream, create.as_bytes()).unwrap();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn subscription_latency_from_commit_to_subscriber() {
    // Goal: a subscriber following stream 1 of three replicas, which one writer appends to
    // event by event, sees every event once, in order. How soon it sees each, after the
    // writer's acknowledgement (the commit, as the client sees it), is printed, not asserted
    // (machines differ): cargo test --release --test crash -- --nocapture latency.
    let cluster = TestCluster::start("latency");
    let addresses = cluster.addresses.clone();
    let acknowledged: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let count = 1_000usize;
    let subscriber = {
        let (addresses, seen) = (addresses.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut client = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
            let mut subscription = Subscription::Stream { stream: 1, offset: 0 };
            while seen.lock().unwrap().len() < count {
                let wait = Duration::from_millis(1_000);
                let reply = client.subscription_next(&mut subscription, 1000, wait).unwrap();
                let head = ReadReplyHeader::read_from_prefix(reply.body).unwrap().0;
                let now = Instant::now();
                seen.lock().unwrap().extend((0..head.event_count).map(|_| now));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut writer = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
    for sequence in 0..count as u64 {
        writer.write(Operation::Append, &append_body(1, sequence, 1)).unwrap();
        acknowledged.lock().unwrap().push(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    subscriber.join().unwrap();
    let (acknowledged, seen) = (acknowledged.lock().unwrap(), seen.lock().unwrap());
    assert_eq!(seen.len(), count);
    let mut late: Vec<Duration> = Vec::new();
    let mut early = 0;
    for (acked, saw) in acknowledged.iter().zip(seen.iter()) {
        match saw.checked_duration_since(*acked) {
            Some(delay) => late.push(delay),
            None => early += 1,
        }
    }
    late.extend(std::iter::repeat_n(Duration::ZERO, early));
    println!(
        "subscriber after the writer's acknowledgement: p50 {:?}, p99 {:?}, max {:?}; \
         {early} of {count} seen before the acknowledgement (counted as 0)",
        percentile(&late, 50),
        percentile(&late, 99),
        percentile(&late, 100),
    );
    let mut reader = Client::new(CLUSTER, &addresses, MESSAGE_SIZE_MAX);
    assert_eq!(read_stream(&mut reader, 1), (0..count as u64).collect::<Vec<u64>>());
}

/// The raw bytes of every record of the cluster's log (each record with its payload), in
/// order: what an import must reproduce exactly.
fn log_records(addresses: &[SocketAddr], commit: u64) -> Vec<Vec<u8>> {
    let mut client = Client::new(CLUSTER, addresses, MESSAGE_SIZE_MAX);
    client.observe_commit(Op(commit));
    let mut records = Vec::new();
    loop {
        let body = ReadLog { position_from: records.len() as u64, count_max: 4096, wait_ms: 0 };
        let reply = client.read(Operation::ReadLog, body.as_bytes()).expect("read_log");
        let (head, mut rest) = ReadReplyHeader::read_from_prefix(reply.body).unwrap();
        assert_eq!(head.result, ResultCode::Ok as u32);
        for _ in 0..head.event_count {
            let (_, _, after) = record_next(rest).unwrap();
            records.push(rest[..rest.len() - after.len()].to_vec());
            rest = after;
        }
        if head.next >= head.end {
            return records;
        }
    }
}

#[test]
fn export_while_serving_then_import_round_trips_the_log_with_identical_chains() {
    // Goal: `kimberlite export` of a 3-replica cluster taken while a load appends writes a
    // file whose import into a fresh single-replica cluster reproduces the exported prefix of
    // the log byte for byte (streams, offsets, positions, timestamps, payloads, chains); a
    // truncated copy of the file imports nothing; the import prints its throughput, and a
    // second import into the now non-empty cluster is refused with a clear error and changes
    // nothing.
    let cluster = TestCluster::start("export");
    let load = Load::start(&cluster.addresses, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(1_500));
    let file = cluster._scratch.0.join("log.export");
    let list: Vec<String> = cluster.addresses.iter().map(ToString::to_string).collect();
    let output = Command::new(BINARY)
        .args(["export", &format!("--addresses={}", list.join(",")), "--cluster=42"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{output:?}");
    let (_, commit) = load.stop("the load ran through the export");
    let exported: u64 =
        stdout.strip_prefix("exported ").unwrap().split(' ').next().unwrap().parse().unwrap();
    let source = log_records(&cluster.addresses, commit);
    assert!(exported > 100 && exported as usize <= source.len(), "{stdout}");
    let (_target_scratch, path) = formatted_small("import");
    let address = address_free();
    let _target = Replicas(vec![start(&path, address)]);
    let import = |file: &Path| {
        Command::new(BINARY)
            .args(["import", &format!("--addresses={address}"), "--cluster=42"])
            .arg(file)
            .output()
            .unwrap()
    };
    // A truncated copy is refused before anything is sent.
    let truncated = cluster._scratch.0.join("log.truncated");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let output = import(&truncated);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("truncated"), "{output:?}");
    assert!(log_records(&[address], 0).is_empty());
    let output = import(&file);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.starts_with(&format!("imported {exported} events of 3 streams")), "{stdout}");
    println!("{stdout}");
    let imported = log_records(&[address], 0);
    assert_eq!(imported, source[..exported as usize]);
    let again = import(&file);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("import into a fresh cluster"), "{stderr}");
    assert_eq!(log_records(&[address], 0), imported);
}
