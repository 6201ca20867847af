//! Concrete port numbers: an agent's port ranges and which of them are taken.

/// Where a task's search for free ports starts: a hash of its id (FNV-1a, then MurmurHash3's finalizer, since
/// ids that differ in their last character would otherwise start next to each other). Tasks spread over an agent's range
/// instead of all taking its lowest free ports, as Nomad picks dynamic ports at random, so a replacement (a new
/// id) rarely gets the port its predecessor had: one a process outside Titan may hold, or that clients of the old
/// task may still call. Placement stays a pure function of its inputs.
pub fn search_start(task_id: &str) -> u64 {
    let mut h = task_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ports of one agent: its ranges and a bit per port saying whether it is allocated. Both are shared until
/// written (copy on write), so a round's working copy of the cluster's state costs a pointer per agent, not its
/// bitmap (1.25 KiB for a 10,000-port range): only the agents a round gives ports to are copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: std::sync::Arc<Vec<(u16, u16)>>,
    taken: std::sync::Arc<Vec<u64>>,
    count: u32,
    free: u32,
}

impl PortSet {
    /// Ranges are inclusive; overlapping or empty ranges are merged or dropped so every port counts once.
    pub fn new(ranges: &[(u16, u16)]) -> PortSet {
        let mut sorted: Vec<(u16, u16)> = ranges.iter().copied().filter(|(a, b)| a <= b).collect();
        sorted.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match merged.last_mut() {
                Some((_, end)) if u32::from(a) <= u32::from(*end) + 1 => *end = (*end).max(b),
                _ => merged.push((a, b)),
            }
        }
        let count: u32 = merged.iter().map(|(a, b)| u32::from(b - a) + 1).sum();
        PortSet {
            ranges: std::sync::Arc::new(merged),
            taken: std::sync::Arc::new(vec![0; count.div_ceil(64) as usize]),
            count,
            free: count,
        }
    }

    pub fn total(&self) -> u32 {
        self.count
    }

    #[cfg(test)]
    pub fn free(&self) -> u32 {
        self.free
    }

    #[cfg(test)]
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    fn slot(&self, port: u16) -> Option<usize> {
        let mut base = 0usize;
        for &(a, b) in self.ranges.iter() {
            if port >= a && port <= b {
                return Some(base + usize::from(port - a));
            }
            base += usize::from(b - a) + 1;
        }
        None
    }

    fn port_at(&self, mut slot: usize) -> u16 {
        for &(a, b) in self.ranges.iter() {
            let len = usize::from(b - a) + 1;
            if slot < len {
                return a + slot as u16;
            }
            slot -= len;
        }
        unreachable!("slot {slot} is inside the ranges by construction")
    }

    #[cfg(test)]
    pub fn is_taken(&self, port: u16) -> bool {
        self.slot(port).is_some_and(|s| self.taken[s / 64] & (1 << (s % 64)) != 0)
    }

    /// Takes `n` free ports, the first ones free at or after slot `from` (counted across the ranges, wrapping
    /// around), or nothing when fewer than `n` are free.
    pub fn allocate(&mut self, n: u32, from: u64) -> Option<Vec<u16>> {
        if n > self.free {
            return None;
        }
        if n == 0 {
            return Some(Vec::new());
        }
        let count = self.count as usize;
        let start = if count == 0 { 0 } else { (from % count as u64) as usize };
        let mut out = Vec::with_capacity(n as usize);
        self.take(start, count, n as usize, &mut out);
        self.take(0, start, n as usize, &mut out);
        self.free -= n;
        Some(out.into_iter().map(|s| self.port_at(s)).collect())
    }

    /// Takes free slots in `lo..hi`, lowest first, until `out` holds `n`.
    fn take(&mut self, lo: usize, hi: usize, n: usize, out: &mut Vec<usize>) {
        if lo >= hi || out.len() >= n {
            return;
        }
        let taken = std::sync::Arc::make_mut(&mut self.taken);
        let mut slot = lo;
        while slot < hi && out.len() < n {
            let w = slot / 64;
            let word_end = (w + 1) * 64;
            let mut free = !taken[w] & (!0u64 << (slot % 64));
            if hi < word_end {
                free &= (1u64 << (hi % 64)) - 1;
            }
            if free == 0 {
                slot = word_end;
                continue;
            }
            let bit = free.trailing_zeros() as usize;
            taken[w] |= 1 << bit;
            out.push(w * 64 + bit);
            slot = w * 64 + bit + 1;
        }
    }

    /// Marks given ports taken (a task that already runs). Ports outside the ranges or already taken are
    /// reported back and not counted twice.
    pub fn reserve(&mut self, ports: &[u16]) -> Vec<u16> {
        let mut rejected = Vec::new();
        if ports.is_empty() {
            return rejected;
        }
        let slots: Vec<Option<usize>> = ports.iter().map(|&p| self.slot(p)).collect();
        let taken = std::sync::Arc::make_mut(&mut self.taken);
        for (&p, slot) in ports.iter().zip(slots) {
            match slot {
                Some(s) if taken[s / 64] & (1 << (s % 64)) == 0 => {
                    taken[s / 64] |= 1 << (s % 64);
                    self.free -= 1;
                }
                _ => rejected.push(p),
            }
        }
        rejected
    }

    pub fn release(&mut self, ports: &[u16]) {
        if ports.is_empty() {
            return;
        }
        let slots: Vec<Option<usize>> = ports.iter().map(|&p| self.slot(p)).collect();
        let taken = std::sync::Arc::make_mut(&mut self.taken);
        for s in slots.into_iter().flatten() {
            if taken[s / 64] & (1 << (s % 64)) != 0 {
                taken[s / 64] &= !(1 << (s % 64));
                self.free += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_the_bitmap_until_one_side_writes() {
        let mut original = PortSet::new(&[(31000, 31999)]);
        original.reserve(&[31000]);
        let mut copy = original.clone();
        assert!(std::sync::Arc::ptr_eq(&original.taken, &copy.taken), "shared after a clone");
        assert_eq!(copy.allocate(0, 7), Some(Vec::new()));
        assert!(std::sync::Arc::ptr_eq(&original.taken, &copy.taken), "no ports asked: still shared");
        let got = copy.allocate(2, 7).expect("ports");
        assert!(got.iter().all(|p| copy.is_taken(*p) && !original.is_taken(*p)), "the copy's writes are its own");
        assert!(original.is_taken(31000) && copy.is_taken(31000));
        copy.release(&[31000]);
        assert!(original.is_taken(31000) && !copy.is_taken(31000));
    }

    #[test]
    fn allocates_free_ports_from_a_slot_across_ranges() {
        let mut p = PortSet::new(&[(200, 201), (100, 101), (101, 102)]);
        assert_eq!(p.ranges(), &[(100, 102), (200, 201)]);
        assert_eq!(p.total(), 5);
        assert_eq!(p.allocate(2, 0), Some(vec![100, 101]));
        assert_eq!(p.allocate(2, 0), Some(vec![102, 200]));
        assert_eq!(p.allocate(2, 0), None);
        p.release(&[101]);
        assert_eq!(p.free(), 2);
        assert_eq!(p.allocate(2, 0), Some(vec![101, 201]));
        assert_eq!(p.free(), 0);
        // From slot 3 (port 200), wrapping around past the end; a slot past the count wraps too.
        let mut p = PortSet::new(&[(100, 102), (200, 201)]);
        assert_eq!(p.allocate(3, 3), Some(vec![200, 201, 100]));
        assert_eq!(p.allocate(1, 5 + 1), Some(vec![101]));
        assert_eq!(p.allocate(1, 1), Some(vec![102]));
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn reserve_rejects_foreign_and_double_ports() {
        let mut p = PortSet::new(&[(31000, 31999)]);
        assert_eq!(p.reserve(&[31000, 31000, 80]), vec![31000, 80]);
        assert_eq!(p.free(), 999);
        assert!(p.is_taken(31000));
        assert_eq!(p.allocate(1, 0), Some(vec![31001]));
    }

    #[test]
    fn allocation_spans_many_words_and_wraps_within_them() {
        let mut p = PortSet::new(&[(1, 200)]);
        let got = p.allocate(130, 0).expect("130 of 200 fit");
        assert_eq!(got.first(), Some(&1));
        assert_eq!(got.last(), Some(&130));
        assert_eq!(p.allocate(71, 0), None);
        assert_eq!(p.allocate(70, 0).map(|v| v.len()), Some(70));
        // Starting inside a word, ending inside another, and wrapping back to the start of the first.
        let mut p = PortSet::new(&[(1, 200)]);
        let got = p.allocate(200, 150).expect("all fit");
        assert_eq!((got[0], got[49], got[50], got[199]), (151, 200, 1, 150));
        assert_eq!(p.free(), 0);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 200, "each port once");
    }
}
