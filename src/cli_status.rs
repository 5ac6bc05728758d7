//! `kimberlite status`: asks each replica of a cluster where it stands, over the wire (a
//! `ping_client`, answered by a `pong_client` carrying its status, view, head op, commit and
//! checkpoint), and prints one row per replica, as a table or as one JSON object.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use zerocopy::IntoBytes;

use crate::arguments::{Arguments, parse_addresses};
use crate::constants::HEADER_SIZE;
use crate::stdx::json::Json;
use crate::vsr::header::views;
use crate::vsr::header::{ClientId, ClusterId, Command, Header};
use crate::vsr::header::{
    PONG_STATUS_NORMAL as NORMAL, PONG_STATUS_RECOVERING as RECOVERING,
    PONG_STATUS_REJOINING as REJOINING, PONG_STATUS_SYNCING as SYNCING,
    PONG_STATUS_VIEW_CHANGE as VIEW_CHANGE,
};

/// How long a replica has to accept the connection, and then to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Where one replica stands, from its `pong_client`.
#[derive(Clone, Copy, Debug)]
struct Standing {
    status: u32,
    view: u32,
    op: u64,
    commit: u64,
    checkpoint: u64,
}

/// Runs `kimberlite status ...`; `Err` is a usage error (exit 1). A replica that does not
/// answer is a row of the report, not an error.
pub fn command_status(arguments: &[String]) -> Result<(), String> {
    let arguments = Arguments::parse(arguments, &["addresses", "cluster", "format"])?;
    let addresses = parse_addresses(arguments.flag_required("addresses")?)?;
    let cluster: u64 = arguments.integer("cluster")?;
    if !arguments.positionals.is_empty() {
        return Err("status takes no positional argument".to_string());
    }
    let json = match arguments.flag("format") {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(format!("--format={other}: the formats are text and json")),
    };
    let client = ClientId(0x57A7_0000_0000_0000 | u64::from(std::process::id()));
    let rows: Vec<Result<Standing, String>> = addresses
        .iter()
        .map(|address| standing_ask(ClusterId(cluster), client, *address))
        .collect();
    // The primary is the one of the newest view a replica is in normal status in: a replica
    // between views, or cut off, may name a view that never started.
    let normal = rows.iter().flatten().filter(|standing| standing.status & 0xFF == NORMAL);
    let view = normal.map(|standing| standing.view).max();
    let primary = view.map(|view| view as usize % addresses.len());
    let primary_commit = primary.and_then(|primary| rows[primary].as_ref().ok()).map(|s| s.commit);
    if json {
        println!("{}", report_json(&addresses, &rows, (view, primary, primary_commit)));
    } else {
        print!("{}", report_text(&addresses, &rows, (primary, primary_commit)));
    }
    Ok(())
}

/// Asks the replica at `address` where it stands.
fn standing_ask(
    cluster: ClusterId,
    client: ClientId,
    address: SocketAddr,
) -> Result<Standing, String> {
    let mut stream = TcpStream::connect_timeout(&address, ANSWER_TIMEOUT)
        .map_err(|error| format!("cannot connect: {error}"))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|error| error.to_string())?;
    let mut ping = Header::new(Command::PingClient, cluster);
    ping.client = client;
    ping.timestamp = 1;
    ping.set_checksum_body(&[]);
    ping.set_checksum();
    stream.write_all(ping.as_bytes()).map_err(|error| format!("cannot send: {error}"))?;
    let mut bytes = [0u8; HEADER_SIZE];
    stream.read_exact(&mut bytes).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "closed the connection without an answer (another cluster? check --cluster)".into()
        }
        _ => format!("no answer: {error}"),
    })?;
    let pong = Header::decode(&bytes).map_err(|reason| format!("a bad answer: {reason}"))?;
    if pong.command() != Some(Command::PongClient) || pong.cluster != cluster {
        return Err("an answer other than pong_client".to_string());
    }
    let view = views::PongClient::of(&pong);
    Ok(Standing {
        status: view.status(),
        view: view.view().get(),
        op: view.op().get(),
        commit: view.commit_min().get(),
        checkpoint: view.checkpoint_op().get(),
    })
}

/// A pong's status as words: `normal`, `view_change` or `recovering`, then `syncing` and
/// `rejoining` if they apply.
fn status_name(status: u32) -> String {
    let mut name = match status & 0xFF {
        RECOVERING => "recovering",
        NORMAL => "normal",
        VIEW_CHANGE => "view_change",
        _ => "unknown",
    }
    .to_string();
    if status & SYNCING != 0 {
        name.push_str(",syncing");
    }
    if status & REJOINING != 0 {
        name.push_str(",rejoining");
    }
    name
}

/// How far `standing`'s commit is behind the primary's, if the primary answered.
fn lag(standing: &Standing, primary_commit: Option<u64>) -> Option<u64> {
    primary_commit.map(|commit| commit.saturating_sub(standing.commit))
}

fn report_text(
    addresses: &[SocketAddr],
    rows: &[Result<Standing, String>],
    (primary, primary_commit): (Option<usize>, Option<u64>),
) -> String {
    let mut text = format!(
        "{:<8} {:<22} {:<22} {:>6} {:<8} {:>10} {:>10} {:>10} {:>8}\n",
        "replica", "address", "status", "view", "primary", "op", "commit", "checkpoint", "lag"
    );
    for (index, (address, row)) in addresses.iter().zip(rows).enumerate() {
        let line = match row {
            Err(reason) => {
                format!("{index:<8} {:<22} unreachable: {reason}\n", address.to_string())
            }
            Ok(standing) => format!(
                "{index:<8} {:<22} {:<22} {:>6} {:<8} {:>10} {:>10} {:>10} {:>8}\n",
                address.to_string(),
                status_name(standing.status),
                standing.view,
                if Some(index) == primary { "yes" } else { "no" },
                standing.op,
                standing.commit,
                standing.checkpoint,
                lag(standing, primary_commit).map_or("-".to_string(), |lag| lag.to_string()),
            ),
        };
        text.push_str(&line);
    }
    text
}

fn report_json(
    addresses: &[SocketAddr],
    rows: &[Result<Standing, String>],
    (view, primary, primary_commit): (Option<u32>, Option<usize>, Option<u64>),
) -> String {
    let mut objects = Vec::new();
    for (index, (address, row)) in addresses.iter().zip(rows).enumerate() {
        let mut object = Json::new();
        object.number("replica", index as u64).text("address", &address.to_string());
        object.boolean("reachable", row.is_ok());
        match row {
            Err(reason) => {
                object.text("error", reason);
            }
            Ok(standing) => {
                object.text("status", &status_name(standing.status));
                object.number("view", u64::from(standing.view));
                object.boolean("primary", Some(index) == primary);
                object.number("op", standing.op).number("commit", standing.commit);
                object.number("checkpoint", standing.checkpoint);
                if let Some(lag) = lag(standing, primary_commit) {
                    object.number("lag", lag);
                }
            }
        }
        objects.push(object);
    }
    let mut json = Json::new();
    if let (Some(view), Some(primary)) = (view, primary) {
        json.number("view", u64::from(view)).number("primary", primary as u64);
    }
    json.objects("replicas", objects);
    json.finish()
}
