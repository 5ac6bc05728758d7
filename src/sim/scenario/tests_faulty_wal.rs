//! Scenario tests of a WAL with faulty entries meeting view changes, restarts and stale
//! messages (scenarios a review of the faulty-WAL vote found): R0, primary of view 0,
//! prepares ops that only R1 receives, or a backup comes back with a rotten WAL sector.

use super::tests::{cluster_quiet_after, cluster_quiet_after_load, options_checkpointing};
use super::*;
use crate::vsr::header::View;
use crate::vsr::replica::Status;

/// R0, primary of view 0, prepares ops past `head` that only R1 receives (R0's disk is
/// stalled, its link to R2 cut, R1's prepare_oks to it lost), and crashes before its own
/// writes land; the clients pause. Returns R1's head, once R0's prepares in flight landed,
/// with R0 still down and every link healed.
fn prepare_only_r1_holds(cluster: &mut Cluster, head: Op) -> Op {
    cluster.storage_mut(0).stall_until(u64::MAX);
    link_cut(cluster, 0, 2);
    link_cut(cluster, 1, 0);
    clients_resume(cluster);
    run_until(cluster, "R1 prepares past head", 300, |cluster| replica(cluster, 1).op() > head);
    clients_pause(cluster);
    stop(cluster, 0);
    cluster.storage_mut(0).stall_end();
    heal(cluster);
    run_to_tick(cluster, cluster.tick() + 20);
    let r1_head = replica(cluster, 1).op();
    assert!(r1_head > head && replica(cluster, 2).op() == head, "{}", states(cluster));
    r1_head
}

/// Whether a replica of `indexes` is the primary of a view after view 0, in normal status.
fn new_view_started(cluster: &Cluster, indexes: &[usize]) -> bool {
    indexes.iter().any(|index| {
        cluster.replica(*index).is_some_and(|replica| {
            replica.view() > View(0) && replica.status() == Status::Normal && replica.is_primary()
        })
    })
}

#[test]
fn a_restarted_primary_never_prepares_again_an_op_a_backup_acknowledged() {
    // Goal: R0, primary of view 0, prepares ops past `head`; R1 acknowledges them, and R0
    // crashes before its own writes land. Back with `head`, R0 must not lead view 0 again:
    // it would prepare other ops at those numbers and commit them with R2, while R1's
    // acknowledged ones may win the next view change. It goes through a view change instead.
    let (mut cluster, head) = cluster_quiet_after_load(191);
    let r1_head = prepare_only_r1_holds(&mut cluster, head);
    restart(&mut cluster, 0);
    run_until_open(&mut cluster, 0, 300);
    let restarted = replica(&cluster, 0);
    assert_eq!((restarted.view(), restarted.op()), (View(0), head), "{}", states(&cluster));
    assert_ne!(restarted.status(), Status::Normal, "R0 leads view 0 again");
    clients_resume(&mut cluster);
    run_until(&mut cluster, "a new view", 2_000, |cluster| new_view_started(cluster, &[0, 1, 2]));
    cluster.run().unwrap();
    // Every replica agrees on the ops after `head`, whichever they are (R1's, never
    // committed, may be cut).
    for op in (head + 1).through(r1_head) {
        let held = replica(&cluster, 0).prepare_header(op);
        assert!(held.is_some(), "op {op}");
        for index in 1..3 {
            assert_eq!(replica(&cluster, index).prepare_header(op), held, "op {op}");
        }
    }
}

/// After `prepare_only_r1_holds`, R1 crashes too and comes back (cut off from its peers until
/// it is open) with the prepare at `head` rotten, R0 restarted meanwhile.
fn r1_back_with_head_rotten(cluster: &mut Cluster, head: Op) {
    restart(cluster, 0);
    stop(cluster, 1);
    wal_prepare_rot(cluster, 1, head);
    partition(cluster, 1, LinkDirection::Both);
    restart(cluster, 1);
    run_until_open(cluster, 1, 300);
    assert!(replica(cluster, 1).log_faulty(), "{}", states(cluster));
}

#[test]
fn faulty_backup_that_acknowledged_an_uncommitted_op_does_not_stall_the_view_change() {
    // Goal: R1 acknowledged ops past `head` which only it holds (R0 crashed before its own
    // writes landed, R2 never got them), and comes back with `head`'s prepare rotten, so it
    // may have acknowledged up to its old head. R0 and R2 both lack those ops: a nack quorum,
    // so they never committed, and the view change must start from their log rather than
    // wait forever.
    let (mut cluster, head) = cluster_quiet_after_load(192);
    prepare_only_r1_holds(&mut cluster, head);
    r1_back_with_head_rotten(&mut cluster, head);
    assert!(replica(&cluster, 1).op_acknowledged_max() > head, "{}", states(&cluster));
    heal(&mut cluster);
    run_until(&mut cluster, "a new view", 3_000, |cluster| new_view_started(cluster, &[0, 1, 2]));
    clients_resume(&mut cluster);
    cluster.run().unwrap();
}

#[test]
fn after_state_sync_a_stale_entry_below_the_checkpoint_is_not_the_replicas_log() {
    // Goal: R1 holds ops past `head`, which only it received (R0 crashed before its own
    // writes landed), and comes back with `head`'s prepare rotten, so it keeps them above
    // the fault. While R1 is away, R0 and R2 start a new view without it, commit far past
    // R1's WAL window, and R1 catches up by state sync to a checkpoint above them. The
    // prepare still in R1's WAL at `head + 1` is another log's: R1 must not report or serve
    // it as its log's (VOPR seed 11001452347455478131 saw it as an agreement violation).
    let (mut cluster, head) = cluster_quiet_after(options_checkpointing(193, 3, 20_000));
    prepare_only_r1_holds(&mut cluster, head);
    r1_back_with_head_rotten(&mut cluster, head);
    let stale = replica(&cluster, 1).prepare_header(head + 1).expect("kept");
    stop(&mut cluster, 1);
    heal(&mut cluster);
    run_until(&mut cluster, "R0 and R2 start a view", 3_000, |cluster| {
        new_view_started(cluster, &[0, 2])
    });
    clients_resume(&mut cluster);
    let slot_count = u64::from(cluster.options().config.journal_slot_count);
    let far = head + 3 * slot_count;
    run_until(&mut cluster, "commits far past R1's window", 15_000, |cluster| {
        replica(cluster, 0).commit_min() > far
    });
    restart(&mut cluster, 1);
    run_until(&mut cluster, "R1 syncs", 3_000, |cluster| {
        replica(cluster, 1).metrics().state_syncs > 0
    });
    let r1 = replica(&cluster, 1);
    assert!(r1.checkpoint_op() > head + 1, "{}", states(&cluster));
    assert_ne!(r1.prepare_header(head + 1), Some(stale), "{}", states(&cluster));
    cluster.run().unwrap();
    assert_ne!(replica(&cluster, 1).prepare_header(head + 1), Some(stale));
}

#[test]
fn a_faulty_backup_in_a_quiet_cluster_repairs_its_log_below_a_loose_bound() {
    // Goal: R1 comes back with the header sector of its head rotten: the sector hides up
    // to 31 more ops it may have acknowledged, so its bound lies above the cluster's head,
    // which no client pushes further (they are paused). It must still repair its log from
    // the start_view that answers its own request_start_view (VOPR seeds
    // 15394890388178592913 and 14952920115053208388 stalled here); that log holds all it
    // acknowledged, so the bound goes.
    let (mut cluster, head) = cluster_quiet_after_load(195);
    stop(&mut cluster, 1);
    wal_header_sector_rot(&mut cluster, 1, head);
    restart(&mut cluster, 1);
    run_until_open(&mut cluster, 1, 300);
    let r1 = replica(&cluster, 1);
    let bound = r1.op_acknowledged_max();
    assert!(r1.log_faulty() && bound > head, "{bound} {head}\n{}", states(&cluster));
    run_until(&mut cluster, "R1 repairs its log and executes it", 1_000, |cluster| {
        let r1 = replica(cluster, 1);
        !r1.log_faulty() && r1.commit_min() == head
    });
    let r1 = replica(&cluster, 1);
    assert_eq!((r1.op(), r1.commit_min()), (head, head), "{}", states(&cluster));
    assert_eq!(r1.op_acknowledged_max(), head);
    assert_eq!(r1.metrics().start_views_below_acknowledged, 1);
    let primary = replica(&cluster, 0);
    for op in (primary.checkpoint_op().max(r1.checkpoint_op()) + 1).through(head) {
        assert_eq!(r1.prepare_header(op), primary.prepare_header(op), "op {op}");
    }
    clients_resume(&mut cluster);
    cluster.run().unwrap();
}

#[test]
fn an_old_start_view_never_makes_a_faulty_backup_sound_below_what_it_acknowledged() {
    // Goal: a start_view of view 0 with head `head`, delayed in the network, reaches R1 after
    // R1 acknowledged ops past it (committed with R0; R2 was down) and came back with the
    // prepare below its head rotten. Taken, its truncation would erase those ops, and with
    // them the evidence of R1's bound at its next open, and the next view (R0 dead) would
    // lose the committed ops. R1 must ignore it, across a restart too.
    let (mut cluster, head) = cluster_quiet_after_load(195);
    let old_start_view = cluster.replica_mut(0).start_view_take(ReplicaIndex(1)).bytes().to_vec();
    stop(&mut cluster, 2);
    prepare_past_committed(&mut cluster, head + 2);
    let top = replica(&cluster, 0).commit_min();
    let committed = replica(&cluster, 0).prepare_header(top).expect("held");
    stop(&mut cluster, 0);
    stop(&mut cluster, 1);
    wal_prepare_rot(&mut cluster, 1, top - 1);
    let r1_faulty = |cluster: &Cluster| {
        let r1 = replica(cluster, 1);
        assert!(r1.log_faulty() && r1.op_acknowledged_max() >= top, "{}", states(cluster));
    };
    restart(&mut cluster, 1);
    run_until_open(&mut cluster, 1, 300);
    r1_faulty(&cluster);
    cluster.message_deliver(1, &old_start_view);
    let tick = cluster.tick() + 50;
    run_to_tick(&mut cluster, tick);
    r1_faulty(&cluster);
    assert_eq!(replica(&cluster, 1).metrics().start_views_below_acknowledged, 0);
    crash_restart(&mut cluster, 1, 1);
    run_until_open(&mut cluster, 1, 300);
    r1_faulty(&cluster);
    // Only R1 (rotten below its head) and R0 (down) hold the ops past `head`: no view may
    // start without them.
    restart(&mut cluster, 2);
    let deadline = cluster.tick() + 1_500;
    run_until(&mut cluster, "R1 and R2 wait for R0", 1_600, |cluster| {
        for index in [1, 2] {
            let replica = replica(cluster, index);
            if replica.view() > View(0) && replica.status() == Status::Normal {
                assert_eq!(replica.prepare_header(top), Some(committed), "R{index}");
            }
        }
        cluster.tick() >= deadline
    });
    let waits = |index| replica(&cluster, index).metrics().view_change_waits_for_faulty;
    assert!(waits(1) + waits(2) > 0, "a new primary must have waited for a sound log");
    restart(&mut cluster, 0);
    clients_resume(&mut cluster);
    cluster.run().unwrap();
    for index in 0..3 {
        let held = replica(&cluster, index).prepare_header(top);
        assert_eq!(held, Some(committed), "R{index} lost the committed op {top}");
    }
}

/// Lets the clients send until R0 committed past `op`, then pauses them and steps until R0
/// and R1 executed all they prepared.
fn prepare_past_committed(cluster: &mut Cluster, op: Op) {
    clients_resume(cluster);
    run_until(cluster, &format!("R0 commits past {op}"), 300, |cluster| {
        replica(cluster, 0).commit_min() > op
    });
    clients_pause(cluster);
    run_until(cluster, "R0 and R1 settle", 200, |cluster| {
        [0, 1].iter().all(|index| {
            let replica = replica(cluster, *index);
            replica.op() == replica.commit_min() && replica.op() == replica_op(cluster, 0)
        })
    });
}

fn replica_op(cluster: &Cluster, index: usize) -> Op {
    replica(cluster, index).op()
}
