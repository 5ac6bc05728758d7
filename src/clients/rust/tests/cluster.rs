//! The client against a real local cluster: three `kimberlite start` processes on loopback,
//! formatted and started by the test (the workspace's build puts the binary beside the test's).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use kimberlite_client::{Client, Error, EventData, Expected, Options, ResultCode, Start};

/// The `kimberlite` binary of this build: `target/<profile>/kimberlite`, beside `deps/`.
fn binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let binary = test.parent().unwrap().parent().unwrap().join("kimberlite");
    assert!(binary.exists(), "{} missing: run `cargo test --workspace`", binary.display());
    binary
}

/// A loopback address free now, from a range apart per process.
fn address_free() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first = std::process::id() % 1_000 * 20 + 7;
    loop {
        let offset = (first + NEXT.fetch_add(1, Ordering::Relaxed)) % 20_000;
        let address = SocketAddr::from(([127, 0, 0, 1], 10_000 + offset as u16));
        if TcpListener::bind(address).is_ok() {
            return address;
        }
    }
}

/// Three replicas of cluster 77, killed and their files removed on drop.
struct Cluster {
    directory: PathBuf,
    addresses: Vec<SocketAddr>,
    replicas: Vec<Option<Child>>,
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let directory =
            std::env::temp_dir().join(format!("kimberlite-client-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let addresses: Vec<SocketAddr> = (0..3).map(|_| address_free()).collect();
        let mut cluster = Cluster { directory, addresses, replicas: Vec::new() };
        for replica in 0..3 {
            let status = Command::new(binary())
                .args(["format", "--cluster=77", "--replica-count=3", "--grid-size=64MiB"])
                .arg(format!("--replica={replica}"))
                .arg(cluster.path(replica))
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            cluster.replicas.push(None);
            cluster.replica_start(replica);
        }
        cluster
    }

    fn path(&self, replica: usize) -> PathBuf {
        self.directory.join(format!("{replica}.kimberlite"))
    }

    fn replica_start(&mut self, replica: usize) {
        let list: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        let child = Command::new(binary())
            .arg("start")
            .arg(format!("--addresses={}", list.join(",")))
            .arg("--log-level=warn")
            .arg(self.path(replica))
            .spawn()
            .unwrap();
        self.replicas[replica] = Some(child);
    }

    fn replica_kill(&mut self, replica: usize) {
        let mut child = self.replicas[replica].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn client(&self) -> Client {
        Client::connect(Options::new(77, self.addresses.clone())).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.replicas.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

#[test]
fn create_append_with_expected_offsets_read_and_stream_info() {
    // Goal: the typed API end to end: create_stream (and its refusal of a repeat), appends with
    // each kind of expectation (no stream creates the stream; a wrong offset is refused with
    // the stream's next offset), read_stream and read_log as iterators returning type,
    // metadata and data, and stream_info's length and chain.
    let cluster = Cluster::start("api");
    let client = cluster.client();
    client.create_stream(1, 10).unwrap();
    let repeat = client.create_stream(1, 10).unwrap_err();
    assert_eq!(repeat, Error::Refused { code: ResultCode::StreamExists, offset: 0 });
    let first =
        [EventData::new("Opened", "a"), EventData::new("Deposited", "b").with_metadata("m")];
    assert_eq!(client.append(1, Expected::Offset(0), &first).unwrap(), 0);
    assert_eq!(client.append(1, Expected::Any, &[EventData::new("Closed", "c")]).unwrap(), 2);
    let wrong = client.append(1, Expected::Offset(1), &[EventData::new("X", "x")]).unwrap_err();
    assert_eq!(wrong, Error::Refused { code: ResultCode::ExpectedOffsetWrong, offset: 3 });
    assert_eq!(client.append(2, Expected::NoStream, &[EventData::new("T", "z")]).unwrap(), 0);
    let again = client.append(2, Expected::NoStream, &[EventData::new("T", "z")]).unwrap_err();
    assert!(matches!(again, Error::Refused { code: ResultCode::ExpectedOffsetWrong, .. }));
    let events: Vec<_> = client.read_stream(1, 0).map(Result::unwrap).collect();
    let types: Vec<&[u8]> = events.iter().map(|event| &event.event_type[..]).collect();
    assert_eq!(types, [&b"Opened"[..], b"Deposited", b"Closed"]);
    assert_eq!((&events[1].metadata[..], &events[1].data[..]), (&b"m"[..], &b"b"[..]));
    assert_eq!(events.iter().map(|event| event.offset).collect::<Vec<_>>(), [0, 1, 2]);
    let log: Vec<_> = client.read_log(0).map(Result::unwrap).collect();
    assert_eq!(log.len(), 4);
    assert_eq!(log.iter().map(|event| event.position).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let info = client.stream_info(1).unwrap();
    assert_eq!((info.tenant, info.offset_next, info.chain), (10, 3, events[2].chain));
    let missing = client.stream_info(9).unwrap_err();
    assert_eq!(missing, Error::Refused { code: ResultCode::StreamNotFound, offset: 0 });
    assert_eq!(client.read_stream(9, 0).count(), 1, "one error, then the end");
}

#[test]
fn appends_from_many_threads_share_requests() {
    // Goal: 32 threads appending single events through one client all succeed, each thread's
    // events land in its own stream in order, and the client sent fewer requests than appends
    // (they were batched while a request was in flight).
    let cluster = Cluster::start("threads");
    let client = cluster.client();
    let appends_per_thread = 50;
    let threads: Vec<_> = (0..32u64)
        .map(|thread| {
            let client = client.clone();
            std::thread::spawn(move || {
                for index in 0..appends_per_thread {
                    let expected =
                        if index == 0 { Expected::NoStream } else { Expected::Offset(index) };
                    let event = EventData::new("N", index.to_le_bytes());
                    assert_eq!(client.append(100 + thread, expected, &[event]).unwrap(), index);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|thread| thread.join().unwrap());
    let batching = client.batching();
    assert_eq!(batching.appends, 32 * appends_per_thread);
    assert!(batching.requests < batching.appends, "{batching:?}");
    println!("{batching:?}");
    for thread in 0..32u64 {
        let events: Vec<_> = client.read_stream(100 + thread, 0).map(Result::unwrap).collect();
        let data: Vec<u64> = events
            .iter()
            .map(|event| u64::from_le_bytes(event.data[..8].try_into().unwrap()))
            .collect();
        assert_eq!(data, (0..appends_per_thread).collect::<Vec<_>>());
    }
}

#[test]
fn a_subscription_sees_every_event_once_through_a_primary_failover() {
    // Goal: a subscription to a stream that does not exist yet sees each of 200 events once,
    // in order, while the primary (replica 0, of view 0) is killed half-way and restarted; the
    // appends retry through the failover.
    let mut cluster = Cluster::start("subscribe");
    let client = cluster.client();
    let subscriber = {
        let mut subscription = client.subscribe(Start::Stream { stream: 5, offset: 0 });
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.len() < 200 {
                let event = subscription.next().unwrap().unwrap();
                seen.push(u64::from_le_bytes(event.data[..8].try_into().unwrap()));
            }
            seen
        })
    };
    for index in 0..200u64 {
        if index == 100 {
            cluster.replica_kill(0);
        }
        if index == 150 {
            cluster.replica_start(0);
        }
        let expected = if index == 0 { Expected::NoStream } else { Expected::Offset(index) };
        let appended = client.append(5, expected, &[EventData::new("N", index.to_le_bytes())]);
        assert_eq!(appended, Ok(index));
    }
    let seen = subscriber.join().unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}

#[test]
fn the_readme_rust_example_runs_as_written() {
    // Goal: the README shows examples/quickstart.rs verbatim, and that program, run against a
    // fresh cluster, appends, reads, reports the stream's length and sees a subscribed event.
    let readme = include_str!("../../../../README.md");
    let example = include_str!("../examples/quickstart.rs");
    assert!(readme.contains(example), "the README's Rust example is not examples/quickstart.rs");
    let cluster = Cluster::start("readme");
    let program = binary().parent().unwrap().join("examples").join("quickstart");
    let list: Vec<String> = cluster.addresses.iter().map(ToString::to_string).collect();
    let output = Command::new(program).arg(list.join(",")).arg("77").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected = "0 AccountOpened {\"owner\":\"ada\"}\n1 Deposited {\"amount\":10}\n\
                    stream 42 holds 2 events\nsubscription: offset 1\n";
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
}
