//! Tests of the TCP client against fake replicas: a `TcpListener` in the test that keeps a
//! session table as a replica does (register, dedup by request number, the parent chain,
//! stored replies) and misbehaves on cue: it answers twice, late, ignores, or evicts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zerocopy::IntoBytes;

use super::*;
use crate::vsr::header::View;

const CLUSTER: ClusterId = ClusterId(77);
const MESSAGE_SIZE_MAX: usize = 64 * 1024;

/// What the fake replica does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Answer,
    /// Answers, then sends the same reply again (a duplicate the client reads later).
    AnswerTwice,
    /// Sends nothing (a lost message, a slow or paused replica).
    Ignore,
    /// Handles the request (a write commits) but the reply is lost.
    ReplyLost,
    /// Sends an eviction, as a replica whose stored reply for the session was lost does
    /// (`reply_again`): the session stays in its table.
    Evict,
}

struct Session {
    request: u32,
    reply_op: Op,
    reply: Vec<u8>,
}

/// The fake replica's state, shared with the test.
#[derive(Default)]
struct Model {
    op: Op,
    sessions: HashMap<ClientId, Session>,
    /// Every request received, in order.
    requests: Vec<Header>,
}

type Policy = Box<dyn FnMut(&Header, &Model) -> Action + Send>;

/// A fake replica of `view` on a loopback port, run by a thread for the rest of the test.
fn fake_replica(view: View, mut policy: Policy) -> (SocketAddr, Arc<Mutex<Model>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let model = Arc::new(Mutex::new(Model::default()));
    let shared = model.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            while let Some((header, body)) = message_read(&mut stream) {
                let mut model = shared.lock().unwrap();
                model.requests.push(header);
                let action = policy(&header, &model);
                for reply in model_handle(&mut model, view, &header, &body, action) {
                    if stream.write_all(&reply).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (address, model)
}

fn message_read(stream: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
    let mut bytes = [0u8; HEADER_SIZE];
    stream.read_exact(&mut bytes).ok()?;
    let header = Header::decode(&bytes).ok()?;
    let mut body = vec![0u8; header.size as usize - HEADER_SIZE];
    stream.read_exact(&mut body).ok()?;
    assert!(header.valid_checksum_body(&body));
    Some((header, body))
}

/// A message of `header` and `body`, checksummed.
fn message_bytes(mut header: Header, body: &[u8]) -> Vec<u8> {
    header.size = (HEADER_SIZE + body.len()) as u32;
    header.set_checksum_body(body);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// What a replica with `model`'s session table sends in answer to `request`, under `action`.
fn model_handle(
    model: &mut Model,
    view: View,
    request: &Header,
    body: &[u8],
    action: Action,
) -> Vec<Vec<u8>> {
    let copies = match action {
        Action::Ignore => return Vec::new(),
        Action::Evict => {
            let mut eviction = Header::new(Command::Eviction, CLUSTER);
            eviction.client = request.client;
            eviction.view = view;
            eviction.context = EvictionReason::SessionEvicted as u128;
            return vec![message_bytes(eviction, &[])];
        }
        Action::ReplyLost => 0,
        Action::Answer => 1,
        Action::AnswerTwice => 2,
    };
    let operation = request.operation().unwrap();
    let reply = if operation.is_read() {
        // A read: its body is the commit it was served at.
        reply_bytes(request, view, Op(0), model.op, &model.op.get().to_le_bytes())
    } else if let Some(session) = model.sessions.get(&request.client)
        && operation == Operation::Register
    {
        // A register of a known session: a retry while it is new, else dropped.
        if session.request != 0 {
            return Vec::new();
        }
        session.reply.clone()
    } else if operation == Operation::Register {
        model.op += 1;
        let reply = reply_bytes(request, view, model.op, model.op, &[]);
        let session = Session { request: 0, reply_op: model.op, reply: reply.clone() };
        model.sessions.insert(request.client, session);
        reply
    } else {
        let Some(session) = model.sessions.get_mut(&request.client) else {
            return model_handle(model, view, request, body, Action::Evict);
        };
        assert!(body.len() >= 8, "a write of the tests has a body");
        if request.request == session.request {
            session.reply.clone()
        } else if request.request == session.request + 1
            && request.parent == session_chain(request.client, session.reply_op)
        {
            model.op += 1;
            let reply =
                reply_bytes(request, view, model.op, model.op, &model.op.get().to_le_bytes());
            *session = Session { request: request.request, reply_op: model.op, reply };
            session.reply.clone()
        } else {
            // Not the request after the session's latest reply: dropped, as a replica does.
            return Vec::new();
        }
    };
    vec![reply; copies]
}

fn reply_bytes(request: &Header, view: View, op: Op, commit: Op, body: &[u8]) -> Vec<u8> {
    let mut reply = Header::new(Command::Reply, CLUSTER);
    reply.view = view;
    reply.op = op;
    reply.commit = commit;
    reply.timestamp = u64::from(op > Op(0));
    reply.client = request.client;
    reply.request = request.request;
    reply.operation = request.operation;
    reply.context = request.checksum.get();
    message_bytes(reply, body)
}

fn client(addresses: &[SocketAddr]) -> Client {
    let mut client = Client::new(CLUSTER, addresses, MESSAGE_SIZE_MAX);
    client.set_request_deadline(Duration::from_secs(3));
    client
}

#[test]
fn duplicate_and_late_replies_are_never_taken_for_a_later_request() {
    // Goal: the fake replica answers every request twice (the second copy arrives while the
    // next request is in flight), reads included; the client takes each request's own reply:
    // the append after a read gets its op, not the read's, and its session chain stays right
    // (every later write is accepted by the session table).
    let policy: Policy = Box::new(|_, _| Action::AnswerTwice);
    let (address, model) = fake_replica(View(0), policy);
    let mut client = client(&[address]);
    client.register().unwrap();
    for round in 0..3u64 {
        let reply = client.read(Operation::StreamInfo, &[1; 8]).unwrap();
        assert_eq!(reply.header.operation, Operation::StreamInfo as u8);
        let reply = client.write(Operation::Append, &[round as u8; 24]).unwrap();
        assert_eq!(reply.header.operation, Operation::Append as u8);
        assert_eq!(reply.header.op, Op(2 + round), "the append took a stale reply");
        assert_eq!(reply.body, (2 + round).to_le_bytes());
    }
    assert_eq!(model.lock().unwrap().op, Op(4));
}

#[test]
fn a_write_that_timed_out_is_resolved_before_the_next_write() {
    // Goal: a write whose call timed out (here it committed, but the replies were lost) is
    // sent again before the next write, which gets a number of its own and is applied;
    // before the fix, the next write reused the number and got the old write's reply.
    let policy: Policy = Box::new(|request, model| {
        let copies = model.requests.iter().filter(|seen| seen.checksum == request.checksum);
        match (request.request, copies.count()) {
            // The first write's first copy commits, its reply is lost; the retry in the same
            // call is lost too (the call's deadline comes before the next copy).
            (1, 1) => Action::ReplyLost,
            (1, 2) => Action::Ignore,
            _ => Action::Answer,
        }
    });
    let (address, model) = fake_replica(View(0), policy);
    let mut client = client(&[address]);
    client.set_request_deadline(Duration::from_millis(1_200));
    client.register().unwrap();
    assert!(matches!(client.write(Operation::Append, &[1; 24]), Err(ClientError::Timeout)));
    client.set_request_deadline(Duration::from_secs(5));
    let reply = client.write(Operation::Append, &[2; 24]).unwrap();
    assert_eq!(reply.header.op, Op(3), "the second write got the first one's reply");
    let model = model.lock().unwrap();
    assert_eq!(model.op, Op(3));
    let last = model.requests.last().unwrap();
    assert_eq!((last.request, last.parent), (2, session_chain(client.id(), Op(2))));
}

#[test]
fn after_an_eviction_a_new_session_numbers_its_writes_from_one() {
    // Goal: the fake replica evicts the session on its second write (keeping the session in
    // its table, as a replica that lost the stored reply does); the client reports the
    // eviction, and its next write registers a new session (a new id: the old one's register
    // would be dropped) whose writes, numbered from 1, are accepted.
    let policy: Policy = Box::new(|request, model| {
        let evict = request.request == 2 && model.op == Op(2);
        if evict { Action::Evict } else { Action::Answer }
    });
    let (address, model) = fake_replica(View(0), policy);
    let mut client = client(&[address]);
    client.write(Operation::Append, &[1; 24]).unwrap();
    let evicted = client.write(Operation::Append, &[2; 24]);
    assert!(matches!(evicted, Err(ClientError::Evicted(_))));
    for op in [4, 5] {
        let reply = client.write(Operation::Append, &[3; 24]).unwrap();
        assert_eq!(reply.header.op, Op(op));
    }
    assert_eq!(model.lock().unwrap().sessions.len(), 2);
}

#[test]
fn a_timed_out_request_moves_on_from_a_paused_primary() {
    // Goal: replica 0 accepts connections but never answers (a paused process); the client's
    // request times out there and is sent to replica 1, the new primary, which answers, well
    // before the call's deadline.
    let paused = TcpListener::bind("127.0.0.1:0").unwrap();
    let policy: Policy = Box::new(|_, _| Action::Answer);
    let (address, _model) = fake_replica(View(1), policy);
    let mut client = client(&[paused.local_addr().unwrap(), address]);
    let start = Instant::now();
    client.write(Operation::Append, &[1; 24]).unwrap();
    client.write(Operation::Append, &[2; 24]).unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
}
