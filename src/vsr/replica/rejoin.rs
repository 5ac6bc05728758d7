//! Rejoining after the loss of the data file (`kimberlite format --rejoin`, `log_lost` in the
//! superblock).
//!
//! A replica that lost its data file forgot every promise it made: the prepares it
//! acknowledged, the do_view_changes it sent, the views it was in. Its new superblock says view
//! 0. Acting in any view it may have been in before the loss could break agreement: a stale
//! primary of an old view, cut off from the others, could count its acknowledgement again and
//! commit ops that a newer view replaced. So the replica joins strictly above every such view:
//!
//! 1. **Learning.** Before it acts in any view, it asks its peers for theirs: a `ping` whose
//!    `context` is a fresh nonce, answered by a `pong` carrying the responder's view and the
//!    same nonce. It ignores every other message meanwhile. Once `quorum_replication` peers
//!    (at most all of them) answered, their highest view `M` bounds every view it can have been
//!    in: entering a view takes a view-change quorum, which intersects any
//!    `quorum_replication` of the others. (A replica that crashed and came back in an older
//!    view would be a second failure, beyond `f`.)
//! 2. **Joining above it.** It enters the first view above `M` whose primary is another
//!    replica (it cannot lead with an empty log), and persists it. Its start_view_change for
//!    that view says "rejoining" (`context` = 2), which pulls its peers into the view at once:
//!    they need no timeout of their own, so rejoining costs one view change. It still sends no
//!    do_view_change and acknowledges nothing.
//! 3. **Holding the log.** The primary of that view (or any later one) sends the view's log
//!    with start_view; the replica installs it (by state sync if it is past the peers' WAL
//!    window) and only then clears `log_lost` and votes and acknowledges like any other.
//!
//! If it restarts before that, `log_lost` is still set and it learns again, from scratch: the
//! view it persisted is only a lower bound. A partition that moves during the rejoin cannot
//! make it unsafe: every answer is a lower bound on a peer's view at some time after the loss,
//! and views only grow.

use super::{Destination, Replica, Status};
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::views;
use crate::vsr::header::{Command, Header, View};
use crate::vsr::storage::Storage;
use crate::vsr::timeout::TimeoutKind;

/// The `context` of a start_view_change from a rejoining replica.
pub const START_VIEW_CHANGE_REJOINING: u32 = 2;

pub(super) struct RejoinState {
    /// The replica lost its log and has not yet learned the cluster's view.
    pub learning: bool,
    /// The nonce its queries carry (never 0: a ping without a nonce is no query).
    nonce: u128,
    /// Peers that answered this nonce: bit i for replica i.
    answered: u8,
    /// The highest view an answer named.
    view_max: View,
}

impl RejoinState {
    pub fn new() -> RejoinState {
        RejoinState { learning: false, nonce: 0, answered: 0, view_max: View(0) }
    }
}

impl Replica {
    /// Opening found `log_lost`: learn the cluster's view before acting in any.
    pub(super) fn rejoin_start(&mut self) {
        assert!(self.config.replica_count > 1);
        assert!(self.superblock.working().vsr_state.log_lost != 0);
        assert!(self.log_faulty, "a lost log is faulty from the open on");
        assert_eq!(self.status, Status::Normal, "the open is over");
        self.status = Status::ViewChange;
        self.rejoin.learning = true;
        self.rejoin.nonce = u128::from((self.prng_next() as u32).max(1));
        self.rejoin.answered = 0;
        self.rejoin.view_max = self.view;
        assert_ne!(self.rejoin.nonce, 0, "a ping without a nonce is no query");
        self.timeouts[TimeoutKind::RejoinQuery].start();
        self.rejoin_query_send();
    }

    pub(super) fn rejoin_tick(&mut self) {
        assert!(self.rejoin.learning);
        assert_eq!(self.status, Status::ViewChange);
        if self.timeouts[TimeoutKind::RejoinQuery].fired() {
            self.timeouts[TimeoutKind::RejoinQuery].reset();
            self.rejoin_query_send();
        }
    }

    /// Asks every peer it has no answer from yet for its view.
    fn rejoin_query_send(&mut self) {
        assert!(self.rejoin.learning);
        assert_ne!(self.rejoin.nonce, 0);
        let mut header = Header::new(Command::Ping, self.config.cluster);
        // It claims no view: a peer must not take this ping as news of a newer one.
        header.view = View(0);
        header.replica = self.config.replica;
        views::Ping::of(&mut header).set_nonce(self.rejoin.nonce);
        for replica in 0..self.config.replica_count {
            let answered = self.rejoin.answered & (1 << replica) != 0;
            if replica != self.config.replica.get() && !answered {
                self.send_header(Destination::Replica(ReplicaIndex(replica)), header);
            }
        }
    }

    /// A peer's ping that carries a nonce asks for this replica's view (see the module docs).
    /// Returns whether it was one; a replica still learning answers none.
    pub(super) fn on_view_query(&mut self, header: &Header) -> bool {
        assert_eq!(header.command(), Some(Command::Ping));
        assert_ne!(header.replica, self.config.replica);
        let nonce = views::Ping::of(header).nonce();
        if nonce == 0 {
            return false;
        }
        // The peer lost its data file: its new one may have another grid, unknown until its
        // next prepare_ok (`grid_blocks_stamp`).
        self.grid_blocks_announced[usize::from(header.replica)] = 0;
        if !self.rejoin.learning {
            let mut pong = self.header_new(Command::Pong);
            views::Pong::of(&mut pong).set_nonce(nonce);
            pong.commit = self.commit_min;
            pong.checkpoint_op = self.checkpoint_op;
            self.send_header(Destination::Replica(header.replica), pong);
        }
        true
    }

    /// A pong: an answer to this replica's view query, if it carries the current nonce.
    pub(super) fn on_pong<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        assert_eq!(header.command(), Some(Command::Pong));
        assert_ne!(header.replica, self.config.replica);
        if !self.rejoin.learning || views::Pong::of(header).nonce() != self.rejoin.nonce {
            return;
        }
        self.rejoin.answered |= header.replica.bit();
        self.rejoin.view_max = self.rejoin.view_max.max(header.view);
        let peers = usize::from(self.config.replica_count) - 1;
        let needed = self.quorum_replication().min(peers);
        if (self.rejoin.answered.count_ones() as usize) < needed {
            return;
        }
        // The view does not move while it learns: it acts in none.
        assert!(self.rejoin.view_max >= self.view);
        self.rejoin.learning = false;
        self.metrics.rejoin_views_learned += 1;
        let mut view = self.rejoin.view_max.max(self.view).next();
        while self.primary_index_of(view) == self.config.replica {
            view = view.next();
        }
        self.view_change_start(storage, view);
    }
}
