//! `kimberlite client`: the event store from the shell, one command per call.
//!
//! Exit codes: 0 the operation succeeded; 1 bad arguments, or the cluster could not be reached;
//! 2 the cluster answered with a result other than ok (the result is printed).

use zerocopy::{FromBytes, IntoBytes};

use crate::arguments::{Arguments, parse_addresses};
use crate::client::{Client, Subscription};
use crate::constants::{HEADER_SIZE, MESSAGE_SIZE_MAX};
use crate::state_machine::constants::{EXPECTED_NO_STREAM, EXPECTED_OFFSET_ANY};
use crate::state_machine::types::{
    AppendResult, CreateStream, CreateStreamResult, Event, ReadLog, ReadReplyHeader, ReadStream,
    ResultCode, StreamInfo, StreamInfoReply, append_batch_body, record_next,
};
use crate::stdx::json::Json;
use crate::vsr::header::ClusterId;
use crate::vsr::header::Operation;

/// The exit code for "the cluster said no".
const EXIT_RESULT_NOT_OK: i32 = 2;

/// Runs `kimberlite client ...`; `Err` is a usage or connection error (exit 1).
pub fn command_client(arguments: &[String]) -> Result<(), String> {
    let allowed = [
        "addresses",
        "cluster",
        "expected-offset",
        "type",
        "metadata",
        "offset",
        "position",
        "count",
        "file",
        "format",
        "log",
        "linearizable",
    ];
    let arguments = Arguments::parse(arguments, &allowed)?;
    let addresses = parse_addresses(arguments.flag_required("addresses")?)?;
    // Required: a replica of another cluster closes the connection, which a default would
    // only show as "no replica answered".
    let cluster: u64 = arguments.integer("cluster")?;
    let Some((command, rest)) = arguments.positionals.split_first() else {
        return Err("missing command: create-stream, append, read, read-log or info".to_string());
    };
    let json = match arguments.flag("format") {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(format!("--format={other}: the formats are text and json")),
    };
    let mut client = Client::new(ClusterId(cluster), &addresses, MESSAGE_SIZE_MAX);
    if command == "tail" {
        return tail(&mut client, &arguments, rest, json);
    }
    let report = match command.as_str() {
        "create-stream" => create_stream(&mut client, rest)?,
        "append" => append(&mut client, &arguments, rest)?,
        "read" => read_stream(&mut client, &arguments, rest)?,
        "read-log" => read_log(&mut client, &arguments, rest)?,
        "info" => info(&mut client, &arguments, rest)?,
        other => return Err(format!("unknown client command '{other}'")),
    };
    if json {
        println!("{}", report.json.finish());
    } else {
        print!("{}", report.text);
        if report.code != ResultCode::Ok {
            println!("result: {}", report.code.name());
        }
    }
    if report.code != ResultCode::Ok {
        std::process::exit(EXIT_RESULT_NOT_OK);
    }
    Ok(())
}

/// What a client command prints: lines of text, or one JSON object (`--format=json`), whose
/// `result` field is the result's name.
struct Report {
    code: ResultCode,
    text: String,
    json: Json,
}

impl Report {
    fn new(code: ResultCode) -> Report {
        let mut json = Json::new();
        json.text("result", code.name());
        Report { code, text: String::new(), json }
    }
}

/// The events of `append`: its EVENT arguments, or the lines of `--file`.
fn append_events(arguments: &Arguments, events: &[String]) -> Result<Vec<String>, String> {
    match arguments.flag("file") {
        None => Ok(events.to_vec()),
        Some(_) if !events.is_empty() => {
            Err("append takes EVENT arguments or --file, not both".to_string())
        }
        Some(path) => {
            let text = events_read(path)?;
            if text.len() > MESSAGE_SIZE_MAX {
                return Err(format!(
                    "{path} holds {} bytes, more than one request holds ({MESSAGE_SIZE_MAX}): \
                     append it in parts",
                    text.len()
                ));
            }
            let lines = text.lines().filter(|line| !line.is_empty());
            Ok(lines.map(str::to_string).collect())
        }
    }
}

/// The events of `append --file`: the file at `path`, or standard input for `-`.
/// Reads no more than one request can hold, and a byte: a larger input is refused, not read
/// whole (`--file=/dev/zero`).
fn events_read(path: &str) -> Result<String, String> {
    use std::io::Read;
    let limit = MESSAGE_SIZE_MAX as u64 + 1;
    let mut text = String::new();
    let result = if path == "-" {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else if path.is_empty() {
        return Err("--file needs a path, or - for standard input".to_string());
    } else {
        let file =
            std::fs::File::open(path).map_err(|error| format!("cannot read {path}: {error}"))?;
        file.take(limit).read_to_string(&mut text)
    };
    result.map_err(|error| format!("cannot read events from {path}: {error}"))?;
    Ok(text)
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{what} '{text}' is not a number"))
}

fn result_code(value: u32) -> Result<ResultCode, String> {
    ResultCode::from_u32(value).ok_or_else(|| format!("unknown result code {value}"))
}

fn create_stream(client: &mut Client, rest: &[String]) -> Result<Report, String> {
    let (stream, tenant) = match rest {
        [stream] => (number(stream, "stream")?, 0),
        [stream, tenant] => (number(stream, "stream")?, number(tenant, "tenant")?),
        _ => return Err("usage: create-stream STREAM [TENANT]".to_string()),
    };
    let body = CreateStream { stream, tenant };
    let reply = client
        .write(Operation::CreateStream, body.as_bytes())
        .map_err(|error| error.to_string())?;
    let result = CreateStreamResult::read_from_prefix(reply.body).map_err(|_| "short reply")?.0;
    let mut report = Report::new(result_code(result.result)?);
    if report.code == ResultCode::Ok {
        let op = reply.header.op.0;
        report.text = format!("created stream {stream} (tenant {tenant}) at op {op}\n");
        report.json.number("stream", stream).number("tenant", tenant).number("op", op);
    }
    Ok(report)
}

fn append(client: &mut Client, arguments: &Arguments, rest: &[String]) -> Result<Report, String> {
    const USAGE: &str = "usage: append STREAM --type=TYPE [--metadata=TEXT] \
                         [--expected-offset=N|any|no-stream] (EVENT... | --file=PATH | --file=-)";
    let [stream, events @ ..] = rest else {
        return Err(USAGE.to_string());
    };
    let events = append_events(arguments, events)?;
    if events.is_empty() {
        return Err("append needs at least one EVENT".to_string());
    }
    let stream = number(stream, "stream")?;
    let expected_offset = match arguments.flag("expected-offset") {
        None | Some("any") => EXPECTED_OFFSET_ANY,
        Some("no-stream") => EXPECTED_NO_STREAM,
        Some(text) => number(text, "--expected-offset")?,
    };
    let event_type = arguments.flag("type").unwrap_or("");
    if event_type.is_empty() || event_type.len() > usize::from(u8::MAX) {
        return Err(format!("--type must be 1 to 255 bytes ({USAGE})"));
    }
    let metadata = arguments.flag("metadata").unwrap_or("");
    if metadata.len() > usize::from(u16::MAX) {
        return Err("--metadata must be at most 65535 bytes".to_string());
    }
    let body = append_body((stream, expected_offset), (event_type, metadata), &events)?;
    let count = events.len() as u64;
    let reply = client.write(Operation::Append, &body).map_err(|error| error.to_string())?;
    let result = AppendResult::read_from_prefix(reply.body).map_err(|_| "short reply")?.0;
    let mut report = Report::new(result_code(result.result)?);
    let (op, commit, end) = (reply.header.op.0, reply.header.commit.0, result.offset + count);
    match report.code {
        ResultCode::Ok => {
            report.text = format!(
                "appended {count} events to stream {stream} at offsets {}..{end} (op {op}, \
                 commit {commit})\n",
                result.offset
            );
            let json = report.json.number("stream", stream).number("offset", result.offset);
            json.number("count", count).number("op", op).number("commit", commit);
        }
        ResultCode::ExpectedOffsetWrong => {
            report.text = format!("the stream's next offset is {}\n", result.offset);
            report.json.number("offset_next", result.offset);
        }
        _ => {}
    }
    Ok(report)
}

/// The body of an append of `events` (each with the type and the metadata), if it fits one
/// request.
fn append_body(
    (stream, expected_offset): (u64, u64),
    (event_type, metadata): (&str, &str),
    events: &[String],
) -> Result<Vec<u8>, String> {
    // Bounded before encoding: each event repeats the type and the metadata.
    let per_event = (16 + event_type.len() + metadata.len()) as u64;
    let estimate = per_event.saturating_mul(events.len() as u64);
    if estimate > MESSAGE_SIZE_MAX as u64 {
        return Err(format!(
            "{} events of {per_event} bytes or more (type and metadata each) exceed one \
             request ({MESSAGE_SIZE_MAX} bytes): append them in parts",
            events.len()
        ));
    }
    let events: Vec<Event<'_>> = events
        .iter()
        .map(|data| Event {
            event_type: event_type.as_bytes(),
            metadata: metadata.as_bytes(),
            data: data.as_bytes(),
        })
        .collect();
    let body = append_batch_body(stream, expected_offset, &events);
    let body_max = MESSAGE_SIZE_MAX - HEADER_SIZE;
    if body.len() > body_max {
        return Err(format!(
            "{} events take {} bytes, more than one request holds ({body_max}): append them in \
             parts",
            events.len(),
            body.len()
        ));
    }
    Ok(body)
}

fn count_argument(arguments: &Arguments) -> Result<u32, String> {
    arguments.integer_or("count", 100u32)
}

fn read_stream(
    client: &mut Client,
    arguments: &Arguments,
    rest: &[String],
) -> Result<Report, String> {
    let [stream] = rest else {
        return Err("usage: read STREAM [--offset=N] [--count=N]".to_string());
    };
    let body = ReadStream {
        stream: number(stream, "stream")?,
        offset_from: arguments.integer_or("offset", 0u64)?,
        count_max: count_argument(arguments)?,
        wait_ms: 0,
    };
    let reply = read(client, arguments, Operation::ReadStream, body.as_bytes())?;
    events_report(reply.body)
}

fn read_log(client: &mut Client, arguments: &Arguments, rest: &[String]) -> Result<Report, String> {
    if !rest.is_empty() {
        return Err("usage: read-log [--position=N] [--count=N]".to_string());
    }
    let body = ReadLog {
        position_from: arguments.integer_or("position", 0u64)?,
        count_max: count_argument(arguments)?,
        wait_ms: 0,
    };
    let reply = read(client, arguments, Operation::ReadLog, body.as_bytes())?;
    events_report(reply.body)
}

/// A read, linearizable with `--linearizable` (served by the primary once an op it prepared
/// after the read arrived has committed), else from the commit of whichever replica answers.
fn read<'a>(
    client: &'a mut Client,
    arguments: &Arguments,
    operation: Operation,
    body: &[u8],
) -> Result<crate::client::Reply<'a>, String> {
    let reply = match arguments.flag("linearizable") {
        None => client.read(operation, body),
        Some("") => client.read_linearizable(operation, body),
        Some(value) => return Err(format!("--linearizable takes no value (got '{value}')")),
    };
    reply.map_err(|error| error.to_string())
}

/// How long each read of `tail` may be held for events to commit: after it the read is sent
/// again (a replica that failed meanwhile costs at most that long).
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `tail STREAM [--offset=N]` or `tail --log [--position=N]`: prints events as they commit, one
/// line (or one JSON object) each, until interrupted; returns only on an error.
fn tail(
    client: &mut Client,
    arguments: &Arguments,
    rest: &[String],
    json: bool,
) -> Result<(), String> {
    use std::io::Write;
    let usage = "usage: tail STREAM [--offset=N] | tail --log [--position=N]";
    let mut subscription = match (arguments.flag("log"), rest) {
        (None, [stream]) => Subscription::Stream {
            stream: number(stream, "stream")?,
            offset: arguments.integer_or("offset", 0u64)?,
        },
        (Some(""), []) => Subscription::Log { position: arguments.integer_or("position", 0u64)? },
        _ => return Err(usage.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    loop {
        let asked = std::time::Instant::now();
        let reply = client
            .subscription_next(&mut subscription, TAIL_COUNT_MAX, TAIL_WAIT)
            .map_err(|error| error.to_string())?;
        let events = events_parse(reply.body)?;
        if events.head.event_count == 0 && asked.elapsed() < TAIL_WAIT / 2 {
            // Answered at once with nothing: the replica could not hold the read (its table of
            // held reads was full). Ask again after a pause rather than in a tight loop.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        match events.code {
            ResultCode::Ok => {}
            // A replica repairing a block answers so until it is done: ask again.
            ResultCode::BlockCorrupt => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            code => return Err(format!("tail: the cluster answered {}", code.name())),
        }
        let written = if json {
            events
                .objects
                .into_iter()
                .try_for_each(|object| writeln!(stdout, "{}", object.finish()))
        } else {
            write!(stdout, "{}", events.lines)
        };
        // A closed pipe (`| head`) ends the tail.
        if written.and_then(|()| stdout.flush()).is_err() {
            return Ok(());
        }
    }
}

/// Events one read of `tail` asks for at most.
const TAIL_COUNT_MAX: u32 = 1000;

/// A read reply: one line (or JSON object) per event, then where to continue.
fn events_report(body: &[u8]) -> Result<Report, String> {
    let events = events_parse(body)?;
    let mut report = Report::new(events.code);
    let (next, end) = (events.head.next, events.head.end);
    report.text = events.lines;
    report.text.push_str(&format!("next: {next} (end: {end})\n"));
    report.json.objects("events", events.objects).number("next", next).number("end", end);
    Ok(report)
}

/// The events of a read reply: its result, its header, and each event as a line of text and
/// as a JSON object.
struct Events {
    code: ResultCode,
    head: ReadReplyHeader,
    lines: String,
    objects: Vec<Json>,
}

fn events_parse(body: &[u8]) -> Result<Events, String> {
    let (head, mut records) =
        ReadReplyHeader::read_from_prefix(body).map_err(|_| "short read reply")?;
    let code = result_code(head.result)?;
    let (mut lines, mut objects) = (String::new(), Vec::new());
    for _ in 0..head.event_count {
        let (record, event, rest) = record_next(records).map_err(|reason| reason.to_string())?;
        let metadata = if event.metadata.is_empty() {
            String::new()
        } else {
            format!(" metadata {}", printable(event.metadata))
        };
        lines.push_str(&format!(
            "stream {} offset {} position {} chain {:08x} type {}{metadata}: {}\n",
            record.stream,
            record.offset,
            record.position,
            record.chain,
            printable(event.event_type),
            printable(event.data),
        ));
        let mut object = Json::new();
        object.number("stream", record.stream).number("offset", record.offset);
        object.number("position", record.position);
        object.text("chain", &format!("{:032x}", record.chain));
        object.bytes("type", event.event_type).bytes("metadata", event.metadata);
        object.bytes("data", event.data);
        objects.push(object);
        records = rest;
    }
    Ok(Events { code, head, lines, objects })
}

/// `bytes` as text if they are printable UTF-8, else as hex.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
    }
}

fn info(client: &mut Client, arguments: &Arguments, rest: &[String]) -> Result<Report, String> {
    let [stream] = rest else {
        return Err("usage: info STREAM".to_string());
    };
    let body = StreamInfo { stream: number(stream, "stream")? };
    let reply = read(client, arguments, Operation::StreamInfo, body.as_bytes())?;
    let info = StreamInfoReply::read_from_prefix(reply.body).map_err(|_| "short reply")?.0;
    let mut report = Report::new(result_code(info.result)?);
    if report.code == ResultCode::Ok {
        report.text = format!(
            "stream {} tenant {}: {} events, next offset {}, chain {:08x}\n",
            info.stream, info.tenant, info.event_count, info.offset_next, info.chain
        );
        let json = report.json.number("stream", info.stream).number("tenant", info.tenant);
        json.number("event_count", info.event_count).number("offset_next", info.offset_next);
        json.text("chain", &format!("{:032x}", info.chain));
    }
    report.text.push_str(&format!(
        "grid of the replica that answered: {} MiB in use, room for {} MiB more of events\n",
        info.grid_used_bytes >> 20,
        info.grid_room_bytes >> 20
    ));
    let json = report.json.number("grid_used_bytes", info.grid_used_bytes);
    json.number("grid_room_bytes", info.grid_room_bytes);
    Ok(report)
}
