//! The replica's timers: one `Timeout` type, kept in one table indexed by `TimeoutKind`, so
//! that every timer starts, stops, resets and backs off the same way and a reader finds them
//! all in one place. Time is counted in ticks (`TICK_MS`); the table is advanced once per tick,
//! before anything reads it. Randomness (jitter, so that replicas do not act in phase) comes
//! from the replica's one PRNG, seeded by its driver.

use crate::constants::{
    COMMIT_HEARTBEAT_TICKS, GRID_REPAIR_REQUEST_TICKS, GRID_SCRUB_BLOCK_TICKS,
    NORMAL_HEARTBEAT_TIMEOUT_TICKS, PING_TICKS, PREPARE_TIMEOUT_TICKS, PRIMARY_ABDICATE_TICKS,
    REJOIN_QUERY_TICKS, REPAIR_TIMEOUT_TICKS, SYNC_REQUEST_TICKS, TIMEOUT_BACKOFF_ATTEMPTS_MAX,
    VIEW_CHANGE_MESSAGE_TICKS, VIEW_CHANGE_TIMEOUT_TICKS, VOTE_WINDOW_TICKS,
};
use crate::stdx::prng::Prng;

/// A countdown of `after` ticks. Stopped, it never fires; started, it fires once `after` ticks
/// (lengthened by jitter and backoff) have passed, and keeps firing until it is reset, backed
/// off or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// The base duration.
    after: u64,
    /// The duration of the current countdown: `after`, or more after `jitter` or `backoff`.
    after_current: u64,
    /// Ticks since the countdown (re)started.
    ticks: u64,
    ticking: bool,
    /// Backoffs since the last start or reset.
    attempts: u32,
}

impl Timeout {
    pub const fn new(after: u64) -> Timeout {
        assert!(after > 0);
        Timeout { after, after_current: after, ticks: 0, ticking: false, attempts: 0 }
    }

    pub fn ticking(&self) -> bool {
        self.ticking
    }

    /// Starts (or restarts) the countdown from zero, at the base duration.
    pub fn start(&mut self) {
        self.ticking = true;
        self.reset();
    }

    pub fn stop(&mut self) {
        self.ticking = false;
        self.ticks = 0;
        self.attempts = 0;
        self.after_current = self.after;
    }

    /// Restarts the countdown at the base duration (a running timer only).
    pub fn reset(&mut self) {
        assert!(self.ticking);
        self.ticks = 0;
        self.attempts = 0;
        self.after_current = self.after;
    }

    /// Restarts the countdown at the base duration plus a random jitter below `jitter_max`.
    pub fn reset_with_jitter(&mut self, prng: &mut Prng, jitter_max: u64) {
        self.reset();
        self.after_current = self.after + prng.next_u64() % jitter_max.max(1);
    }

    /// Restarts the countdown at twice the last duration (up to `2^TIMEOUT_BACKOFF_ATTEMPTS_MAX`
    /// times the base), plus a random jitter below the base: retries of something that keeps
    /// failing thin out, and those of different replicas drift apart.
    pub fn backoff(&mut self, prng: &mut Prng) {
        assert!(self.ticking);
        self.attempts = (self.attempts + 1).min(TIMEOUT_BACKOFF_ATTEMPTS_MAX);
        self.ticks = 0;
        self.after_current = (self.after << self.attempts) + prng.next_u64() % self.after;
    }

    /// For something done at most once per countdown (a request sent again): true, and the
    /// countdown restarted, if it is stopped (nothing asked yet, or `stop` made it due at once)
    /// or fired; false while it runs.
    pub fn due_restart(&mut self) -> bool {
        if self.counting_down() {
            return false;
        }
        self.start();
        true
    }

    pub fn tick(&mut self) {
        if self.ticking {
            self.ticks = self.ticks.saturating_add(1);
        }
    }

    /// Running and not yet fired: whatever it paces is not due.
    pub fn counting_down(&self) -> bool {
        self.ticking && self.ticks < self.after_current
    }

    pub fn fired(&self) -> bool {
        self.ticking && self.ticks >= self.after_current
    }

    /// Ticks since the countdown (re)started.
    pub fn elapsed(&self) -> u64 {
        self.ticks
    }
}

macro_rules! timeout_kinds {
    ($($(#[$doc:meta])* $kind:ident => $after:expr,)*) => {
        /// Every timer of the replica.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum TimeoutKind {
            $($(#[$doc])* $kind,)*
        }

        impl TimeoutKind {
            pub const ALL: &[TimeoutKind] = &[$(TimeoutKind::$kind,)*];
            pub const COUNT: usize = TimeoutKind::ALL.len();

            /// The base duration, in ticks.
            pub const fn after(self) -> u64 {
                match self {
                    $(TimeoutKind::$kind => $after,)*
                }
            }
        }
    };
}

timeout_kinds! {
    /// Backup: a ping to every replica, so the primary counts it live when idle.
    Ping => PING_TICKS,
    /// Primary: prepares that lack a quorum are sent again.
    Prepare => PREPARE_TIMEOUT_TICKS,
    /// Primary: a commit heartbeat even when the commit number did not move.
    CommitHeartbeat => COMMIT_HEARTBEAT_TICKS,
    /// Primary: its uncommitted prepares have not moved; it may abdicate.
    PrimaryAbdicate => PRIMARY_ABDICATE_TICKS,
    /// Backup: nothing heard from the primary; it votes to leave the view.
    NormalHeartbeat => NORMAL_HEARTBEAT_TIMEOUT_TICKS,
    /// View change: it took too long; the replica votes for the next view.
    ViewChangeStatus => VIEW_CHANGE_TIMEOUT_TICKS,
    /// View change messages (votes, do_view_change, request_start_view) are sent again.
    ViewChangeMessage => VIEW_CHANGE_MESSAGE_TICKS,
    /// Votes to leave a view count together only within this window of the first.
    VoteWindow => VOTE_WINDOW_TICKS,
    /// Repair of missing or faulty prepares asks again.
    Repair => REPAIR_TIMEOUT_TICKS,
    /// Repair of a log target's headers asks again.
    RepairTarget => REPAIR_TIMEOUT_TICKS,
    /// State sync asks again for the checkpoint or the chunks still missing.
    Sync => SYNC_REQUEST_TICKS,
    /// Grid repair asks again for the chunks still missing.
    GridRepair => GRID_REPAIR_REQUEST_TICKS,
    /// The scrubber reads its next grid block.
    GridScrub => GRID_SCRUB_BLOCK_TICKS,
    /// A rejoining replica asks its peers for the cluster's view again.
    RejoinQuery => REJOIN_QUERY_TICKS,
}

/// The table of the replica's timers.
#[derive(Clone, Debug)]
pub struct Timeouts {
    table: [Timeout; TimeoutKind::COUNT],
}

impl Timeouts {
    /// Every timer, stopped.
    pub fn new() -> Timeouts {
        Timeouts {
            table: std::array::from_fn(|index| Timeout::new(TimeoutKind::ALL[index].after())),
        }
    }

    /// Advances every running timer by one tick.
    pub fn tick(&mut self) {
        for timeout in &mut self.table {
            timeout.tick();
        }
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::new()
    }
}

impl std::ops::Index<TimeoutKind> for Timeouts {
    type Output = Timeout;

    fn index(&self, kind: TimeoutKind) -> &Timeout {
        &self.table[kind as usize]
    }
}

impl std::ops::IndexMut<TimeoutKind> for Timeouts {
    fn index_mut(&mut self, kind: TimeoutKind) -> &mut Timeout {
        &mut self.table[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_fires_after_its_ticks_and_only_while_running() {
        // Goal: stopped never fires; started fires after exactly `after` ticks and keeps firing
        // until reset; reset and stop restart the count; `due_restart` is true when stopped or
        // fired, and restarts the countdown.
        let mut timeout = Timeout::new(3);
        for _ in 0..10 {
            timeout.tick();
        }
        assert!(!timeout.fired());
        timeout.start();
        for tick in 1..=5 {
            timeout.tick();
            assert_eq!(timeout.fired(), tick >= 3, "{tick}");
        }
        timeout.reset();
        assert!(!timeout.fired());
        assert!(!timeout.due_restart());
        timeout.stop();
        assert!(!timeout.fired() && !timeout.ticking());
        assert!(timeout.due_restart());
        assert!(timeout.ticking() && !timeout.due_restart());
        for _ in 0..3 {
            timeout.tick();
        }
        assert!(timeout.due_restart());
        assert_eq!(timeout.elapsed(), 0);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_below_the_base() {
        // Goal: each backoff doubles the duration (capped), adds a jitter below the base, and
        // a reset returns to the base; jittered resets stay within their bound.
        let mut prng = Prng::new(5);
        let mut timeout = Timeout::new(10);
        timeout.start();
        for attempt in 1..=8u32 {
            timeout.backoff(&mut prng);
            let doubled = 10u64 << attempt.min(TIMEOUT_BACKOFF_ATTEMPTS_MAX);
            let mut ticks = 0;
            while !timeout.fired() {
                timeout.tick();
                ticks += 1;
            }
            assert!((doubled..doubled + 10).contains(&ticks), "{attempt}: {ticks}");
        }
        timeout.reset_with_jitter(&mut prng, 4);
        let mut ticks = 0;
        while !timeout.fired() {
            timeout.tick();
            ticks += 1;
        }
        assert!((10..14).contains(&ticks), "{ticks}");
    }

    #[test]
    fn the_table_holds_one_timer_per_kind_at_its_base_duration() {
        // Goal: indexing by kind reaches that kind's timer, and a tick advances running ones.
        let mut timeouts = Timeouts::new();
        for kind in TimeoutKind::ALL {
            assert!(!timeouts[*kind].ticking());
            assert_eq!(timeouts[*kind], Timeout::new(kind.after()));
        }
        timeouts[TimeoutKind::Ping].start();
        for _ in 0..PING_TICKS {
            timeouts.tick();
        }
        assert!(timeouts[TimeoutKind::Ping].fired());
        assert!(!timeouts[TimeoutKind::Prepare].fired());
    }
}
