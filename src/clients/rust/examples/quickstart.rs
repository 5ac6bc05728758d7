//! The README's Rust example, on a fresh cluster: `cargo run --release -p kimberlite-client
//! --example quickstart -- ADDRESSES CLUSTER` (default 127.0.0.1:3001 and 7).

use kimberlite_client::{Client, Error, EventData, Expected, Options, Start};

fn main() -> Result<(), Error> {
    let mut arguments = std::env::args().skip(1);
    let addresses = arguments.next().unwrap_or_else(|| "127.0.0.1:3001".to_string());
    let cluster = arguments.next().map_or(7, |id| id.parse().expect("a cluster id"));
    let addresses = addresses.split(',').map(|address| address.parse().expect("HOST:PORT"));
    let client = Client::connect(Options::new(cluster, addresses.collect()))?;

    // The first append creates the stream ("no stream" expected); the next expects offset 1.
    let opened = EventData::new("AccountOpened", r#"{"owner":"ada"}"#);
    client.append(42, Expected::NoStream, &[opened])?;
    let deposited = EventData::new("Deposited", r#"{"amount":10}"#).with_metadata("teller=7");
    client.append(42, Expected::Offset(1), &[deposited])?;

    for event in client.read_stream(42, 0) {
        let event = event?;
        let (kind, data) = (event.event_type, event.data);
        println!(
            "{} {} {}",
            event.offset,
            String::from_utf8_lossy(&kind),
            String::from_utf8_lossy(&data)
        );
    }
    println!("stream 42 holds {} events", client.stream_info(42)?.offset_next);

    // Events as they commit, from offset 1 on (blocks until one comes; never ends by itself).
    let mut subscription = client.subscribe(Start::Stream { stream: 42, offset: 1 });
    let event = subscription.next().expect("a subscription does not end")?;
    println!("subscription: offset {}", event.offset);
    Ok(())
}
