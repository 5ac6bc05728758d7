//! The scenario harness: what a test needs to steer the simulator's `Cluster` down one
//! protocol path on purpose, instead of waiting for the VOPR to stumble on it. A quiet cluster
//! (latency only, no random fault), `run_until` a condition (failing with every replica's
//! state), partitions and link cuts by direction and their healing, stopping and restarting a
//! replica, rotting a WAL prepare or a grid block of a stopped replica, pausing and resuming
//! the simulated clients (whose appends are the prepares), and delivering a crafted message.
//!
//! Every helper drives the same `Cluster` the VOPR runs (the same network, disks, clients and
//! checker); none changes what a run does unless a test calls it. `cluster.run()` then ends a
//! scenario: every link heals, every replica restarts, and the cluster must converge with the
//! checker satisfied.

use crate::constants::{BLOCK_SIZE, HEADER_SIZE, SECTOR_SIZE};
use crate::sim::cluster::{CLIENT_OUTSIDE, Cluster, ClusterOptions, FaultOptions, LinkDirection};
use crate::sim::storage::Latency;
use crate::vsr::header::{Command, Header, Op, Operation, ReplicaIndex, View};
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::replica::Replica;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faulty_wal;

/// Ticks a replica stopped by `stop` stays down unless `restart` brings it back.
const STOPPED_UNTIL_TICK: u64 = u64::MAX / 2;

/// No faults beyond latency and the reordering it brings: three clients, a small config.
pub(crate) fn options_quiet(seed: u64, replica_count: u8) -> ClusterOptions {
    ClusterOptions {
        seed,
        config: ClusterOptions::config_small(replica_count, 4),
        client_count: 3,
        storage_latency: Latency { min_ticks: 0, mean_ticks: 2 },
        network_latency: Latency { min_ticks: 1, mean_ticks: 3 },
        loss_per_mille: 0,
        duplicate_per_mille: 0,
        mutation_per_mille: 0,
        reply_late_per_mille: 0,
        request_timeout_ticks: 40,
        think_ticks_max: 8,
        read_wait_ticks_max: 0,
        read_linearizable: false,
        events_per_append_max: 8,
        event_size_max: 256,
        faults: FaultOptions::NONE,
        ticks_faults: 600,
        ticks_convergence_max: 2_000,
    }
}

/// A cluster of `options`, its seed printed first so that a failure names it.
pub(crate) fn cluster_new(options: ClusterOptions) -> Cluster {
    println!("seed={} replicas={}", options.seed, options.config.replica_count);
    Cluster::new(options)
}

/// One line per replica (index, up or down, status, view, log_view, head op, commit_min,
/// commit_max, checkpoint, and what else `debug_state` tells), after the tick.
pub(crate) fn states(cluster: &Cluster) -> String {
    let mut lines = format!("tick {}", cluster.tick());
    for index in 0..cluster.replica_count() {
        let state = match cluster.replica(index) {
            Some(replica) => format!("up: {}", replica.debug_state()),
            None => "down".to_string(),
        };
        lines.push_str(&format!("\n  R{index} {state}"));
    }
    lines
}

/// Steps `cluster` until `done` holds, failing the test with every replica's state if it
/// does not within `ticks_max` more ticks, or if the checker finds a violation on the way.
pub(crate) fn run_until(
    cluster: &mut Cluster,
    what: &str,
    ticks_max: u64,
    done: impl Fn(&Cluster) -> bool,
) {
    let deadline = cluster.tick() + ticks_max;
    while !done(cluster) {
        if let Err(violation) = cluster.step() {
            panic!("{what}: {violation:?}\n{}", states(cluster));
        }
        assert!(cluster.tick() < deadline, "{what}: not reached by tick {deadline}\n{}", {
            states(cluster)
        });
    }
}

/// Steps `cluster` up to tick `tick`.
pub(crate) fn run_to_tick(cluster: &mut Cluster, tick: u64) {
    let ticks_max = tick.saturating_sub(cluster.tick()) + 1;
    run_until(cluster, "tick", ticks_max, |cluster| cluster.tick() >= tick);
}

/// Replica `index`, which must be running.
pub(crate) fn replica(cluster: &Cluster, index: usize) -> &Replica {
    cluster.replica(index).unwrap_or_else(|| panic!("R{index} is down\n{}", states(cluster)))
}

/// Cuts replica `index` off from every other replica in `direction` (seen from it) until
/// `heal` (or `cluster.run()`).
pub(crate) fn partition(cluster: &mut Cluster, index: usize, direction: LinkDirection) {
    for other in (0..cluster.replica_count()).filter(|other| *other != index) {
        cluster.link_cut(index, other, direction, u64::MAX);
    }
}

/// Cuts the link from replica `from` to replica `to` (one direction) until healed.
pub(crate) fn link_cut(cluster: &mut Cluster, from: usize, to: usize) {
    cluster.link_cut(from, to, LinkDirection::Outgoing, u64::MAX);
}

/// Heals every link between replicas, both ways (clients stay as they are).
pub(crate) fn heal(cluster: &mut Cluster) {
    let replica_count = cluster.replica_count();
    for from in 0..replica_count {
        for to in (0..replica_count).filter(|to| *to != from) {
            cluster.link_heal(from, to, LinkDirection::Outgoing);
        }
    }
}

/// Stops replica `index` until `restart`: its writes in flight are lost, and nothing else on
/// its disk is damaged (no random WAL or grid fault comes with it, unlike the VOPR's crashes).
pub(crate) fn stop(cluster: &mut Cluster, index: usize) {
    cluster.crash_clean(index, STOPPED_UNTIL_TICK);
}

/// Crashes replica `index` as `stop` does, and restarts it from its disk `down_ticks` later.
pub(crate) fn crash_restart(cluster: &mut Cluster, index: usize, down_ticks: u64) {
    cluster.crash_clean(index, cluster.tick() + down_ticks);
}

/// Starts stopped replica `index` again from its disk, now.
pub(crate) fn restart(cluster: &mut Cluster, index: usize) {
    assert!(cluster.replica(index).is_none(), "R{index} is running");
    cluster.replica_start(index);
}

/// Steps until replica `index` is open (normal or in a view change).
pub(crate) fn run_until_open(cluster: &mut Cluster, index: usize, ticks_max: u64) {
    run_until(cluster, &format!("R{index} open"), ticks_max, |cluster| {
        cluster.replica(index).is_some_and(|replica| replica.status().is_open())
    });
}

/// Cuts every client off from every replica until `until_tick`: no new prepares meanwhile.
pub(crate) fn clients_cut_off(cluster: &mut Cluster, until_tick: u64) {
    let replica_count = cluster.replica_count();
    for client in 0..cluster.options().client_count {
        for replica in 0..replica_count {
            let client_node = replica_count + client;
            cluster.link_cut(client_node, replica, LinkDirection::Both, until_tick);
        }
    }
}

/// Pauses the clients until `clients_resume`: requests and replies are lost meanwhile (the
/// clients retry), so no new prepare starts.
pub(crate) fn clients_pause(cluster: &mut Cluster) {
    clients_cut_off(cluster, u64::MAX);
}

pub(crate) fn clients_resume(cluster: &mut Cluster) {
    let replica_count = cluster.replica_count();
    for client in 0..cluster.options().client_count {
        for replica in 0..replica_count {
            cluster.link_heal(replica_count + client, replica, LinkDirection::Both);
        }
    }
}

/// Pauses the clients, then steps until every replica that runs has executed everything it
/// holds and no client request is in flight at any replica (within `ticks_max`).
pub(crate) fn quiesce(cluster: &mut Cluster, ticks_max: u64) {
    clients_pause(cluster);
    let tick = cluster.tick() + 100;
    run_until(cluster, "quiet", ticks_max, |cluster| {
        let settled = (0..cluster.replica_count()).all(|index| {
            cluster.replica(index).is_none_or(|replica| replica.op() == replica.commit_min())
        });
        settled && cluster.tick() >= tick
    });
}

/// Replica `index`'s configuration.
fn config(cluster: &Cluster, index: usize) -> Config {
    Config { replica: ReplicaIndex(index as u8), ..cluster.options().config }
}

/// Rots the sector that holds the start of op `op`'s prepare in stopped replica `index`'s WAL.
pub(crate) fn wal_prepare_rot(cluster: &mut Cluster, index: usize, op: Op) {
    assert!(cluster.replica(index).is_none(), "replica {index} must be down");
    let config = config(cluster, index);
    let layout = Layout::new(&config);
    let slot = op.get() % u64::from(config.journal_slot_count);
    let offset = layout.zone_offset(Zone::WalPrepares) + slot * layout.message_size_max;
    cluster.storage_mut(index).corrupt_sector(offset);
}

/// Rots the second sector of grid block `address` in replica `index`'s data file: stopped
/// (found at open or by a read) or running (a bit that flips under it, for the scrubber).
pub(crate) fn grid_block_rot(cluster: &mut Cluster, index: usize, address: u64) {
    let layout = Layout::new(&config(cluster, index));
    let offset = layout.offset(Zone::Grid, address * BLOCK_SIZE as u64);
    cluster.storage_mut(index).corrupt_sector(offset + SECTOR_SIZE as u64);
    cluster.grid_damage_note(index, address);
}

/// Rots every header in the sector of stopped replica `index`'s WAL header ring that holds
/// op `op`'s header (one flipped bit in each).
pub(crate) fn wal_header_sector_rot(cluster: &mut Cluster, index: usize, op: Op) {
    assert!(cluster.replica(index).is_none(), "replica {index} must be down");
    let config = config(cluster, index);
    let slot = op.get() % u64::from(config.journal_slot_count);
    let sector = slot as usize * HEADER_SIZE / SECTOR_SIZE;
    let start = Layout::new(&config).zone_offset(Zone::WalHeaders) as usize + sector * SECTOR_SIZE;
    let bytes = &mut cluster.storage_mut(index).bytes_mut()[start..][..SECTOR_SIZE];
    for header in bytes.chunks_mut(HEADER_SIZE) {
        header[17] ^= 0x40;
    }
}

/// Sends replica `index` a request of `CLIENT_OUTSIDE` (a client the workload does not know)
/// that carries commit number `commit`, and steps until it answers or `ticks_max` ticks
/// passed. Returns the answers (whole messages), without failing if there are none.
pub(crate) fn request_outside(
    cluster: &mut Cluster,
    index: usize,
    operation: Operation,
    body: &[u8],
    commit: Op,
    ticks_max: u64,
) -> Vec<Vec<u8>> {
    request_outside_in_view(cluster, index, operation, body, (commit, View(0)), ticks_max)
}

/// As `request_outside`, from a client that last heard of `view`, the second of `seen`.
pub(crate) fn request_outside_in_view(
    cluster: &mut Cluster,
    index: usize,
    operation: Operation,
    body: &[u8],
    (commit, view): (Op, View),
    ticks_max: u64,
) -> Vec<Vec<u8>> {
    let mut header = Header::new(Command::Request, cluster.options().config.cluster);
    header.view = view;
    header.size = (HEADER_SIZE + body.len()) as u32;
    header.client = CLIENT_OUTSIDE;
    header.request = u32::from(operation != Operation::Register);
    header.operation = operation as u8;
    header.commit = commit;
    header.set_checksum_body(body);
    header.set_checksum();
    let mut bytes = zerocopy::IntoBytes::as_bytes(&header).to_vec();
    bytes.extend_from_slice(body);
    cluster.outside_replies_take();
    cluster.message_deliver(index, &bytes);
    let deadline = cluster.tick() + ticks_max;
    let mut replies = cluster.outside_replies_take();
    while replies.is_empty() && cluster.tick() < deadline {
        if let Err(violation) = cluster.step() {
            panic!("request_outside: {violation:?}\n{}", states(cluster));
        }
        replies = cluster.outside_replies_take();
    }
    replies
}
