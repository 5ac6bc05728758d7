//! The run's fingerprint: a hash folded over every event of a simulation in order (messages
//! sent, dropped and delivered, disk completions, ticks, crashes, commits). Two runs of one
//! seed must end with the same hash; a different hash means something outside the seed (a
//! `HashMap`'s order, a clock, an address) leaked into the run.

/// FNV-1a over the little-endian bytes of each event's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    hash: u64,
    event_count: u64,
}

/// What happened, the first field of every traced event.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Tick = 1,
    Send = 2,
    Drop = 3,
    Deliver = 4,
    Completion = 5,
    Crash = 6,
    Restart = 7,
    Partition = 8,
    Commit = 9,
    Request = 10,
    Reply = 11,
    Eviction = 12,
    Corrupt = 13,
    Mutate = 14,
    Rejoin = 15,
    SlowDisk = 16,
    Pause = 17,
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        Trace { hash: FNV_OFFSET, event_count: 0 }
    }

    pub fn record(&mut self, event: Event, fields: &[u64]) {
        self.fold(event as u64);
        for field in fields {
            self.fold(*field);
        }
        self.event_count += 1;
    }

    fn fold(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn event_count(&self) -> u64 {
        self.event_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_content_change_the_hash() {
        // Goal: the hash depends on every field and on the order of events.
        let mut first = Trace::new();
        first.record(Event::Send, &[1, 2]);
        first.record(Event::Drop, &[3]);
        let mut same = Trace::new();
        same.record(Event::Send, &[1, 2]);
        same.record(Event::Drop, &[3]);
        let mut swapped = Trace::new();
        swapped.record(Event::Drop, &[3]);
        swapped.record(Event::Send, &[1, 2]);
        let mut changed = Trace::new();
        changed.record(Event::Send, &[1, 4]);
        changed.record(Event::Drop, &[3]);
        assert_eq!(first, same);
        assert_ne!(first.hash(), swapped.hash());
        assert_ne!(first.hash(), changed.hash());
        assert_eq!(first.event_count(), 2);
    }
}
