//! What a replica accepts from the network, decided once, here, for every driver: the message
//! bus (`src/io/message_bus.rs`) frames TCP bytes with `accept_header` and hands over only what
//! `accept` let through, and the simulator delivers only what the same functions let through.
//! The replica takes an `Accepted`, which nothing else can make: it trusts what this module
//! checked (the header's checksum and `Header::invalid()`, the cluster, the size, who may send
//! the command, the body's checksum) and checks the rest against its own state.

use crate::constants::HEADER_SIZE;
use crate::vsr::header::{ClusterId, Command, Header};
use crate::vsr::message_pool::Message;

/// Why a message was refused. Drivers count refusals by `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Fewer bytes than a header, or a header whose checksum or fields are wrong
    /// (`Header::decode`, with its reason).
    Header(&'static str),
    Cluster,
    /// Larger than this cluster's `message_size_max`, or than the bytes at hand.
    Size,
    /// A command only a replica sends, and only to clients (reply, eviction, pong to a client).
    Command,
    BodyChecksum,
}

impl Reject {
    pub const COUNT: usize = 5;

    /// A dense index for counters, in the order of the variants.
    pub fn index(self) -> usize {
        match self {
            Reject::Header(_) => 0,
            Reject::Cluster => 1,
            Reject::Size => 2,
            Reject::Command => 3,
            Reject::BodyChecksum => 4,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::Header(reason) => reason,
            Reject::Cluster => "wrong cluster",
            Reject::Size => "size larger than this cluster's message_size_max",
            Reject::Command => "command not accepted by a replica",
            Reject::BodyChecksum => "body checksum wrong",
        }
    }
}

/// Who may send a command to a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Client,
    Replica,
}

/// Who may send `command` to a replica, or `None`: only a replica sends it, and only to
/// clients. Every command is listed, so that a new one needs a decision here.
pub fn command_sender(command: Command) -> Option<Sender> {
    match command {
        Command::Request | Command::PingClient => Some(Sender::Client),
        Command::Ping
        | Command::Pong
        | Command::Prepare
        | Command::PrepareOk
        | Command::Commit
        | Command::StartViewChange
        | Command::DoViewChange
        | Command::StartView
        | Command::RequestStartView
        | Command::RequestHeaders
        | Command::RequestPrepare
        | Command::Headers
        | Command::NackPrepare
        | Command::RequestReply
        | Command::RequestBlocks
        | Command::Block
        | Command::RequestSyncCheckpoint
        | Command::SyncCheckpoint => Some(Sender::Replica),
        Command::Reserved
        | Command::Reply
        | Command::PongClient
        | Command::Eviction
        | Command::Busy => None,
    }
}

/// The first stage, on the first `HEADER_SIZE` bytes of a message (a driver frames a stream
/// of bytes with it before the body has arrived): the header, if a replica of `cluster` with
/// messages of at most `message_size_max` bytes may take it.
pub fn accept_header(
    bytes: &[u8],
    cluster: ClusterId,
    message_size_max: usize,
) -> Result<Header, Reject> {
    let header = Header::decode(bytes).map_err(Reject::Header)?;
    if header.cluster != cluster {
        return Err(Reject::Cluster);
    }
    if header.size as usize > message_size_max {
        return Err(Reject::Size);
    }
    let command = header.command().expect("decode checked the command");
    if command_sender(command).is_none() {
        return Err(Reject::Command);
    }
    Ok(header)
}

/// Both stages on the bytes of one whole message (`bytes` may run on past its end).
pub fn accept_bytes(
    bytes: &[u8],
    cluster: ClusterId,
    message_size_max: usize,
) -> Result<Header, Reject> {
    let header = accept_header(bytes, cluster, message_size_max)?;
    let size = header.size as usize;
    if size > bytes.len() {
        return Err(Reject::Size);
    }
    if !header.valid_checksum_body(&bytes[HEADER_SIZE..size]) {
        return Err(Reject::BodyChecksum);
    }
    Ok(header)
}

/// A message a replica may take: `accept` checked it.
pub struct Accepted {
    message: Message,
    header: Header,
}

impl Accepted {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn message(&self) -> &Message {
        &self.message
    }

    pub fn into_message(self) -> Message {
        self.message
    }
}

/// Checks the whole `message` (both stages) for a replica of `cluster`.
pub fn accept(
    message: Message,
    cluster: ClusterId,
    message_size_max: usize,
) -> Result<Accepted, Reject> {
    let header = accept_bytes(message.buffer(), cluster, message_size_max)?;
    Ok(Accepted { message, header })
}

/// `accept` for a message whose bytes `accept_bytes` let through while they were framed, in
/// the buffer that is now `message` and unwritten since (the bus checks a whole message before
/// it admits its sender): the header is checked again, against what framing decoded, and the
/// body, the costly part, is not hashed a second time.
pub fn accept_framed(
    message: Message,
    framed: &Header,
    cluster: ClusterId,
    message_size_max: usize,
) -> Result<Accepted, Reject> {
    let header = accept_header(message.buffer(), cluster, message_size_max)?;
    assert_eq!(&header, framed, "the framed message was written after it was checked");
    assert!(header.size as usize <= message.buffer().len());
    Ok(Accepted { message, header })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsr::header::ClientId;
    use crate::vsr::message_pool::MessagePool;

    fn message_with(header: Header, body: &[u8]) -> Message {
        let pool = MessagePool::new(1, 4096);
        let mut message = pool.get();
        let mut header = header;
        header.size = (HEADER_SIZE + body.len()) as u32;
        header.set_checksum_body(body);
        header.set_checksum();
        message.buffer_mut_unique()[HEADER_SIZE..HEADER_SIZE + body.len()].copy_from_slice(body);
        *message.header_mut() = header;
        message
    }

    #[test]
    fn accept_framed_takes_what_framing_checked_and_checks_the_header_again() {
        // Goal: a message `accept_bytes` let through becomes an `Accepted` with the same header
        // without a second pass over its body; its header is still checked against this
        // replica (cluster, size, command).
        let block = Header::new(Command::Block, ClusterId(7));
        let message = message_with(block, &[3; 512]);
        let framed = accept_bytes(message.buffer(), ClusterId(7), 4096).expect("valid");
        let accepted = accept_framed(message, &framed, ClusterId(7), 4096).expect("framed");
        assert_eq!(accepted.header(), &framed);
        let message = message_with(block, &[3; 512]);
        let framed = accept_bytes(message.buffer(), ClusterId(7), 4096).expect("valid");
        assert_eq!(
            accept_framed(message, &framed, ClusterId(8), 4096).err(),
            Some(Reject::Cluster)
        );
    }

    #[test]
    fn a_replica_accepts_only_whole_checked_messages_of_its_cluster_that_it_may_be_sent() {
        // Goal: each rule refuses what it is for, with its own reason, and a valid message
        // passes whole; the header stage alone refuses before the body has arrived.
        let ping = Header::new(Command::Ping, ClusterId(7));
        let accepted = accept(message_with(ping, &[]), ClusterId(7), 4096).expect("valid");
        assert_eq!(accepted.header().command(), Some(Command::Ping));
        let cluster = accept(message_with(ping, &[]), ClusterId(8), 4096).err();
        assert_eq!(cluster, Some(Reject::Cluster));
        let block = Header::new(Command::Block, ClusterId(7));
        let size = accept(message_with(block, &[0; 512]), ClusterId(7), 256).err();
        assert_eq!(size, Some(Reject::Size));
        let mut pong = Header::new(Command::PongClient, ClusterId(7));
        pong.client = ClientId(1);
        let pong = accept(message_with(pong, &[]), ClusterId(7), 4096).err();
        assert_eq!(pong, Some(Reject::Command));
        let mut torn = message_with(block, &[1; 64]);
        torn.buffer_mut_unique()[HEADER_SIZE] ^= 1;
        assert_eq!(accept(torn, ClusterId(7), 4096).err(), Some(Reject::BodyChecksum));
        let mut bad = message_with(ping, &[]);
        bad.buffer_mut_unique()[20] ^= 1;
        let header = accept_header(&bad.buffer()[..HEADER_SIZE], ClusterId(7), 4096);
        assert!(matches!(header, Err(Reject::Header(_))));
        let indexes: Vec<usize> = [
            Reject::Header(""),
            Reject::Cluster,
            Reject::Size,
            Reject::Command,
            Reject::BodyChecksum,
        ]
        .iter()
        .map(|reject| reject.index())
        .collect();
        assert_eq!(indexes, (0..Reject::COUNT).collect::<Vec<_>>());
    }
}
