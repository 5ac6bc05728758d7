//! Scenario tests: each steers a quiet cluster down one protocol path that only the VOPR's
//! random faults reached before, asserts that the path ran (a replica's metric), and then
//! lets the cluster converge under the checker (`cluster.run()`).

use super::*;
use crate::sim::cluster::LinkDirection;
use crate::vsr::header::View;
use crate::vsr::replica::SuperblockUpdate;

/// A 3-replica cluster under load at tick 300, then R1, a backup, crashes and comes back
/// with the prepare of an op it acknowledged (above its checkpoint) rotten; `ahead_ticks`
/// later the primary R0 crashes too, until tick 2,000. Returns the cluster and the highest
/// op acknowledged to a client before the crashes.
fn rotten_backup_then_primary_crash(seed: u64, ahead_ticks: u64) -> (Cluster, Op) {
    println!("seed={seed}");
    let mut options = options_quiet(seed, 3);
    options.ticks_faults = 2_500;
    options.ticks_convergence_max = 3_000;
    let mut cluster = Cluster::new(options);
    while cluster.tick() < 300 {
        cluster.step().unwrap();
    }
    let acknowledged = cluster.checker().acknowledged_op_max();
    let backup = cluster.replica(1).expect("running");
    let op = backup.commit_min() - 2;
    assert!(op > backup.checkpoint_op(), "the rotten op must be above the checkpoint");
    assert!(backup.prepare_header(op).is_some());
    cluster.crash(1, false, cluster.tick() + ahead_ticks + 20);
    wal_prepare_rot(&mut cluster, 1, op);
    let crash_tick = cluster.tick() + ahead_ticks;
    run_until(&mut cluster, "R0's crash", ahead_ticks + 1, |cluster| cluster.tick() >= crash_tick);
    cluster.crash(0, false, 2_000);
    (cluster, acknowledged)
}

#[test]
fn backup_with_a_rotten_wal_sector_votes_while_another_replica_is_down() {
    // Goal: one rotten WAL sector does not count against f like a crash. R1 restarts with
    // the prepare of an op it acknowledged rotten (its hash chain stops below it), while
    // R0, the primary, is down: R1 and R2 still elect a new primary (R1's nacks count only
    // above what it may have acknowledged, which R2's log covers: R0 and R2 went on for a
    // while after R1 crashed), and the clients carry on before R0 is back.
    for seed in [71, 72, 73] {
        let (mut cluster, acknowledged) = rotten_backup_then_primary_crash(seed, 40);
        run_until(&mut cluster, "R1 and R2 commit in a new view", 1_200, |cluster| {
            cluster.checker().acknowledged_op_max() > acknowledged + 10
        });
        assert!(cluster.tick() < 2_000, "before R0 is back");
        let metrics = cluster.replica(1).expect("running").metrics();
        assert_eq!(metrics.logs_faulty_recovered, 1);
        assert!(metrics.view_change_votes_with_faulty_slots > 0);
        cluster.run().unwrap();
    }
}

#[test]
fn view_change_during_state_sync_superblock_update_is_persisted_after_it() {
    // Goal: a start_view that arrives while state sync writes its superblock (here held
    // back by a slow-disk spell) is persisted once that update completes, so the syncing
    // replica goes on repairing and the cluster converges; 5 replicas, one far behind.
    let seed = 71;
    println!("seed={seed}");
    let mut options = options_quiet(seed, 5);
    options.config.journal_slot_count = 128;
    options.client_count = 4;
    options.think_ticks_max = 1;
    options.ticks_faults = 8_000;
    options.ticks_convergence_max = 4_000;
    let mut cluster = Cluster::new(options);
    while cluster.tick() < 100 {
        cluster.step().unwrap();
    }
    cluster.crash(2, false, u64::MAX / 2);
    let behind = cluster.checker().history_op_max() + 300;
    run_until(&mut cluster, "ops committed", 6_000, |cluster| {
        cluster.checker().history_op_max() > behind
    });
    cluster.replica_start(2);
    run_until(&mut cluster, "state sync superblock update", 2_000, |cluster| {
        let replica = cluster.replica(2).expect("running");
        replica.superblock_updating() == Some(SuperblockUpdate::StateSync)
    });
    let tick = cluster.tick();
    cluster.storage_mut(2).stall_until(tick + 600);
    for other in 1..5 {
        cluster.link_cut(0, other, LinkDirection::Both, tick + 400);
    }
    run_until(&mut cluster, "a newer view on replica 2", 600, |cluster| {
        cluster.replica(2).expect("running").view() > View(0)
    });
    let replica = cluster.replica(2).expect("running");
    assert_eq!(replica.superblock_updating(), Some(SuperblockUpdate::StateSync));
    assert!(replica.metrics().view_change_during_state_sync > 0);
    cluster.run().unwrap();
    let replica = cluster.replica(2).expect("running");
    assert_eq!(replica.view_durable(), replica.view());
    assert!(replica.metrics().state_syncs > 0);
}

#[test]
fn view_change_while_state_sync_fetches_blocks_is_taken_and_the_sync_finishes() {
    // Goal: a view change that lands while state sync is still fetching the checkpoint's
    // grid blocks (before its superblock update; the disk of the syncing replica is held back
    // by a slow-disk spell) is entered, and the sync then finishes in the new view: R2 of 5
    // comes back far behind, and the primary R0 is cut off while it syncs.
    let mut options = options_quiet(71, 5);
    options.config.journal_slot_count = 128;
    options.client_count = 4;
    options.think_ticks_max = 1;
    options.ticks_faults = 8_000;
    options.ticks_convergence_max = 4_000;
    let mut cluster = cluster_new(options);
    run_to_tick(&mut cluster, 100);
    stop(&mut cluster, 2);
    let behind = cluster.checker().history_op_max() + 300;
    run_until(&mut cluster, "ops committed", 6_000, |cluster| {
        cluster.checker().history_op_max() > behind
    });
    restart(&mut cluster, 2);
    run_until(&mut cluster, "state sync fetching blocks", 2_000, |cluster| {
        let replica = cluster.replica(2).expect("running");
        replica.state_syncing() && replica.superblock_updating().is_none()
    });
    let tick = cluster.tick();
    cluster.storage_mut(2).stall_until(tick + 600);
    partition(&mut cluster, 0, LinkDirection::Both);
    run_until(&mut cluster, "a newer view on R2", 600, |cluster| {
        cluster.replica(2).expect("running").view() > View(0)
    });
    let replica = super::replica(&cluster, 2);
    assert!(replica.state_syncing(), "{}", states(&cluster));
    assert!(replica.metrics().view_change_during_state_sync > 0);
    cluster.run().unwrap();
    let replica = super::replica(&cluster, 2);
    assert!(replica.metrics().state_syncs > 0);
    assert_eq!(replica.view_durable(), replica.view());
}

#[test]
fn primary_that_hears_no_prepare_ok_abdicates_and_the_backups_elect_another() {
    // Goal: abdication. The primary R0 still reaches its backups (its heartbeats keep them
    // in its view) but hears nothing from them, so no prepare commits: it falls silent, the
    // backups time out and elect R1, and the clients carry on while R0 is still cut off.
    // Without abdication the backups would follow R0's heartbeats forever.
    for seed in [101, 102] {
        let mut options = options_quiet(seed, 3);
        options.ticks_faults = 3_000;
        let mut cluster = cluster_new(options);
        run_to_tick(&mut cluster, 300);
        let acknowledged = cluster.checker().acknowledged_op_max();
        link_cut(&mut cluster, 1, 0);
        link_cut(&mut cluster, 2, 0);
        run_until(&mut cluster, "R0 abdicates", 1_000, |cluster| {
            super::replica(cluster, 0).metrics().abdications > 0
        });
        run_until(&mut cluster, "clients carry on in a newer view", 2_000, |cluster| {
            cluster.view_newest() > View(0)
                && cluster.checker().acknowledged_op_max() > acknowledged + 10
        });
        assert_eq!(super::replica(&cluster, 0).view(), View(0), "R0 heard nothing");
        heal(&mut cluster);
        cluster.run().unwrap();
    }
}

#[test]
fn backup_kept_down_past_several_checkpoints_catches_up_by_state_sync() {
    // Goal: state sync. R2 is down while R0 and R1 commit past several checkpoints (a WAL
    // of 128 slots, a checkpoint every 112 ops), so the ops it lacks are overwritten in
    // their WALs: it installs a peer's checkpoint, repairs the tail after it, and the
    // cluster converges with every acknowledged write.
    let mut options = options_quiet(111, 3);
    options.config.journal_slot_count = 128;
    options.client_count = 4;
    options.think_ticks_max = 1;
    options.ticks_faults = 6_000;
    options.ticks_convergence_max = 4_000;
    let mut cluster = cluster_new(options);
    run_to_tick(&mut cluster, 100);
    stop(&mut cluster, 2);
    let behind = cluster.checker().history_op_max() + 3 * 128;
    run_until(&mut cluster, "ops committed", 8_000, |cluster| {
        cluster.checker().history_op_max() > behind
    });
    restart(&mut cluster, 2);
    run_until(&mut cluster, "R2 synced", 3_000, |cluster| {
        cluster.replica(2).is_some_and(|replica| replica.metrics().state_syncs > 0)
    });
    cluster.run().unwrap();
    let (synced, peer) = (super::replica(&cluster, 2), super::replica(&cluster, 0));
    assert_eq!(synced.commit_min(), peer.commit_min());
    assert_eq!(synced.metrics().state_syncs, 1);
}

#[test]
fn backup_with_a_rotten_grid_block_repairs_it_from_a_peer() {
    // Goal: a grid block of a checkpoint that rots while its replica is down is found (at
    // open, by a read or by the scrubber) and fetched again from a peer: the cluster converges
    // with every replica that checkpointed the same op holding the same grid bytes.
    let mut options = options_quiet(141, 3);
    options.config.journal_slot_count = 128;
    options.ticks_faults = 3_000;
    options.ticks_convergence_max = 6_000;
    let mut cluster = cluster_new(options);
    run_until(&mut cluster, "R1 checkpoints grid blocks", 3_000, |cluster| {
        super::replica(cluster, 1).checkpoint_state().grid_head >= 2
    });
    let grid_head = super::replica(&cluster, 1).checkpoint_state().grid_head;
    stop(&mut cluster, 1);
    grid_block_rot(&mut cluster, 1, grid_head - 1);
    restart(&mut cluster, 1);
    run_until(&mut cluster, "R1 repairs the block", 5_000, |cluster| {
        cluster.replica(1).is_some_and(|replica| {
            let metrics = replica.metrics();
            metrics.grid_blocks_repaired_open
                + metrics.grid_blocks_repaired_read
                + metrics.grid_blocks_repaired_scrub
                > 0
        })
    });
    cluster.run().unwrap();
}
