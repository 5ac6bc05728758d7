//! `kimberlite start`: opens the data file, brings the replica up from it, and runs the event
//! loop: one thread, one io_uring ring for the data file and the sockets.
//!
//! Startup allocates everything (the message pool, the replica, the bus); the loop then arms
//! the allocation guard and allocates nothing. Each turn of the loop waits on the ring until a
//! completion arrives or the next 10 ms tick is due, then hands disk completions to the replica,
//! network completions to the bus, received messages to the replica, ticks both every `TICK_MS`,
//! and moves the replica's outgoing messages to the bus. The replica stops rather than diverge:
//! its `Failed` status ends the loop with its reason. SIGTERM or SIGINT end it too: the loop
//! takes no new message, lets its disk I/O in flight land, and prints where the replica stood.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::constants::{
    INVALID_LOG_TICKS, IO_OPERATIONS_MAX, MESSAGE_SIZE_SMALL, REQUEST_TIMING_EXPIRY_TICKS,
    SECTOR_SIZE, STOP_DRAIN_TICKS, TICK_MS,
};
use crate::io::data_file;
use crate::io::log::{Quoted, log};
use crate::io::message_bus::MessageBus;
use crate::io::metrics::{MetricsServer, RequestTimer};
use crate::io::ring::{Completed, Wait};
use crate::io::storage::IoStorage;
use crate::state_machine::StateMachine;
use crate::stdx::allocation_guard;
use crate::vsr::header::{Command, ReplicaIndex, View};
use crate::vsr::layout::Config;
use crate::vsr::message_pool::{messages_max_replica, messages_small_max_replica, replica_pool};
use crate::vsr::replica::{Destination, Replica, Status};
use crate::vsr::storage::Storage;
use crate::vsr::superblock::SuperBlock;

/// What `kimberlite start` takes besides the data file.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Every replica's address, indexed by replica: this one listens on its own.
    pub addresses: Vec<SocketAddr>,
    /// Where to serve the Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Runs the replica of the data file at `path`, listening on its entry of the addresses, until
/// it fails, or SIGTERM or SIGINT stops it (with a final line, once its writes in flight have
/// landed). Returns only with an error an operator can act on.
pub fn start(path: &Path, options: &StartOptions) -> Result<(), String> {
    super::signal::catch_interrupts().map_err(|error| format!("sigaction: {error}"))?;
    let running = AtomicBool::new(true);
    start_while(path, options, &running, |_, _| {}).map(|_| ())
}

/// `start`, returning once `running` is false (checked every turn of the loop, so within a
/// tick) with the count of heap allocations the loop made (zero, or a bug). `listening` gets
/// the bound addresses of the replica and of its metrics (tests listen on port 0).
pub(crate) fn start_while(
    path: &Path,
    options: &StartOptions,
    running: &AtomicBool,
    listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<u64, String> {
    let addresses = &options.addresses[..];
    let data_file = data_file::open(path, false).map_err(|error| error.to_string())?;
    let mut storage = IoStorage::new(data_file.file, true)
        .map_err(|error| format!("{}: io_uring setup failed: {error}", path.display()))?;
    let config = config_read(&mut storage, path)?;
    let address = address_of_replica(&config, addresses)?;
    let pool = replica_pool(config.message_size_max as usize, config.clients_max as usize);
    let mut replica = Replica::new(&config, pool.clone(), timeout_seed());
    replica_open(&mut replica, &mut storage)
        .map_err(|reason| format!("{}: cannot open the replica: {reason}", path.display()))?;
    let message_size_max = config.message_size_max as usize;
    let mut bus = MessageBus::new(
        pool,
        config.cluster,
        config.replica,
        config.replica_count,
        message_size_max,
        config.clients_max as usize,
    );
    let bound = bus
        .listen(storage.io(), address)
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    bus.connect_to_replicas(storage.io(), addresses);
    let metrics = metrics_listen(&mut storage, options.metrics)?;
    print_memory(&config);
    log!(
        Info,
        ReplicaListening,
        "replica={} address={bound} cluster={} op={} commit={} checkpoint={}",
        config.replica,
        config.cluster,
        replica.op(),
        replica.commit_min(),
        replica.checkpoint_op(),
    );
    let metrics_address = metrics.as_ref().map(MetricsServer::address);
    if let Some(address) = metrics_address {
        log!(Info, MetricsListening, "replica={} address={address}", config.replica);
    }
    listening(bound, metrics_address);
    let logged = (replica.view(), replica.status(), 0);
    let mut server = Server {
        replica,
        storage,
        bus,
        metrics,
        requests: RequestTimer::new(config.clients_max as usize),
        allocations_logged: false,
        logged,
        invalid_logged: (0, 0),
        ticks: 0,
    };
    allocation_guard::arm();
    let result = server.run(running);
    let allocations = allocation_guard::allocations_since_armed();
    allocation_guard::disarm();
    server.stopped_log(result).map_err(|reason| format!("{}: {reason}", path.display()))?;
    Ok(allocations)
}

/// The metrics endpoint, if `address` asks for one.
fn metrics_listen(
    storage: &mut IoStorage,
    address: Option<SocketAddr>,
) -> Result<Option<MetricsServer>, String> {
    let Some(address) = address else { return Ok(None) };
    let server = MetricsServer::listen(storage.io(), address)
        .map_err(|error| format!("cannot listen for metrics on {address}: {error}"))?;
    Ok(Some(server))
}

/// Prints what startup allocated (all of what the replica will ever hold), and what for: the
/// message buffers, most of it, grow with `message_size_max` and `clients_max`.
fn print_memory(config: &Config) {
    let mib = |bytes: usize| bytes as f64 / f64::from(1 << 20);
    let clients_max = config.clients_max as usize;
    let large = messages_max_replica();
    let small = messages_small_max_replica(clients_max);
    let message_size_max = config.message_size_max as usize;
    let (streams_table, block_buffers) = StateMachine::memory_bytes(config);
    log!(
        Info,
        ReplicaMemory,
        "replica={} allocated_mib={:.0} messages_large_mib={:.0} messages_large={large} \
         message_large_kib={} messages_small_mib={:.0} messages_small={small} \
         message_small_kib={} clients_max={clients_max} replies_mib={:.0} streams_table_mib={:.0} \
         streams_max={} grid_buffers_mib={:.0}",
        config.replica,
        mib(allocation_guard::bytes_allocated() as usize),
        mib(large * message_size_max),
        message_size_max / 1024,
        mib(small * MESSAGE_SIZE_SMALL),
        MESSAGE_SIZE_SMALL / 1024,
        mib(clients_max * SECTOR_SIZE),
        mib(streams_table),
        config.streams_max,
        mib(block_buffers),
    );
}

/// The cluster configuration stored in the data file's superblock.
fn config_read(storage: &mut IoStorage, path: &Path) -> Result<Config, String> {
    let superblock = SuperBlock::open_blocking(storage)
        .map_err(|error| format!("{}: cannot read the superblock: {error}", path.display()))?;
    let config = superblock.working().config();
    if let Some(reason) = config.invalid() {
        return Err(format!(
            "{}: the superblock's configuration is invalid: {reason}",
            path.display()
        ));
    }
    Ok(config)
}

/// The address this replica listens on: its own entry of the cluster's addresses.
fn address_of_replica(config: &Config, addresses: &[SocketAddr]) -> Result<SocketAddr, String> {
    assert!(config.invalid().is_none(), "the configuration was validated when read");
    assert!(config.replica < ReplicaIndex(config.replica_count));
    if addresses.len() != usize::from(config.replica_count) {
        return Err(format!(
            "--addresses lists {} addresses; the cluster has {} replica(s), one address each",
            addresses.len(),
            config.replica_count
        ));
    }
    Ok(addresses[usize::from(config.replica)])
}

/// The seed of the replica's timeout jitter: the OS's randomness, so that the replicas of a
/// cluster do not time out in step.
fn timeout_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}

/// Opens the replica, feeding it disk completions until it is `Normal` or has failed, or
/// until its open waits for a peer (a grid block of its checkpoint to repair): the event loop
/// then goes on with the bus running.
fn replica_open(replica: &mut Replica, storage: &mut IoStorage) -> Result<(), &'static str> {
    replica.open(storage);
    let mut completions = Vec::with_capacity(IO_OPERATIONS_MAX);
    loop {
        match replica.status() {
            Status::Normal | Status::ViewChange => return Ok(()),
            Status::Failed => return Err(replica.failure().unwrap_or("no reason given")),
            Status::Init | Status::Recovering => {}
        }
        if storage.in_flight() == 0 {
            if replica.open_waits_for_peers() {
                log!(
                    Warn,
                    OpenRepair,
                    "replica={} reason=\"a grid block of the checkpoint is bad; fetching it from \
                     a peer\"",
                    replica.config().replica
                );
                return Ok(());
            }
            return Err("opening stopped with no disk operation in flight");
        }
        storage.poll(&mut completions, IO_OPERATIONS_MAX);
        for completion in completions.drain(..) {
            replica.on_storage_completion(storage, completion);
        }
    }
}

mod exposition;

struct Server {
    replica: Replica,
    storage: IoStorage,
    bus: MessageBus,
    metrics: Option<MetricsServer>,
    requests: RequestTimer,
    allocations_logged: bool,
    /// What `events_log` last reported: view, status, state syncs.
    logged: (View, Status, u64),
    /// Invalid peer messages counted when last logged, and the tick.
    invalid_logged: (u64, u64),
    ticks: u64,
}

impl Server {
    /// The event loop. Returns when the replica fails, or once `running` is false.
    fn run(&mut self, running: &AtomicBool) -> Result<(), &'static str> {
        let tick = Duration::from_millis(TICK_MS);
        let mut tick_next = Instant::now() + tick;
        while running.load(Ordering::Relaxed) && !super::signal::interrupted() {
            let timeout = tick_next.saturating_duration_since(Instant::now());
            let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            self.storage.io().run(Wait::Timeout { timeout_ns });
            self.completions_dispatch();
            self.inbox_deliver();
            let now = Instant::now();
            if now >= tick_next {
                // After a stall, tick once and resume the cadence rather than catch up in a
                // burst: timeouts count ticks of the replica's own progress.
                tick_next = if now - tick_next > tick { now + tick } else { tick_next + tick };
                self.ticks += 1;
                self.replica.on_tick(&mut self.storage, realtime_ns());
                self.bus.on_tick(self.storage.io());
                self.metrics_tick(now);
                self.outbox_send();
                self.events_log();
                crate::io::log::flush();
            }
            if self.replica.status() == Status::Failed {
                return Err(self.replica.failure().unwrap_or("no reason given"));
            }
            self.allocations_check();
        }
        self.drain();
        Ok(())
    }

    /// The replica's last line: why it stopped, and where it stood.
    fn stopped_log(&self, result: Result<(), &'static str>) -> Result<(), String> {
        let (replica, in_flight) = (&self.replica, self.storage.in_flight());
        let index = replica.config().replica;
        if let Err(reason) = result {
            log!(Error, ReplicaFailed, "replica={index} reason={}", Quoted(reason));
            return Err(format!("replica stopped: {reason}"));
        }
        let signal = super::signal::interrupted();
        log!(
            Info,
            ReplicaStopped,
            "replica={index} by={} view={} op={} commit={} checkpoint={} \
             writes_in_flight={in_flight} writes_in_flight_acknowledged=0",
            if signal { "SIGTERM_or_SIGINT" } else { "caller" },
            replica.view(),
            replica.op(),
            replica.commit_min(),
            replica.checkpoint_op(),
        );
        Ok(())
    }

    /// Stopping: lets the disk I/O in flight land (for at most `STOP_DRAIN_TICKS`), taking no
    /// new message and no tick, so that what the replica wrote last is on disk when it exits.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(STOP_DRAIN_TICKS * TICK_MS);
        while self.storage.in_flight() > 0 && Instant::now() < deadline {
            let timeout_ns = TICK_MS * 1_000_000;
            self.storage.io().run(Wait::Timeout { timeout_ns });
            self.completions_dispatch();
        }
    }

    /// Hands each finished operation to its owner: disk to the replica, network to the bus.
    fn completions_dispatch(&mut self) {
        while let Some(completed) = self.storage.io().pop_completed() {
            let metrics = self.metrics.as_ref();
            if metrics.is_some_and(|metrics| metrics.owns(&completed.operation)) {
                self.metrics_complete(completed);
            } else if completed.operation.is_network() {
                self.bus.on_completion(self.storage.io(), completed);
            } else {
                let completion = self.storage.complete(completed);
                self.replica.on_storage_completion(&mut self.storage, completion);
                self.outbox_send();
            }
        }
    }

    /// Gives the replica every message received, then lets stalled connections receive again.
    fn inbox_deliver(&mut self) {
        while let Some(message) = self.bus.receive() {
            if message.header().command() == Some(Command::Request) {
                let body = message.message().body();
                self.requests.arrived(message.header(), body, Instant::now());
            }
            self.replica.on_message(&mut self.storage, message);
            self.outbox_send();
        }
        self.bus.flush(self.storage.io());
    }

    /// Moves the replica's outgoing messages to the bus. A message the bus cannot take (the
    /// client or replica is not connected, or its queue is full) is dropped: clients retry, and
    /// so does the protocol.
    fn outbox_send(&mut self) {
        while let Some((destination, message)) = self.replica.poll_send() {
            match destination {
                Destination::Client(client) => {
                    if message.header().command() == Some(Command::Reply) {
                        self.requests.replied(message.header(), Instant::now());
                    }
                    self.bus.send_to_client(self.storage.io(), client, message);
                }
                Destination::Replica(replica) => {
                    self.bus.send_to_replica(self.storage.io(), replica, message);
                }
            }
        }
    }

    /// The metrics endpoint's tick, and the expiry of requests never answered here.
    fn metrics_tick(&mut self, now: Instant) {
        if let Some(metrics) = &mut self.metrics {
            metrics.on_tick(self.storage.io());
        }
        if self.ticks.is_multiple_of(REQUEST_TIMING_EXPIRY_TICKS) {
            self.requests.expire(now, Duration::from_millis(REQUEST_TIMING_EXPIRY_TICKS * TICK_MS));
        }
    }

    /// Hands a completion to the metrics endpoint; answers a request that has arrived.
    fn metrics_complete(&mut self, completed: Completed) {
        let metrics = self.metrics.as_mut().expect("it owns the operation");
        let Some((index, request)) = metrics.on_completion(self.storage.io(), completed) else {
            return;
        };
        let mut metrics = self.metrics.take().expect("it owns the operation");
        let endpoint = metrics.metrics;
        let response = metrics.render(index, request, |out| self.metrics_render(out, &endpoint));
        metrics.respond(self.storage.io(), index, response);
        self.metrics = Some(metrics);
    }

    /// Tells the operator when the replica enters a view or installs a checkpoint by state
    /// sync, and about invalid peer messages.
    fn events_log(&mut self) {
        let metrics = self.replica.metrics();
        self.invalid_log(metrics.messages_invalid);
        let now = (self.replica.view(), self.replica.status(), metrics.state_syncs);
        if now == self.logged {
            return;
        }
        let status = match now.1 {
            Status::Normal if self.replica.is_primary() => "normal_primary",
            Status::Normal => "normal_backup",
            Status::ViewChange => "view_change",
            _ => "stopped",
        };
        let (replica, view) = (self.replica.config().replica, now.0);
        let synced = now.2 != self.logged.2;
        log!(
            Info,
            ViewEntered,
            "replica={replica} view={view} status={status} op={} commit={} checkpoint={} \
             state_synced={synced}",
            self.replica.op(),
            self.replica.commit_min(),
            self.replica.checkpoint_op(),
        );
        self.logged = now;
    }

    /// Peer messages dropped as invalid, at most once every `INVALID_LOG_TICKS`.
    fn invalid_log(&mut self, invalid_count: u64) {
        let (logged_count, logged_tick) = self.invalid_logged;
        if invalid_count == logged_count || self.ticks < logged_tick + INVALID_LOG_TICKS {
            return;
        }
        let reason = self.replica.invalid_last().unwrap_or("unknown");
        let dropped = invalid_count - logged_count;
        let replica = self.replica.config().replica;
        log!(
            Warn,
            PeerMessagesInvalid,
            "replica={replica} dropped={dropped} reason={}",
            Quoted(reason)
        );
        self.invalid_logged = (invalid_count, self.ticks);
    }

    /// An allocation after startup is a bug (static allocation is proven by the tests): say so
    /// once, and keep serving.
    fn allocations_check(&mut self) {
        if !self.allocations_logged && allocation_guard::allocations_since_armed() > 0 {
            self.allocations_logged = true;
            log!(
                Error,
                AllocationBug,
                "allocations_after_startup={} logged=once",
                allocation_guard::allocations_since_armed()
            );
        }
    }
}

/// The wall clock, for prepare timestamps (the replica keeps them monotonic).
fn realtime_ns() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use zerocopy::{FromBytes, IntoBytes};

    use super::*;
    use crate::constants::HEADER_SIZE;
    use crate::io::format::format_file;
    use crate::io::scratch::ScratchDirectory;
    use crate::vsr::header::{ClientId, ClusterId, Command, Header, Op, Operation};

    fn small_config(replica_count: u8) -> Config {
        Config {
            message_size_max: 64 * 1024,
            grid_size: 8 * 1024 * 1024,
            streams_max: 64,
            ..Config::small(ClusterId(21), ReplicaIndex(0), replica_count)
        }
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Options for a cluster of `count` replicas on any free port, without metrics.
    fn on(count: usize) -> StartOptions {
        StartOptions { addresses: vec![localhost(); count], metrics: None }
    }

    /// Sends `header` (with an empty body) and reads back one message's header.
    fn exchange(client: &mut TcpStream, mut header: Header) -> Header {
        header.set_checksum_body(&[]);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        client.write_all(header.as_bytes()).unwrap();
        let mut bytes = [0u8; HEADER_SIZE];
        client.read_exact(&mut bytes).unwrap();
        let reply = Header::read_from_bytes(&bytes).unwrap();
        assert!(reply.valid_checksum());
        let mut body = vec![0u8; reply.size as usize - HEADER_SIZE];
        client.read_exact(&mut body).unwrap();
        assert!(reply.valid_checksum_body(&body));
        reply
    }

    /// A `GET path` over HTTP/1.1: the status line and the body, which must be as long as its
    /// Content-Length says.
    fn http_get(address: SocketAddr, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let length = head.lines().find_map(|line| line.strip_prefix("Content-Length: ")).unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    #[test]
    fn start_refuses_what_it_cannot_serve() {
        // Goal: a missing data file and address lists of the wrong length (for a cluster of
        // three and of one) each end `start` with an error that says so, before listening.
        let scratch = ScratchDirectory::new("server-refusals");
        let missing = start(&scratch.path.join("missing"), &on(1)).unwrap_err();
        assert!(missing.contains("no such data file"), "{missing}");
        let three = scratch.path.join("0_3.kimberlite");
        format_file(&three, &small_config(3)).unwrap();
        let error = start(&three, &on(2)).unwrap_err();
        assert!(error.contains("lists 2 addresses; the cluster has 3"), "{error}");
        let one = scratch.path.join("0_1.kimberlite");
        format_file(&one, &small_config(1)).unwrap();
        let error = start(&one, &on(2)).unwrap_err();
        assert!(error.contains("lists 2 addresses"), "{error}");
    }

    #[test]
    fn started_replica_answers_clients_over_tcp_without_allocating() {
        // Goal: a formatted single-replica data file starts and listens; over a real socket a
        // ping_client gets its pong_client and a register request gets its reply (written to the
        // WAL, committed, answered); a scrape of its metrics shows that commit, the request's
        // and the WAL write's timing, and the client's session and connection, and another path
        // gets 404, and a connection that sends nothing is closed once its request is late; the
        // loop allocates nothing after startup, scrapes included, and the replica stops cleanly
        // when asked.
        let scratch = ScratchDirectory::new("server-start");
        let path = scratch.path.join("0_0.kimberlite");
        let config = small_config(1);
        format_file(&path, &config).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let server = {
            let running = running.clone();
            std::thread::spawn(move || {
                let options =
                    StartOptions { addresses: vec![localhost()], metrics: Some(localhost()) };
                start_while(&path, &options, &running, |bound, metrics| {
                    address_sender.send((bound, metrics.unwrap())).unwrap()
                })
            })
        };
        let (address, metrics) = address_receiver.recv_timeout(Duration::from_secs(30)).unwrap();
        let mut client = TcpStream::connect(address).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let client_id: ClientId = ClientId(0x5EED);
        let mut ping = Header::new(Command::PingClient, config.cluster);
        ping.client = client_id;
        ping.timestamp = 77;
        let pong = exchange(&mut client, ping);
        assert_eq!(pong.command(), Some(Command::PongClient));
        assert_eq!((pong.client, pong.timestamp), (client_id, 77));
        let mut register = Header::new(Command::Request, config.cluster);
        register.client = client_id;
        register.operation = Operation::Register as u8;
        let reply = exchange(&mut client, register);
        assert_eq!(reply.command(), Some(Command::Reply));
        assert_eq!(reply.client, client_id);
        assert_eq!(reply.op, Op(1));
        let (status, body) = http_get(metrics, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        for line in [
            "kimberlite_replica_commit 1\n",
            "kimberlite_replica_status{status=\"normal\"} 1\n",
            "kimberlite_replica_primary 1\n",
            "kimberlite_client_sessions 1\n",
            "kimberlite_request_duration_seconds_count{kind=\"write\"} 1\n",
            "kimberlite_journal_write_duration_seconds_count{zone=\"prepares\"} 1\n",
            "kimberlite_connections{peer=\"client\"} 1\n",
            "kimberlite_metrics_scrapes_total 0\n",
        ] {
            assert!(body.contains(line), "{line} missing from:\n{body}");
        }
        let (status, body) = http_get(metrics, "/other");
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
        assert!(http_get(metrics, "/").1.contains("kimberlite_metrics_scrapes_total 1\n"));
        // A connection that sends no request is closed once its request is late, and counted.
        let mut idle = TcpStream::connect(metrics).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(idle.read(&mut [0u8; 1]).unwrap(), 0, "closed by the replica");
        let body = http_get(metrics, "/metrics").1;
        assert!(body.contains("kimberlite_metrics_connections_timed_out_total 1\n"), "{body}");
        running.store(false, Ordering::Relaxed);
        let allocations = server.join().unwrap().unwrap();
        assert_eq!(allocations, 0, "the event loop allocated after startup");
    }
}
