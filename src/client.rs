//! The client library: a session with a cluster over TCP, one request in flight at a time.
//!
//! A client picks a random id, registers (its session), then numbers its writes 1, 2, 3, ...
//! A request that times out is sent again with the same number, to the next replica if the
//! current one is unreachable: the cluster's session table makes the retry safe (it is answered
//! with the stored reply, never applied twice). Reads go to any replica, carry the commit number
//! of the client's latest write so that it reads its own writes, and do not use up a number.
//!
//! This runs in client programs (the CLI, the benchmark), not in the replica: it uses blocking
//! sockets and allocates its buffers once per client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::constants::HEADER_SIZE;
use crate::vsr::client_sessions::session_chain;
use crate::vsr::header::{
    self, Checksum, ClientId, ClusterId, Command, EvictionReason, Header, Op, Operation,
};

/// How long a request waits for its reply before it is sent again.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a request keeps retrying before the call fails.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ClientError {
    /// No replica answered before the deadline.
    Timeout,
    /// The cluster dropped this client's session; a new client must register again.
    Evicted(&'static str),
    /// The request body does not fit in one message.
    RequestTooLarge { size: usize, size_max: usize },
    /// A reply failed validation.
    InvalidReply(&'static str),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Timeout => write!(formatter, "no replica answered in time"),
            ClientError::Evicted(reason) => write!(formatter, "session evicted: {reason}"),
            ClientError::RequestTooLarge { size, size_max } => {
                write!(formatter, "request of {size} bytes exceeds the {size_max}-byte limit")
            }
            ClientError::InvalidReply(reason) => write!(formatter, "invalid reply: {reason}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A reply: its header and body.
pub struct Reply<'a> {
    pub header: Header,
    pub body: &'a [u8],
}

pub struct Client {
    cluster: ClusterId,
    id: ClientId,
    addresses: Vec<SocketAddr>,
    /// Index into `addresses` of the replica this client talks to.
    address_index: usize,
    stream: Option<TcpStream>,
    message_size_max: usize,
    /// The number of the latest write sent (0 = the register).
    request: u32,
    registered: bool,
    /// `parent` of the next write: the session's chain value after the latest reply.
    parent: Checksum,
    /// The commit number of the latest reply (reads ask for at least this).
    commit_latest: Op,
    send_buffer: Vec<u8>,
    receive_buffer: Vec<u8>,
    receive_length: usize,
    /// The size of the reply last returned, still at the front of the receive buffer.
    reply_size_held: usize,
}

impl Client {
    pub fn new(cluster: ClusterId, addresses: &[SocketAddr], message_size_max: usize) -> Client {
        assert!(!addresses.is_empty());
        assert!(message_size_max > HEADER_SIZE);
        Client {
            cluster,
            id: random_client_id(),
            addresses: addresses.to_vec(),
            address_index: 0,
            stream: None,
            message_size_max,
            request: 0,
            registered: false,
            parent: 0,
            commit_latest: 0,
            send_buffer: vec![0; message_size_max],
            receive_buffer: vec![0; 2 * message_size_max],
            receive_length: 0,
            reply_size_held: 0,
        }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The largest request body.
    pub fn body_size_max(&self) -> usize {
        self.message_size_max - HEADER_SIZE
    }

    pub fn commit_latest(&self) -> Op {
        self.commit_latest
    }

    /// Reads will be served only by a replica that has executed at least `commit` (for
    /// example the commit of a write another client saw acknowledged).
    pub fn observe_commit(&mut self, commit: Op) {
        self.commit_latest = self.commit_latest.max(commit);
    }

    /// Opens the session (idempotent).
    pub fn register(&mut self) -> Result<(), ClientError> {
        if self.registered {
            return Ok(());
        }
        self.call(Operation::Register, &[], 0)?;
        self.registered = true;
        Ok(())
    }

    /// Sends a write (`create_stream`, `append`) and waits for its reply.
    pub fn write(&mut self, operation: Operation, body: &[u8]) -> Result<Reply<'_>, ClientError> {
        assert!(!operation.is_read());
        self.register()?;
        let request = self.request + 1;
        self.call(operation, body, request)
    }

    /// Sends a read and waits for its reply (served by the replica without consensus).
    pub fn read(&mut self, operation: Operation, body: &[u8]) -> Result<Reply<'_>, ClientError> {
        assert!(operation.is_read());
        // Reads don't use up a request number: they echo the next one.
        let request = self.request + 1;
        self.call(operation, body, request)
    }

    fn call(
        &mut self,
        operation: Operation,
        body: &[u8],
        request: u32,
    ) -> Result<Reply<'_>, ClientError> {
        let size = HEADER_SIZE + body.len();
        if size > self.message_size_max {
            let size_max = self.message_size_max - HEADER_SIZE;
            return Err(ClientError::RequestTooLarge { size: body.len(), size_max });
        }
        if self.reply_size_held > 0 {
            self.consume(self.reply_size_held);
            self.reply_size_held = 0;
        }
        self.build_request(operation, body, request);
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout);
            }
            if self.send_request(size).is_err() {
                self.disconnect_and_rotate();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            match self.receive_reply(request, Instant::now() + REQUEST_TIMEOUT) {
                Ok(Some(header)) if header.command() == Some(Command::PongClient) => {
                    // A backup: it names its view, and so the primary. Go there and resend.
                    self.consume(header.size as usize);
                    let primary = header.view as usize % self.addresses.len();
                    if primary != self.address_index {
                        self.stream = None;
                        self.receive_length = 0;
                        self.address_index = primary;
                    } else {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Ok(Some(header)) => {
                    self.reply_size_held = header.size as usize;
                    if header.command() == Some(Command::Eviction) {
                        self.registered = false;
                        return Err(ClientError::Evicted(eviction_reason(header.context)));
                    }
                    if !operation.is_read() {
                        self.request = request;
                        self.parent = session_chain(self.id, header.op);
                    }
                    self.commit_latest = self.commit_latest.max(header.commit);
                    let body = &self.receive_buffer[HEADER_SIZE..header.size as usize];
                    return Ok(Reply { header, body });
                }
                Ok(None) => {}
                Err(_) => self.disconnect_and_rotate(),
            }
        }
    }

    fn build_request(&mut self, operation: Operation, body: &[u8], request: u32) {
        let size = HEADER_SIZE + body.len();
        let mut header = Header::new(Command::Request, self.cluster);
        header.size = size as u32;
        header.client = self.id;
        header.request = request;
        header.operation = operation as u8;
        if operation.is_read() {
            header.commit = self.commit_latest;
        } else if operation != Operation::Register {
            header.parent = self.parent;
        }
        header.checksum_body = header::checksum(body);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        self.send_buffer[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        self.send_buffer[HEADER_SIZE..size].copy_from_slice(body);
    }

    fn send_request(&mut self, size: usize) -> std::io::Result<()> {
        if self.stream.is_none() {
            let address = self.addresses[self.address_index];
            let stream = TcpStream::connect_timeout(&address, REQUEST_TIMEOUT)?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.receive_length = 0;
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(&self.send_buffer[..size])
    }

    /// Reads messages until the reply to `request` arrives (`Some`), the timeout passes
    /// (`None`), or the connection fails.
    fn receive_reply(
        &mut self,
        request: u32,
        deadline: Instant,
    ) -> std::io::Result<Option<Header>> {
        loop {
            if let Some(header) = self.take_message()? {
                let command = header.command();
                let ours = header.client == self.id
                    && matches!(
                        command,
                        Some(Command::Reply | Command::Eviction | Command::PongClient)
                    );
                let answers = command != Some(Command::Reply) || header.request == request;
                if ours && answers {
                    return Ok(Some(header));
                }
                self.consume(header.size as usize);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let stream = self.stream.as_mut().expect("connected");
            stream.set_read_timeout(Some(deadline - now))?;
            match stream.read(&mut self.receive_buffer[self.receive_length..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(count) => self.receive_length += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }

    /// The header of the complete message at the front of the receive buffer, validated, if
    /// one has arrived. The message stays in the buffer until `consume`.
    fn take_message(&mut self) -> std::io::Result<Option<Header>> {
        if self.receive_length < HEADER_SIZE {
            return Ok(None);
        }
        let header = Header::decode(&self.receive_buffer[..HEADER_SIZE])
            .map_err(|reason| std::io::Error::new(std::io::ErrorKind::InvalidData, reason))?;
        let size = header.size as usize;
        if header.cluster != self.cluster || size > self.message_size_max {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "wrong cluster"));
        }
        if self.receive_length < size {
            return Ok(None);
        }
        if !header.valid_checksum_body(&self.receive_buffer[HEADER_SIZE..size]) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "body checksum"));
        }
        Ok(Some(header))
    }

    /// Drops the first `size` bytes of the receive buffer (a message already handled).
    fn consume(&mut self, size: usize) {
        self.receive_buffer.copy_within(size..self.receive_length, 0);
        self.receive_length -= size;
    }

    fn disconnect_and_rotate(&mut self) {
        self.stream = None;
        self.receive_length = 0;
        self.reply_size_held = 0;
        self.address_index = (self.address_index + 1) % self.addresses.len();
    }
}

fn eviction_reason(context: u32) -> &'static str {
    match context {
        value if value == EvictionReason::NoSession as u32 => "no session",
        value if value == EvictionReason::SessionEvicted as u32 => "the session table was full",
        value if value == EvictionReason::InvalidRequest as u32 => "invalid request",
        _ => "unknown reason",
    }
}

/// A random nonzero client id from the OS.
fn random_client_id() -> ClientId {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    let mut id = u64::from_le_bytes(bytes);
    if read.is_err() || id == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|duration| duration.as_nanos() as u64)
            .unwrap_or(1);
        id = nanos ^ u64::from(std::process::id()).rotate_left(32) | 1;
    }
    id
}
