//! The binary as operators use it: `format` and `inspect` exit codes and one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use kimberlite::constants::SUPERBLOCK_COPY_SIZE;

const BINARY: &str = env!("CARGO_BIN_EXE_kimberlite");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let directory = std::env::current_dir()
            .unwrap()
            .join(format!("target/cli-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        Scratch(directory)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(arguments: &[&str]) -> Output {
    Command::new(BINARY).args(arguments).output().unwrap()
}

fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(text.trim_end().lines().count(), 1, "one line expected: {text}");
    text
}

/// `format` of one replica's small file (a 2 MiB grid holds a stream of a 64-stream table).
const FORMAT_SMALL: [&str; 6] = [
    "format",
    "--cluster=9",
    "--replica=0",
    "--replica-count=1",
    "--grid-size=2MiB",
    "--streams-max=64",
];

#[test]
fn format_then_inspect_a_healthy_file() {
    // Goal: a formatted file inspects as usable, with every superblock copy valid, in text and
    // in JSON.
    let scratch = Scratch::new("healthy");
    let path = scratch.0.join("0_0.kimberlite");
    let path = path.to_str().unwrap();
    let format = FORMAT_SMALL;
    let output = run(&[&format[..], &[path]].concat());
    assert!(output.status.success(), "{output:?}");
    let output = run(&["inspect", path]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.matches("valid, sequence 1").count(), 4);
    assert!(text.contains("nil            1024"));
    assert!(text.contains("journal: usable"));
    // Four blocks: one for the open block, three kept for a checkpoint, none left over.
    assert!(text.contains("in use: 0 of 4 blocks"), "{text}");
    assert!(text.contains("room for events before storage_full: 0 blocks"), "{text}");
    // The same as one JSON object.
    let output = run(&["inspect", "--format=json", path]);
    assert!(output.status.success(), "{output:?}");
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(json.starts_with(r#"{"path":""#) && json.trim_end().ends_with(r#""usable":true}"#));
    assert!(json.contains(r#""grid":{"blocks":4,"blocks_in_use":0,"#), "{json}");
    assert!(json.contains(r#""slots_by_decision":{"nil":1024},"usable":true}"#), "{json}");
    // A second format of the same path is refused, and the file is left alone.
    let output = run(&[&format[..], &[path]].concat());
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("exists"));
}

#[test]
fn inspect_of_a_file_without_superblock_quorum_fails() {
    // Goal: three corrupt superblock copies make the file unusable: non-zero exit.
    let scratch = Scratch::new("corrupt");
    let path = scratch.0.join("0_0.kimberlite");
    let path_text = path.to_str().unwrap();
    assert!(run(&[&FORMAT_SMALL[..], &[path_text]].concat()).status.success());
    let mut bytes = std::fs::read(&path).unwrap();
    for copy in 0..3 {
        bytes[copy * SUPERBLOCK_COPY_SIZE + 100] ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let output = run(&["inspect", path_text]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("corrupt (checksum)"));
    assert!(text.contains("quorum: none"));
    let output = run(&["inspect", "--format=json", "no-such-file"]);
    assert_eq!(output.status.code(), Some(1));
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(json.starts_with(r#"{"path":"no-such-file","error":"#), "{json}");
    let output = run(&["inspect", "--format=json", path_text]);
    assert_eq!(output.status.code(), Some(1));
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(json.contains(r#""quorum_error":"#) && json.contains(r#""usable":false}"#), "{json}");
}

#[test]
fn bad_format_arguments_exit_one_with_one_line() {
    // Goal: every bad argument is a one-line error and exit code 1, never a panic.
    let scratch = Scratch::new("arguments");
    let path = scratch.0.join("x.kimberlite");
    let path = path.to_str().unwrap();
    let missing = scratch.0.join("missing/x.kimberlite");
    let cases: [&[&str]; 6] = [
        &["format", "--cluster=1", "--replica=3", "--replica-count=3", path],
        &["format", "--cluster=1", "--replica=0", "--replica-count=0", path],
        &["format", "--cluster=1", "--replica=0", "--replica-count=8", path],
        &["format", "--cluster=1", "--replica=0", "--replica-count=1", "--grid-size=1000", path],
        &["format", "--cluster=1", "--replica=0", "--replica-count=1", missing.to_str().unwrap()],
        &["format", "--cluster=1", "--replica=0", "--replica-count=1"],
    ];
    for arguments in cases {
        let output = run(arguments);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {output:?}");
        stderr_line(&output);
    }
    assert!(!std::path::Path::new(path).exists());
    let output = run(&["inspect", path]);
    assert_eq!(output.status.code(), Some(1));
    stderr_line(&output);
}

#[test]
fn format_rejoin_marks_the_log_lost_and_needs_peers() {
    // Goal: `format --rejoin` makes a usable data file whose superblock says its log was lost
    // (so the replica will not vote until it recovers the cluster's log), and is refused for a
    // single-replica cluster, which has no peers to recover from.
    let scratch = Scratch::new("rejoin");
    let path = scratch.0.join("0_1.kimberlite");
    let path = path.to_str().unwrap();
    let format = [
        "format",
        "--cluster=9",
        "--replica=1",
        "--replica-count=3",
        "--grid-size=2MiB",
        "--streams-max=64",
    ];
    let output = run(&[&format[..], &["--rejoin", path]].concat());
    assert!(output.status.success(), "{output:?}");
    let output = run(&["inspect", path]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("log_lost"), "{text}");
    assert_eq!(text.matches("valid, sequence 2").count(), 4, "{text}");
    let single = scratch.0.join("0_0.kimberlite");
    let single = single.to_str().unwrap();
    let format = ["format", "--cluster=9", "--replica=0", "--replica-count=1", "--rejoin"];
    let output = run(&[&format[..], &[single]].concat());
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("--rejoin"));
}

#[test]
fn benchmark_open_loop_drives_many_sessions_from_few_threads_at_the_rate() {
    // Goal: `--rate` runs open loop: 40 sessions on 2 driver threads send 400 one-event
    // requests at 2,000 a second in all, so the run cannot end before the last one fell due
    // (0.2 s), and every request is answered.
    let scratch = Scratch::new("benchmark-open-loop");
    let output = Command::new(BINARY)
        .args(["benchmark", "--batch=1", "--clients=40", "--client-threads=2", "--events=400"])
        .args(["--rate=2000"])
        .current_dir(&scratch.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("400 events of 128 bytes in 400 requests"), "{stdout}");
    assert!(stdout.contains("40 clients"), "{stdout}");
    assert!(stdout.contains("open loop at 2000 requests/s"), "{stdout}");
    assert!(stdout.contains("2 client thread(s)"), "{stdout}");
    let elapsed = stdout.lines().find_map(|line| line.strip_prefix("elapsed: "));
    let elapsed: f64 = elapsed.and_then(|text| text.trim_end_matches(" s").parse().ok()).unwrap();
    assert!(elapsed >= 0.19, "{stdout}");
}

#[test]
fn benchmark_starts_its_local_cluster_whole_and_cleans_up() {
    // Goal: `benchmark` with three local replicas starts the load only once every replica is
    // connected to its peers, completes, prints throughput and latency up to p99.99, and
    // removes its scratch directory.
    let scratch = Scratch::new("benchmark");
    let child = Command::new(BINARY)
        .args(["benchmark", "--replica-count=3", "--batch=1", "--clients=2", "--events=300"])
        .current_dir(&scratch.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let directory = scratch.0.join(format!("kimberlite-benchmark-{}", child.id()));
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("300 events of 128 bytes in 300 requests"), "{stdout}");
    assert!(stdout.contains("throughput: ") && stdout.contains(" p99.99 "), "{stdout}");
    let connected = |replica: u8| format!("event=peer_connected peer_replica={replica} ");
    let (before_load, _) = stderr.split_once("every replica is connected").expect("{stderr}");
    assert!(before_load.matches(&connected(1)).count() >= 1, "{stderr}");
    assert!(before_load.matches(&connected(2)).count() >= 2, "{stderr}");
    assert!(!directory.exists(), "{} left behind", directory.display());
}

#[test]
fn every_command_has_help_with_an_example_and_the_binary_a_version() {
    // Goal: `--help` (or `-h`) after any command prints its usage, options and an example on
    // stdout and exits 0, whatever else is on the line; `--version` prints the version.
    let commands = ["format", "start", "inspect", "benchmark", "client", "status", "export"];
    for command in commands.into_iter().chain(["import", "vopr", "version"]) {
        for flag in ["--help", "-h"] {
            let output = run(&[command, "--cluster=1", flag]);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{command} {flag}: {output:?}");
            assert!(stdout.starts_with(&format!("usage: kimberlite {command}")), "{stdout}");
        }
    }
    for command in commands.into_iter().chain(["import", "vopr"]) {
        let output = run(&[command, "--help"]);
        assert!(String::from_utf8_lossy(&output.stdout).contains("example"), "{command}");
    }
    // `--help` after a positional argument too (it can be no value).
    let output = run(&["format", "x.kimberlite", "--help"]);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: kimberlite format"));
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("kimberlite "));
}

#[test]
fn benchmark_of_a_cluster_by_address_needs_its_cluster_id() {
    // Goal: `benchmark --addresses` without `--cluster` is refused at once (a wrong default
    // would only time out against the cluster's replicas).
    let output = run(&["benchmark", "--addresses=127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("'--cluster=...'"));
}
