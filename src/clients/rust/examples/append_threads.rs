//! Appends single events from many threads through one client (automatic batching) and prints
//! the throughput: compare with `kimberlite benchmark --batch=1 --clients=N` on the same
//! cluster.
//!
//! Usage: cargo run --release -p kimberlite-client --example append_threads -- \
//!            ADDRESSES CLUSTER [THREADS=64] [EVENTS=100000] [EVENT_SIZE=128]

use std::time::Instant;

use kimberlite_client::{Client, EventData, Expected, Options};

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: append_threads ADDRESSES CLUSTER [THREADS] [EVENTS] [EVENT_SIZE]";
    let (Some(addresses), Some(cluster)) = (arguments.first(), arguments.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(1);
    };
    let number = |index: usize, default: u64| {
        arguments.get(index).map_or(default, |text| text.parse().expect(usage))
    };
    let (threads, events, event_size) = (number(2, 64), number(3, 100_000), number(4, 128));
    let addresses = addresses.split(',').map(|address| address.parse().expect(usage)).collect();
    let client =
        Client::connect(Options::new(cluster.parse().expect(usage), addresses)).expect("connect");
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let client = client.clone();
            std::thread::spawn(move || {
                let event = EventData::new("Benchmarked", vec![thread as u8; event_size as usize]);
                let stream = 1_000_000 + thread;
                for _ in 0..events / threads {
                    client
                        .append(stream, Expected::Any, std::slice::from_ref(&event))
                        .or_else(|_| {
                            client.append(stream, Expected::NoStream, std::slice::from_ref(&event))
                        })
                        .expect("append");
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|worker| worker.join().expect("a thread"));
    let seconds = started.elapsed().as_secs_f64();
    let appended = events / threads * threads;
    let batching = client.batching();
    println!(
        "{appended} events of {event_size} bytes from {threads} threads through one client in \
         {seconds:.2} s: {:.0} events/s; {} requests ({:.1} appends each)",
        appended as f64 / seconds,
        batching.requests,
        batching.appends as f64 / batching.requests.max(1) as f64,
    );
}
