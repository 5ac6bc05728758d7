//! Command-line parsing and the subcommands. Every mistake in the arguments gets one line on
//! stderr and exit code 1; nothing an operator types can make the binary panic.

use crate::arguments::{Arguments, parse_address, parse_addresses};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};

use crate::constants::{BLOCK_SIZE, CLIENTS_MAX, REPLICAS_MAX, STREAMS_MAX};
use crate::sim::vopr::Invocation;
use crate::vsr::header::ClusterId;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::layout::Config;

const USAGE: &str = "\
usage:
  kimberlite format --cluster=ID --replica=I --replica-count=N [--grid-size=SIZE]
                    [--clients-max=N] [--streams-max=N] [--rejoin] PATH
  kimberlite start --addresses=ADDRESS[,ADDRESS...] [--metrics=ADDRESS] [--log-level=LEVEL]
                   PATH
  kimberlite inspect [--format=json] PATH
  kimberlite benchmark [--addresses=...] [--cluster=ID] [--replica-count=N] [--clients=N]
                       [--events=N] [--event-size=BYTES] [--batch=N] [--streams=N]
                       [--client-threads=N] [--rate=REQUESTS_PER_SECOND]
  kimberlite client --addresses=... --cluster=ID [--format=json] COMMAND
      create-stream STREAM [TENANT]
      append STREAM --type=TYPE [--metadata=TEXT] [--expected-offset=N|any|no-stream]
             (EVENT... | --file=PATH | --file=-)
      read STREAM [--offset=N] [--count=N] [--linearizable]
      read-log [--position=N] [--count=N] [--linearizable]
      tail STREAM [--offset=N] | tail --log [--position=N]
      info STREAM [--linearizable]
  kimberlite status --addresses=... --cluster=ID [--format=json]
  kimberlite export --addresses=... --cluster=ID FILE
  kimberlite import --addresses=... --cluster=ID FILE
  kimberlite vopr [--seed=N] [--replicas=N] [--ticks=N] [--check-determinism]
  kimberlite version (or --version)

Every command takes --help, with its options and an example.

SIZE takes a suffix: KiB, MiB, GiB or TiB (or K, M, G, T); the grid size must be a multiple
of the 512 KiB block size (default 1GiB). --clients-max: client sessions (default 1024).
--streams-max: streams (default 65536); each costs about 440 bytes of memory and as much of the
grid, kept free for the streams table; format names the smallest grid that can hold a stream.
--rejoin formats the data file of a replica whose file was lost:
started, it recovers the cluster's log from its peers and takes no part in view changes
until it has.";

/// `kimberlite COMMAND --help`: what the command does, its options, and an example.
const HELP: [(&str, &str); 10] = [
    (
        "format",
        "\
usage: kimberlite format --cluster=ID --replica=I --replica-count=N [--grid-size=SIZE]
                         [--clients-max=N] [--streams-max=N] [--rejoin] PATH

Creates the data file of one replica. Every replica of a cluster is formatted with the same
--cluster, --replica-count, --clients-max and --streams-max, and its own --replica.

  --cluster=ID         the cluster's id (a number), which every client must name too
  --replica=I          this replica's index, 0 to N-1 (its place in --addresses)
  --replica-count=N    replicas in the cluster, 1 to 7
  --grid-size=SIZE     room for events: a multiple of 512KiB (default 1GiB); KiB, MiB, GiB, TiB
  --clients-max=N      client sessions the cluster keeps (default 1024)
  --streams-max=N      streams (default 65536; about 440 bytes of memory and of grid each)
  --rejoin             a new file for a replica whose file was lost: it recovers from its peers

example: kimberlite format --cluster=7 --replica=0 --replica-count=3 0.kimberlite",
    ),
    (
        "start",
        "\
usage: kimberlite start --addresses=ADDRESS[,ADDRESS...] [--metrics=ADDRESS] [--log-level=LEVEL]
                       PATH

Runs the replica whose data file is PATH until it is stopped (SIGTERM or SIGINT stop it
cleanly). --addresses lists every replica of the cluster as HOST:PORT, in replica order; this
replica listens on its own.

  --metrics=ADDRESS    serve Prometheus metrics at http://ADDRESS/metrics (HOST:PORT)
  --log-level=LEVEL    error, warn, info (default) or debug: the log lines written to stderr,
                       each `TIMESTAMP level=LEVEL event=NAME key=value...`

Each flag not given is read from its environment variable (KIMBERLITE_ADDRESSES,
KIMBERLITE_METRICS, KIMBERLITE_LOG_LEVEL), and PATH from KIMBERLITE_DATA_FILE, as a service
manager passes them; the command line wins.

example: kimberlite start --addresses=127.0.0.1:3001,127.0.0.1:3002,127.0.0.1:3003 0.kimberlite",
    ),
    (
        "inspect",
        "\
usage: kimberlite inspect [--format=json] PATH

Reads a stopped replica's data file and reports its superblock copies, its WAL, its checkpoint
and its grid use, as text or as one JSON object (--format=json); exits 1 if the file is not
usable.

example: kimberlite inspect 0.kimberlite",
    ),
    (
        "benchmark",
        "\
usage: kimberlite benchmark [--addresses=... --cluster=ID] [--replica-count=N] [--clients=N]
                            [--events=N] [--event-size=BYTES] [--batch=N] [--streams=N]
                            [--client-threads=N] [--rate=REQUESTS_PER_SECOND]

Loads a cluster with appends and reports throughput and request latency. Without --addresses
it formats and starts a local cluster of --replica-count replicas in a scratch directory.

  --addresses, --cluster   load an existing cluster instead (both are needed)
  --replica-count=N        replicas of the local cluster (default 1)
  --clients=N              client sessions, each with one request in flight (default 1)
  --events=N               events to append in all (default 10000000)
  --event-size=BYTES       payload bytes of each event (default 128)
  --batch=N                events per request (default: as many as fit)
  --streams=N              streams the events go to (default: one per client)
  --client-threads=N       threads the clients are spread over
  --rate=N                 requests per second to send at, for latency under a set load

example: kimberlite benchmark --replica-count=3 --batch=1 --clients=64 --events=100000",
    ),
    (
        "client",
        "\
usage: kimberlite client --addresses=ADDRESS[,ADDRESS...] --cluster=ID [--format=json] COMMAND

Runs one operation against a cluster and prints its result: as text, or as one JSON object
with a \"result\" field (--format=json). Exit code 0: done; 1: bad arguments, or no replica
answered; 2: the cluster answered with another result (printed).

  create-stream STREAM [TENANT]
  append STREAM --type=TYPE [--metadata=TEXT] [--expected-offset=N|any|no-stream]
         (EVENT... | --file=PATH | --file=-)     one event per argument, or per line of a
                                                 file (- reads standard input; blank lines
                                                 are skipped)
  read STREAM [--offset=N] [--count=N] [--linearizable]
  read-log [--position=N] [--count=N] [--linearizable]
  info STREAM [--linearizable]                   a read is served at the commit of the replica
                                                 that answers; --linearizable: by the primary,
                                                 reflecting every write acknowledged before
  tail STREAM [--offset=N]                       prints the stream's events as they commit,
  tail --log [--position=N]                      or the whole log's, until interrupted
                                                 (from offset or position 0 by default)

examples:
  kimberlite client --addresses=127.0.0.1:3001 --cluster=7 create-stream 1
  kimberlite client --addresses=127.0.0.1:3001 --cluster=7 append 1 --type=greeting hello
  kimberlite client --addresses=127.0.0.1:3001 --cluster=7 read 1
  kimberlite client --addresses=127.0.0.1:3001 --cluster=7 tail 1 --offset=100",
    ),
    (
        "vopr",
        "\
usage: kimberlite vopr [--seed=N] [--replicas=N] [--ticks=N] [--check-determinism]

Runs one seed of the simulator: a cluster under random faults whose every answer is checked
against a model. A failing seed prints how to reproduce it.

example: kimberlite vopr --seed=42",
    ),
    (
        "status",
        "\
usage: kimberlite status --addresses=ADDRESS[,ADDRESS...] --cluster=ID [--format=json]

Asks each replica, over the wire, where it stands and prints one row per replica: reachable
or why not, status (normal, view_change or recovering; syncing while it state-syncs,
rejoining until a replica whose data file was lost holds the cluster's log again), view,
whether it is the primary, head op, commit, checkpoint, and how many ops its commit is behind
the primary's. --format=json prints one object with a \"replicas\" array.

example: kimberlite status --addresses=10.0.0.1:3001,10.0.0.2:3001,10.0.0.3:3001 --cluster=7",
    ),
    (
        "export",
        "\
usage: kimberlite export --addresses=ADDRESS[,ADDRESS...] --cluster=ID FILE

Writes the cluster's committed log to FILE (which must not exist), while the cluster serves:
every event, in log order, with its stream, offset, position, timestamp, type, metadata, data
and chain checksum. Each event is checked against its stream's chain before it is written, and
each stream's chain against the cluster's at the end. The log is read up to its end when the
first read was served; events appended later are not in the file. Streams that hold no
event are not in the log, so not in the file. `kimberlite import` loads the file.

example: kimberlite export --addresses=10.0.0.1:3001,10.0.0.2:3001,10.0.0.3:3001 --cluster=7 \
backup.kimberlite-log",
    ),
    (
        "import",
        "\
usage: kimberlite import --addresses=ADDRESS[,ADDRESS...] --cluster=ID FILE

Loads a log that `kimberlite export` wrote into a fresh cluster (formatted, started, and
written to by nothing else meanwhile): every event at its original offset and position, with
its original timestamp, so that every chain checksum is the exported one. The whole file is
read and checked first (a truncated or damaged file imports nothing); the cluster appends each
batch only if it chains to the checksum the file carries; at the end each stream's chain and
length are compared with the file's. A cluster that already holds events is refused at
the first batch (import_position_wrong), and nothing of that batch is appended.

example: kimberlite import --addresses=10.0.1.1:3001,10.0.1.2:3001,10.0.1.3:3001 --cluster=8 \
backup.kimberlite-log",
    ),
    (
        "version",
        "\
usage: kimberlite version   (or kimberlite --version)

Prints the version, the commit it was built from and the build profile.",
    ),
];

/// The help of `command`, if it is one.
fn help(command: &str) -> Option<&'static str> {
    HELP.iter().find(|(name, _)| *name == command).map(|(_, text)| *text)
}

/// Runs the command named by `arguments` (without the program name) and returns the exit code.
pub fn main_with_args(arguments: &[String]) -> i32 {
    let Some((command, rest)) = arguments.split_first() else {
        eprintln!("{USAGE}");
        return 1;
    };
    // `--help` anywhere (it can be no value); `-h` before the first positional argument only:
    // after it, `-h` may be data (an event).
    let first_short = rest.iter().find(|argument| !argument.starts_with("--"));
    let asks_help = rest.iter().any(|argument| argument == "--help")
        || first_short.is_some_and(|argument| argument == "-h");
    if let Some(text) = help(command).filter(|_| asks_help) {
        println!("{text}");
        return 0;
    }
    let result = match command.as_str() {
        "format" => command_format(rest),
        "inspect" => command_inspect(rest),
        "start" => command_start(rest),
        "benchmark" => command_benchmark(rest),
        "client" => crate::cli_client::command_client(rest),
        "status" => crate::cli_status::command_status(rest),
        "export" => crate::cli_backup::command_export(rest),
        "import" => crate::cli_backup::command_import(rest),
        "vopr" => match vopr_invocation(rest) {
            Ok(invocation) => return crate::sim::vopr::command(invocation),
            Err(message) => Err(message),
        },
        "version" | "--version" | "-V" => command_version(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}' (try 'kimberlite help')")),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("kimberlite {command}: {message}");
            1
        }
    }
}

/// Parses a byte size such as `4096`, `512KiB`, `1GiB` or `2G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size"))?;
    let multiplier: u64 = match suffix {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return Err(format!("'{text}' has an unknown size suffix (use KiB, MiB, GiB, TiB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("'{text}' is too large"))
}

/// Reads the `format` options into a validated `Config`.
fn format_config(arguments: &Arguments) -> Result<Config, String> {
    let cluster: u64 = arguments.integer("cluster")?;
    let replica_count: u8 = arguments
        .integer::<u64>("replica-count")?
        .try_into()
        .map_err(|_| "replica count must be at most 7".to_string())?;
    let replica: u8 = arguments
        .integer::<u64>("replica")?
        .try_into()
        .map_err(|_| "replica index must be less than the replica count".to_string())?;
    let mut config = Config::new(ClusterId(cluster), ReplicaIndex(replica), replica_count);
    if let Some(size) = arguments.flag("grid-size") {
        config.grid_size = parse_size(size)?;
        if !config.grid_size.is_multiple_of(BLOCK_SIZE as u64) {
            return Err(format!(
                "--grid-size={size} is not a multiple of the block size ({BLOCK_SIZE} bytes)"
            ));
        }
    }
    if arguments.flag("clients-max").is_some() {
        let clients_max: u64 = arguments.integer("clients-max")?;
        if clients_max == 0 || clients_max > CLIENTS_MAX as u64 {
            return Err(format!(
                "--clients-max={clients_max}: client sessions must be 1 to {CLIENTS_MAX}"
            ));
        }
        config.clients_max = clients_max as u32;
    }
    if arguments.flag("streams-max").is_some() {
        let streams_max: u64 = arguments.integer("streams-max")?;
        if streams_max == 0 || streams_max > u64::from(STREAMS_MAX) {
            return Err(format!("--streams-max={streams_max}: streams must be 1 to {STREAMS_MAX}"));
        }
        config.streams_max = streams_max as u32;
    }
    if let Some(reason) = config.invalid() {
        return Err(reason.to_string());
    }
    let blocks = config.grid_size / BLOCK_SIZE as u64;
    if !crate::state_machine::grid_holds_a_stream(config.streams_max, blocks) {
        let blocks_min = crate::state_machine::grid_blocks_min(config.streams_max);
        let reserve = crate::state_machine::checkpoint_blocks_max(config.streams_max, blocks);
        return Err(format!(
            "a grid of {} bytes cannot hold a stream: with --streams-max={} a checkpoint keeps \
             {} bytes free; every --grid-size from {} up works",
            config.grid_size,
            config.streams_max,
            reserve * BLOCK_SIZE as u64,
            size_text(blocks_min * BLOCK_SIZE as u64),
        ));
    }
    Ok(config)
}

/// `bytes` with the largest binary suffix that divides it (as `parse_size` reads it).
fn size_text(bytes: u64) -> String {
    for (suffix, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn command_format(arguments: &[String]) -> Result<(), String> {
    let allowed = [
        "cluster",
        "replica",
        "replica-count",
        "grid-size",
        "clients-max",
        "streams-max",
        "rejoin",
    ];
    let arguments = Arguments::parse(arguments, &allowed)?;
    let config = format_config(&arguments)?;
    let path = arguments.path()?;
    let rejoin = match arguments.flag("rejoin") {
        None => false,
        Some("") => true,
        Some(value) => return Err(format!("--rejoin takes no value (got '{value}')")),
    };
    if rejoin && config.replica_count == 1 {
        return Err(
            "--rejoin replaces a replica of a cluster: it needs --replica-count of 2 or more \
             (a single replica has no peers to recover from)"
                .to_string(),
        );
    }
    let report = if rejoin {
        crate::io::format::format_file_rejoin(path.as_ref(), &config)
    } else {
        crate::io::format::format_file(path.as_ref(), &config)
    }
    .map_err(|error| error.to_string())?;
    println!(
        "formatted {path}: cluster={} replica={}/{} clients_max={} streams_max={} size={} bytes \
         in {:.2} s",
        config.cluster,
        config.replica,
        config.replica_count,
        config.clients_max,
        config.streams_max,
        report.size_bytes,
        report.elapsed.as_secs_f64(),
    );
    Ok(())
}

fn command_inspect(arguments: &[String]) -> Result<(), String> {
    let arguments = Arguments::parse(arguments, &["format"])?;
    let json = match arguments.flag("format") {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(format!("--format={other}: the formats are text and json")),
    };
    let path = arguments.path()?;
    let report = match crate::inspect::inspect_file(path.as_ref()) {
        Ok(report) => report,
        Err(error) if json => {
            // A file that cannot be read at all is still one JSON object on stdout.
            let mut object = crate::stdx::json::Json::new();
            object.text("path", path).text("error", &error).boolean("usable", false);
            println!("{}", object.finish());
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    if json {
        println!("{}", report.json);
    } else {
        print!("{}", report.text);
    }
    if report.usable { Ok(()) } else { Err(format!("{path} is not usable")) }
}

/// The flags of `start` (each also read from `KIMBERLITE_<FLAG>`).
pub(crate) const START_FLAGS: [&str; 3] = ["addresses", "metrics", "log-level"];

fn command_start(arguments: &[String]) -> Result<(), String> {
    let mut arguments = Arguments::parse(arguments, &START_FLAGS)?;
    arguments.environment_fallback(&START_FLAGS, |name| std::env::var(name).ok());
    let addresses = parse_addresses(arguments.flag_required("addresses")?)?;
    let metrics = match arguments.flag("metrics") {
        Some(text) => Some(parse_address(text).map_err(|error| format!("--metrics: {error}"))?),
        None => None,
    };
    let path = arguments.path()?;
    if let Some(level) = arguments.flag("log-level") {
        crate::io::log::level_set(crate::io::log::Level::parse(level)?);
    }
    let options = crate::io::server::StartOptions { addresses, metrics };
    crate::io::server::start(path.as_ref(), &options)
}

fn command_benchmark(arguments: &[String]) -> Result<(), String> {
    let allowed = [
        "addresses",
        "cluster",
        "replica-count",
        "clients",
        "events",
        "event-size",
        "batch",
        "streams",
        "client-threads",
        "rate",
    ];
    let arguments = Arguments::parse(arguments, &allowed)?;
    if let Some(extra) = arguments.positionals.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let defaults = crate::benchmark::Options::default();
    let clients = arguments.integer_or("clients", defaults.clients)?;
    let options = crate::benchmark::Options {
        addresses: match arguments.flag("addresses") {
            Some(text) => parse_addresses(text)?,
            None => Vec::new(),
        },
        cluster: match arguments.flag("addresses") {
            // A cluster of --addresses has its own id: a wrong default would only time out.
            Some(_) => ClusterId(arguments.integer("cluster")?),
            None => ClusterId(arguments.integer_or("cluster", defaults.cluster.0)?),
        },
        clients,
        events: arguments.integer_or("events", defaults.events)?,
        event_size: arguments.integer_or("event-size", defaults.event_size)?,
        batch: match arguments.flag("batch") {
            Some(_) => Some(arguments.integer("batch")?),
            None => None,
        },
        streams: arguments.integer_or("streams", clients as u64)?,
        replica_count: arguments.integer_or("replica-count", defaults.replica_count)?,
        client_threads: match arguments.flag("client-threads") {
            Some(_) => Some(arguments.integer("client-threads")?),
            None => None,
        },
        rate: match arguments.flag("rate") {
            Some(_) => Some(arguments.integer::<f64>("rate")?),
            None => None,
        },
    };
    crate::benchmark::run(&options).map(|_| ())
}

/// `kimberlite vopr [--seed=N] [--replicas=N] [--ticks=N] [--check-determinism]`.
fn vopr_invocation(arguments: &[String]) -> Result<Invocation, String> {
    let allowed = ["seed", "replicas", "ticks", "check-determinism"];
    let arguments = Arguments::parse(arguments, &allowed)?;
    if let Some(extra) = arguments.positionals.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let seed = match arguments.flag("seed") {
        Some(_) => arguments.integer("seed")?,
        None => seed_from_os(),
    };
    let replica_count = match arguments.flag("replicas") {
        Some(_) => Some(arguments.integer::<u8>("replicas")?),
        None => None,
    };
    if replica_count.is_some_and(|count| count == 0 || usize::from(count) > REPLICAS_MAX) {
        return Err(format!("--replicas must be 1 to {REPLICAS_MAX}"));
    }
    let ticks = match arguments.flag("ticks") {
        Some(_) => Some(arguments.integer::<u64>("ticks")?),
        None => None,
    };
    let check_determinism = match arguments.flag("check-determinism") {
        None => false,
        Some("") => true,
        Some(_) => return Err("--check-determinism takes no value".to_string()),
    };
    Ok(Invocation { seed, replica_count, ticks, check_determinism })
}

/// The one place the VOPR reads the OS's randomness: a seed when none is given (printed first,
/// so the run can be replayed).
fn seed_from_os() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

fn command_version(arguments: &[String]) -> Result<(), String> {
    Arguments::parse(arguments, &[])?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "kimberlite {} (commit {}, profile {}; protocol {}, data file format {})",
        env!("CARGO_PKG_VERSION"),
        crate::BUILD_COMMIT,
        crate::BUILD_PROFILE,
        crate::constants::PROTOCOL_VERSION,
        crate::constants::SUPERBLOCK_VERSION,
    );
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(arguments: &[&str]) -> Vec<String> {
        arguments.iter().map(|argument| argument.to_string()).collect()
    }

    #[test]
    fn vopr_rejects_bad_arguments() {
        // Goal: `vopr` refuses bad options with exit code 1 before it runs anything.
        for arguments in
            [&["--replicas=8"][..], &["--seed=x"], &["--check-determinism=yes"], &["extra"]]
        {
            let mut line = strings(&["vopr"]);
            line.extend(strings(arguments));
            assert_eq!(main_with_args(&line), 1, "{arguments:?}");
        }
        let invocation = vopr_invocation(&strings(&["--seed=3", "--replicas=2"])).expect("valid");
        assert_eq!(invocation.seed, 3);
        assert_eq!(invocation.replica_count, Some(2));
    }

    fn format_error(arguments: &[&str]) -> String {
        let allowed =
            ["cluster", "replica", "replica-count", "grid-size", "clients-max", "streams-max"];
        let arguments = Arguments::parse(&strings(arguments), &allowed);
        match arguments.and_then(|arguments| format_config(&arguments)) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(message) => message,
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        // Goal: operators can write sizes the way they think of them.
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn benchmark_rejects_each_bad_argument_before_it_starts_anything() {
        // Goal: bad load settings are named in one line before any data file or replica is
        // made (`run` checks them first), including more clients than a session table holds.
        let bad = [
            (vec!["--clients=0"], "--clients, --events and --streams must be at least 1"),
            (vec!["--clients=8193"], "--clients must be at most 8192"),
            (vec!["--event-size=0"], "--event-size must be at least 1"),
            (vec!["--client-threads=0"], "--client-threads must be at least 1"),
            (vec!["--rate=0"], "--rate must be a positive number"),
            (vec!["--rate=fast"], "not a valid number"),
        ];
        for (arguments, expected) in bad {
            let arguments: Vec<String> = arguments.iter().map(ToString::to_string).collect();
            let error = command_benchmark(&arguments).unwrap_err();
            assert!(error.contains(expected), "{arguments:?}: {error}");
        }
    }

    #[test]
    fn format_rejects_each_bad_argument_with_one_line() {
        // Goal: every bad format argument is named in one line, never a panic.
        let base = ["--cluster=1", "--replica=0", "--replica-count=3"];
        assert_eq!(
            format_error(&["--cluster=1", "--replica=3", "--replica-count=3"]),
            "replica index must be less than the replica count"
        );
        assert_eq!(
            format_error(&["--cluster=1", "--replica=0", "--replica-count=0"]),
            "replica count must be at least 1"
        );
        assert_eq!(
            format_error(&["--cluster=1", "--replica=0", "--replica-count=8"]),
            "replica count must be at most 7"
        );
        assert_eq!(
            format_error(&["--cluster=1", "--replica=0", "--replica-count=300"]),
            "replica count must be at most 7"
        );
        let mut grid = base.to_vec();
        grid.push("--grid-size=1000");
        assert!(format_error(&grid).contains("not a multiple of the block size"));
        assert!(format_error(&["--replica=0", "--replica-count=3"]).contains("--cluster"));
        assert!(
            format_error(&["--cluster=x", "--replica=0", "--replica-count=3"])
                .contains("not a valid number")
        );
        for clients_max in ["--clients-max=0", "--clients-max=8193"] {
            let mut clients = base.to_vec();
            clients.push(clients_max);
            assert!(format_error(&clients).contains("client sessions must be 1 to 8192"));
        }
        for streams_max in ["--streams-max=0", "--streams-max=8388609"] {
            let mut streams = base.to_vec();
            streams.push(streams_max);
            assert!(format_error(&streams).contains("streams must be 1 to 8388608"));
        }
        let mut tiny = base.to_vec();
        tiny.push("--grid-size=512KiB");
        assert_eq!(
            format_error(&tiny),
            "a grid of 524288 bytes cannot hold a stream: with --streams-max=65536 a checkpoint \
             keeps 7340032 bytes free; every --grid-size from 17920KiB up works"
        );
        // Just past a power of two the reserve grows a skip level: 31 blocks hold a stream,
        // 32 to 34 do not.
        let mut edge = base.to_vec();
        edge.push("--grid-size=16MiB");
        assert!(format_error(&edge).contains("cannot hold a stream"));
        let mut below = base.to_vec();
        below.push("--grid-size=15872KiB");
        let arguments = Arguments::parse(
            &strings(&below),
            &["cluster", "replica", "replica-count", "grid-size"],
        );
        assert!(format_config(&arguments.unwrap()).is_ok());
        let mut unknown = base.to_vec();
        unknown.push("--colour=blue");
        assert!(format_error(&unknown).contains("unknown option"));
        for message in [format_error(&grid), format_error(&unknown)] {
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn unknown_command_exits_one() {
        // Goal: a typo in the command is an error, not a panic.
        assert_eq!(main_with_args(&strings(&["frobnicate"])), 1);
        assert_eq!(main_with_args(&[]), 1);
    }
}
