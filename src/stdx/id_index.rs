//! A hash index from a 64-bit id (a client's) to a position in a fixed table that the caller
//! owns (the session table, the bus's connections), so that a lookup costs no scan of it.
//!
//! Open addressing with linear probing in a power-of-two array of twice as many entries as
//! positions, allocated once. An entry holds position + 1 (0: empty); the ids themselves stay
//! in the caller's table, which every call reads through `id_of`. Removal shifts later entries
//! back, so that no probe stops early at a hole (no tombstones to accumulate).

pub struct IdIndex {
    entries: Vec<u32>,
}

impl IdIndex {
    /// An empty index for `positions` positions (0..positions).
    pub fn new(positions: usize) -> IdIndex {
        assert!(positions > 0 && positions < (u32::MAX / 4) as usize);
        IdIndex { entries: vec![0; (2 * positions).next_power_of_two()] }
    }

    pub fn clear(&mut self) {
        self.entries.fill(0);
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    fn home(&self, id: u64) -> usize {
        // Fibonacci hashing: the high bits of the product spread any pattern of ids.
        let hash = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        hash as usize & self.mask()
    }

    /// Where `id` is in `entries` (true), or the empty entry its probe ends at (false).
    fn probe(&self, id: u64, id_of: &impl Fn(usize) -> u64) -> (usize, bool) {
        let mut at = self.home(id);
        loop {
            match self.entries[at] {
                0 => return (at, false),
                entry if id_of(entry as usize - 1) == id => return (at, true),
                _ => at = (at + 1) & self.mask(),
            }
        }
    }

    /// The position of `id`, if the index holds it.
    pub fn find(&self, id: u64, id_of: impl Fn(usize) -> u64) -> Option<usize> {
        match self.probe(id, &id_of) {
            (at, true) => Some(self.entries[at] as usize - 1),
            (_, false) => None,
        }
    }

    /// Adds `id` at `position` (where `id_of` reads it already); false if the index holds `id`
    /// at a position already.
    pub fn insert(&mut self, id: u64, position: usize, id_of: impl Fn(usize) -> u64) -> bool {
        assert!(position < self.entries.len() / 2);
        assert_eq!(id_of(position), id);
        let (at, found) = self.probe(id, &id_of);
        if !found {
            self.entries[at] = position as u32 + 1;
        }
        !found
    }

    /// Removes `id`, which the index holds (and `id_of` still reads at its position).
    pub fn remove(&mut self, id: u64, id_of: impl Fn(usize) -> u64) {
        let (mut hole, found) = self.probe(id, &id_of);
        assert!(found, "removed an id the index does not hold");
        self.entries[hole] = 0;
        let mut at = (hole + 1) & self.mask();
        while self.entries[at] != 0 {
            let home = self.home(id_of(self.entries[at] as usize - 1));
            // The entry may move to the hole unless its home lies cyclically in (hole, at].
            let distance_home = at.wrapping_sub(home) & self.mask();
            let distance_hole = at.wrapping_sub(hole) & self.mask();
            if distance_home >= distance_hole {
                self.entries[hole] = self.entries[at];
                self.entries[at] = 0;
                hole = at;
            }
            at = (at + 1) & self.mask();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdx::prng::Prng;

    #[test]
    fn index_agrees_with_a_scan_through_random_inserts_and_removals() {
        // Goal: after any sequence of inserts and removals (with colliding ids, so that probes
        // run long and removals shift entries back), every id is found at its position and no
        // removed id is found.
        let positions = 64;
        let mut prng = Prng::new(42);
        let mut table = vec![0u64; positions];
        let mut index = IdIndex::new(positions);
        for _ in 0..20_000 {
            let position = prng.index(positions);
            if table[position] != 0 {
                let id = table[position];
                index.remove(id, |at| table[at]);
                table[position] = 0;
            } else {
                // Ids that share their high bits collide in the home computation often.
                let id = 1 + (prng.index(200) as u64) * (1 << 40);
                if table.contains(&id) {
                    continue;
                }
                table[position] = id;
                assert!(index.insert(id, position, |at| table[at]));
                assert!(!index.insert(id, position, |at| table[at]));
            }
            for (at, id) in table.iter().enumerate() {
                if *id != 0 {
                    assert_eq!(index.find(*id, |at| table[at]), Some(at));
                }
            }
        }
        for removed in (0..200u64).map(|k| 1 + k * (1 << 40)) {
            let held = table.contains(&removed);
            assert_eq!(index.find(removed, |at| table[at]).is_some(), held);
        }
    }
}
