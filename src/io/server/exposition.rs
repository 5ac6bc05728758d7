//! What a scrape of `start --metrics` reports: the replica's state and counters, its disk's
//! and its bus's, rendered in the Prometheus text format. `docs/operating.md` says which to
//! alert on.

use std::fmt::Write as _;

use super::Server;
use crate::io::metrics::{EndpointMetrics, Exposition};
use crate::vsr::accept::Reject;
use crate::vsr::replica::{Gauges, Status};

impl Server {
    /// Renders every metric into `out`.
    pub(super) fn metrics_render(&self, out: &mut Exposition, endpoint: &EndpointMetrics) {
        let gauges = self.replica.gauges();
        self.metrics_render_state(out, &gauges);
        self.metrics_render_work(out);
        self.metrics_render_storage(out, &gauges);
        self.metrics_render_connections(out);
        self.metrics_render_counters(out, endpoint);
    }

    /// Who the replica is and where it stands.
    fn metrics_render_state(&self, out: &mut Exposition, gauges: &Gauges) {
        let config = self.replica.config();
        out.family("kimberlite_replica_info", "gauge", "The replica's identity (always 1).");
        let _ = writeln!(
            out,
            "kimberlite_replica_info{{cluster=\"{}\",replica=\"{}\",replica_count=\"{}\",\
             commit=\"{}\"}} 1",
            config.cluster,
            config.replica,
            config.replica_count,
            crate::BUILD_COMMIT,
        );
        out.family(
            "kimberlite_replica_status",
            "gauge",
            "1 for the replica's status: recovering, view_change or normal.",
        );
        for (name, status) in [
            ("recovering", Status::Recovering),
            ("view_change", Status::ViewChange),
            ("normal", Status::Normal),
        ] {
            let value = u64::from(self.replica.status() == status);
            let _ = writeln!(out, "kimberlite_replica_status{{status=\"{name}\"}} {value}");
        }
        let flag = u64::from;
        out.gauge(
            "kimberlite_replica_primary",
            "1 while the primary of a normal view.",
            flag(gauges.primary),
        );
        out.gauge(
            "kimberlite_replica_syncing",
            "1 while state sync fetches a checkpoint.",
            flag(gauges.syncing),
        );
        out.gauge(
            "kimberlite_replica_rejoining",
            "1 while a replica whose data file was lost has not caught up.",
            flag(gauges.rejoining),
        );
        out.gauge("kimberlite_replica_view", "The view the replica is in.", gauges.view);
        out.gauge("kimberlite_replica_op", "The op of the log's head.", gauges.op);
        out.gauge("kimberlite_replica_commit", "The highest op executed.", gauges.commit_min);
        out.gauge(
            "kimberlite_replica_commit_max",
            "The highest op the replica knows the cluster committed.",
            gauges.commit_max,
        );
        out.gauge(
            "kimberlite_replica_commit_lag",
            "Ops committed by the cluster and not yet executed here (commit_max - commit).",
            gauges.commit_max.saturating_sub(gauges.commit_min),
        );
        out.gauge(
            "kimberlite_replica_checkpoint_op",
            "The op of the durable checkpoint.",
            gauges.checkpoint_op,
        );
    }

    /// What the replica did: prepares, commits, requests and WAL writes, and their latency.
    fn metrics_render_work(&self, out: &mut Exposition) {
        let metrics = self.replica.metrics();
        let storage = &self.storage;
        out.counter(
            "kimberlite_replica_prepares_total",
            "Prepares written to the WAL (rate: prepares per second).",
            storage.journal_prepare_writes.count(),
        );
        out.counter(
            "kimberlite_replica_commits_total",
            "Ops executed (rate: commits per second).",
            metrics.ops_committed,
        );
        out.family(
            "kimberlite_request_duration_seconds",
            "histogram",
            "From a request's arrival at this replica to its reply leaving, by kind (reads that \
             wait for events not counted).",
        );
        out.histogram(
            "kimberlite_request_duration_seconds",
            "kind=\"write\"",
            &self.requests.writes,
        );
        out.histogram("kimberlite_request_duration_seconds", "kind=\"read\"", &self.requests.reads);
        out.counter(
            "kimberlite_requests_untimed_total",
            "Requests not timed: more clients at once than the timing table holds.",
            self.requests.untimed,
        );
        out.family(
            "kimberlite_journal_write_duration_seconds",
            "histogram",
            "Durable WAL writes, from submission to completion, by zone.",
        );
        let histogram = &storage.journal_prepare_writes;
        out.histogram("kimberlite_journal_write_duration_seconds", "zone=\"prepares\"", histogram);
        let histogram = &storage.journal_header_writes;
        out.histogram("kimberlite_journal_write_duration_seconds", "zone=\"headers\"", histogram);
    }

    /// What the replica has left to do and where it has room: repair, sync, grid, sessions.
    fn metrics_render_storage(&self, out: &mut Exposition, gauges: &Gauges) {
        out.counter(
            "kimberlite_storage_written_bytes_total",
            "Bytes written to the data file.",
            self.storage.written_bytes(),
        );
        out.gauge(
            "kimberlite_repair_journal_dirty",
            "WAL entries whose prepare this replica lacks or holds a wrong version of.",
            gauges.journal_dirty,
        );
        out.gauge(
            "kimberlite_repair_journal_faulty",
            "WAL entries whose bytes on disk are bad.",
            gauges.journal_faulty,
        );
        out.gauge(
            "kimberlite_state_sync_block_next",
            "The grid block state sync fetches next (0 when not fetching).",
            gauges.sync_block_next,
        );
        out.gauge(
            "kimberlite_state_sync_block_end",
            "The grid block state sync fetches up to (0 when not fetching).",
            gauges.sync_block_end,
        );
        out.gauge("kimberlite_grid_used_bytes", "Grid bytes in use.", gauges.grid_used_bytes);
        out.gauge(
            "kimberlite_grid_room_bytes",
            "Grid bytes left for events before appends answer storage_full.",
            gauges.grid_room_bytes,
        );
        let block = crate::constants::BLOCK_SIZE as u64;
        out.gauge(
            "kimberlite_grid_limit_bytes",
            "The cluster's grid: what the smallest replica's file holds.",
            gauges.grid_limit_blocks * block,
        );
        out.gauge("kimberlite_client_sessions", "Clients with a session.", gauges.client_sessions);
        let clients_max = u64::from(self.replica.config().clients_max);
        out.gauge("kimberlite_client_sessions_max", "Sessions the cluster keeps.", clients_max);
    }

    /// The bus: connections by peer, messages, and what it refused and why.
    fn metrics_render_connections(&self, out: &mut Exposition) {
        let bus = self.bus.metrics();
        out.family("kimberlite_connections", "gauge", "Open connections, by peer.");
        let peers = ["unidentified", "client", "replica"];
        for (peer, count) in peers.iter().zip(self.bus.connections_by_peer()) {
            let _ = writeln!(out, "kimberlite_connections{{peer=\"{peer}\"}} {count}");
        }
        out.family(
            "kimberlite_messages_rejected_total",
            "counter",
            "Messages refused, by reason (the bus closes the connection; a peer's body that \
             contradicts its header is dropped).",
        );
        let reasons = [
            (Reject::Header("").index(), "header"),
            (Reject::Cluster.index(), "cluster"),
            (Reject::Size.index(), "size"),
            (Reject::Command.index(), "command"),
            (Reject::BodyChecksum.index(), "body_checksum"),
        ];
        for (index, reason) in reasons {
            let count = bus.messages_rejected[index];
            let _ =
                writeln!(out, "kimberlite_messages_rejected_total{{reason=\"{reason}\"}} {count}");
        }
        let invalid = self.replica.metrics().messages_invalid;
        let _ = writeln!(
            out,
            "kimberlite_messages_rejected_total{{reason=\"body_invalid\"}} {invalid}"
        );
        let counters = [
            ("connections_accepted", bus.connections_accepted, "Connections accepted."),
            ("connections_refused", bus.connections_refused, "Connections refused: no slot."),
            ("connections_closed", bus.connections_closed, "Connections closed."),
            ("messages_received", bus.messages_received, "Messages received."),
            ("messages_sent", bus.messages_sent, "Messages sent."),
            (
                "messages_dropped",
                bus.messages_dropped,
                "Messages dropped: peer gone or queue full.",
            ),
        ];
        for (name, value, help) in counters {
            let mut name_buffer = [0u8; 64];
            let name = metric_name(&mut name_buffer, "kimberlite_bus_", name);
            out.counter(name, help, value);
        }
    }

    /// Every counter of the replica (`Metrics`), and the endpoint's own.
    fn metrics_render_counters(&self, out: &mut Exposition, endpoint: &EndpointMetrics) {
        for (name, value) in self.replica.metrics().counters() {
            let mut name_buffer = [0u8; 96];
            let name = metric_name(&mut name_buffer, "kimberlite_replica_", name);
            out.counter(name, "A replica counter (see vsr::replica::Metrics).", value);
        }
        for (name, value) in endpoint.counters() {
            let mut name_buffer = [0u8; 96];
            let name = metric_name(&mut name_buffer, "kimberlite_metrics_", name);
            out.counter(name, "A counter of this endpoint.", value);
        }
    }
}

/// `prefix` + `name` + `_total` in `buffer` (a stack buffer: nothing allocates).
fn metric_name<'a>(buffer: &'a mut [u8], prefix: &str, name: &str) -> &'a str {
    let parts = [prefix, name, "_total"];
    let mut length = 0;
    for part in parts {
        buffer[length..length + part.len()].copy_from_slice(part.as_bytes());
        length += part.len();
    }
    std::str::from_utf8(&buffer[..length]).expect("joined from strings")
}
