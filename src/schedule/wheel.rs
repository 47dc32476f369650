//! The per-worker in-memory timer wheel: which delivery is due next, at 1 ms resolution.
//!
//! Owns: ordering of in-memory timers. Items come out of [`TimerWheel::expire`] in due
//! order, and items due at the same millisecond in insertion order.
//!
//! Must not: read the clock (callers pass `now_ms`), persist anything (the durable
//! due-time index lives in the store; this wheel is rebuilt from it after a restart),
//! lock, or allocate per item beyond the amortized growth of its `Vec`s.
//!
//! Layout: a hierarchical wheel of [`LEVELS`] levels of 64 slots (level `l` slots span
//! `64^l` ms, so the wheel covers `64^6` ms ≈ 2.2 years ahead), plus two side lists:
//! items whose due time has already passed (they fire at the next `expire`) and items
//! beyond the wheel's reach (moved in when the wheel's window gets to them).
//!
//! Invariant: every wheel item with due time `d` sits at level `L`, the level of the
//! highest bit in which `d` and `elapsed` differ (divided by 6), in slot
//! `(d >> 6L) & 63`; `d >= elapsed`. A slot is cascaded one level down as soon as
//! `elapsed` reaches its start, so an item inserted later always lands behind an earlier
//! item with the same due time; level-0 slots hold items of one exact millisecond. Each
//! item is moved at most once per level, so insert is O(1) and expiry amortized O(1).

/// Bits of the due time per level.
const BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << BITS;
/// Levels in the wheel; beyond `64^LEVELS` ms ahead, items wait in the overflow list.
const LEVELS: usize = 6;
/// An emptied slot keeping more capacity than this (in items) gives it back.
const KEEP_CAPACITY: usize = 1024;
/// A clock this far (ms) or less behind the wheel's is taken as the same time; further
/// behind, the wheel [rewinds](TimerWheel::rewind).
const STEP_BACK_MS: u64 = 100;

/// A hierarchical timer wheel keyed by due time in milliseconds.
#[derive(Debug)]
pub struct TimerWheel<T> {
    /// Start of the first millisecond not yet expired; wheel items are due at or after it.
    elapsed: u64,
    /// `LEVELS * SLOTS` slots, level-major, each in insertion order.
    slots: Vec<Vec<(u64, T)>>,
    /// Earliest due time in each slot (meaningful while the slot is occupied).
    slot_min: Vec<u64>,
    /// Bit `s` of `occupied[l]`: slot `s` of level `l` is non-empty.
    occupied: [u64; LEVELS],
    /// Items inserted with a due time before `elapsed`, in insertion order.
    past: Vec<(u64, T)>,
    past_min: u64,
    /// Items beyond the wheel's reach (due in a later `64^LEVELS` ms epoch), in
    /// insertion order.
    overflow: Vec<(u64, T)>,
    overflow_min: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose clock starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            elapsed: now_ms,
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            slot_min: vec![u64::MAX; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            past: Vec::new(),
            past_min: u64::MAX,
            overflow: Vec::new(),
            overflow_min: u64::MAX,
            len: 0,
        }
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every waiting item, in no particular order. O(n) over the items and the slots.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.past
            .iter()
            .chain(self.slots.iter().flatten())
            .chain(self.overflow.iter())
            .map(|(_, item)| item)
    }

    /// Every waiting item, to change in place (its due time stays), in no particular
    /// order. O(n) over the items and the slots.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.past
            .iter_mut()
            .chain(self.slots.iter_mut().flatten())
            .chain(self.overflow.iter_mut())
            .map(|(_, item)| item)
    }

    /// Schedules `item` for `due_ms`. A due time already past fires at the next
    /// [`expire`](Self::expire). O(1).
    pub fn insert(&mut self, due_ms: u64, item: T) {
        self.len += 1;
        if due_ms < self.elapsed {
            self.past_min = self.past_min.min(due_ms);
            self.past.push((due_ms, item));
        } else {
            self.place(due_ms, item);
        }
    }

    /// The earliest due time (ms) of any waiting item, `None` when empty. O(1).
    /// May be in the past: such items fire at the next `expire`.
    pub fn next_due(&self) -> Option<u64> {
        if !self.past.is_empty() {
            return Some(self.past_min);
        }
        if let Some((level, slot)) = self.next_slot() {
            return Some(self.slot_min[level * SLOTS + slot]);
        }
        (!self.overflow.is_empty()).then_some(self.overflow_min)
    }

    /// Sets the wheel's clock back to `now_ms` if that is more than [`STEP_BACK_MS`]
    /// behind it (the wall clock was set back), placing every waiting item again: an
    /// item inserted from then on waits until its due time instead of firing at once as
    /// if already past, and a waiting one keeps its due time. O(n), on such a step only;
    /// smaller steps back change nothing (an item then fires at most that much early).
    pub fn rewind(&mut self, now_ms: u64) {
        if now_ms.saturating_add(STEP_BACK_MS) >= self.elapsed {
            return;
        }
        let mut items = Vec::with_capacity(self.len);
        // Due times in `past`, the slots and `overflow` do not overlap, and each due time
        // sits in one slot in insertion order: a stable sort keeps ties in that order.
        items.append(&mut self.past);
        for slot in &mut self.slots {
            items.append(slot);
        }
        items.append(&mut self.overflow);
        items.sort_by_key(|&(due, _)| due);
        self.elapsed = now_ms;
        self.occupied = [0; LEVELS];
        self.slot_min.fill(u64::MAX);
        self.past_min = u64::MAX;
        self.overflow_min = u64::MAX;
        self.len = 0;
        for (due, item) in items {
            self.insert(due, item);
        }
    }

    /// Moves every item due at or before `now_ms` into `out`, in due order, items with the
    /// same due time in insertion order. Also fires items inserted with a due time
    /// already past, whatever `now_ms` is. A `now_ms` more than [`STEP_BACK_MS`] before
    /// an earlier call's [rewinds](Self::rewind) the wheel first; a smaller step back
    /// changes nothing else.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<T>) {
        self.rewind(now_ms);
        if !self.past.is_empty() {
            // Past items are all due before every wheel item.
            if !self.past.is_sorted_by_key(|&(due, _)| due) {
                self.past.sort_by_key(|&(due, _)| due); // stable: ties stay FIFO
            }
            self.len -= self.past.len();
            out.extend(self.past.drain(..).map(|(_, item)| item));
            self.past_min = u64::MAX;
            if self.past.capacity() > KEEP_CAPACITY {
                self.past.shrink_to(KEEP_CAPACITY / 4);
            }
        }
        if now_ms < self.elapsed {
            return;
        }
        // After this call `elapsed` becomes `now_ms + 1`: every slot starting at or before
        // that is processed now, level 0 by firing, higher levels by cascading.
        let target = now_ms.saturating_add(1);
        loop {
            match self.next_slot() {
                Some((level, slot)) => {
                    let start = self.slot_start(level, slot);
                    let idx = level * SLOTS + slot;
                    if level == 0 {
                        if start > now_ms {
                            break;
                        }
                        self.elapsed = start;
                        let items = &mut self.slots[idx];
                        self.len -= items.len();
                        out.extend(items.drain(..).map(|(_, item)| item));
                        self.clear_slot(0, slot);
                    } else {
                        if start > target {
                            break;
                        }
                        self.elapsed = start;
                        let mut items = std::mem::take(&mut self.slots[idx]);
                        self.clear_slot(level, slot);
                        for (due, item) in items.drain(..) {
                            // due >= start, and they agree above this level: lower level.
                            self.place(due, item);
                        }
                        self.slots[idx] = items;
                        self.trim_slot(idx);
                    }
                }
                None => {
                    // Wheel empty: bring in the next epoch of far-future items if due.
                    if self.overflow.is_empty() {
                        break;
                    }
                    let epoch_start = self.overflow_min & !Self::epoch_mask();
                    if epoch_start > target {
                        break;
                    }
                    self.elapsed = epoch_start;
                    let items = std::mem::take(&mut self.overflow);
                    self.overflow_min = u64::MAX;
                    for (due, item) in items {
                        // Items of later epochs go back to `overflow`, in order.
                        self.place(due, item);
                    }
                }
            }
        }
        self.elapsed = self.elapsed.max(target);
    }

    /// Puts an item due at or after `elapsed` where the invariant says it belongs.
    fn place(&mut self, due: u64, item: T) {
        debug_assert!(due >= self.elapsed);
        let level = Self::level_for(self.elapsed, due);
        if level >= LEVELS {
            self.overflow_min = self.overflow_min.min(due);
            self.overflow.push((due, item));
            return;
        }
        let slot = ((due >> (BITS * level as u32)) as usize) & (SLOTS - 1);
        let idx = level * SLOTS + slot;
        if self.occupied[level] & (1 << slot) == 0 {
            self.occupied[level] |= 1 << slot;
            self.slot_min[idx] = due;
        } else if due < self.slot_min[idx] {
            self.slot_min[idx] = due;
        }
        self.slots[idx].push((due, item));
    }

    /// Level of the highest bit in which `elapsed` and `due` differ.
    #[inline]
    fn level_for(elapsed: u64, due: u64) -> usize {
        let diff = (elapsed ^ due) | (SLOTS as u64 - 1);
        let top_bit = 63 - diff.leading_zeros();
        (top_bit / BITS) as usize
    }

    /// Mask of the bits below the overflow epoch (`64^LEVELS` ms).
    #[inline]
    fn epoch_mask() -> u64 {
        (1u64 << (BITS * LEVELS as u32)) - 1
    }

    /// The occupied slot holding the earliest items: the lowest occupied slot of the
    /// lowest non-empty level. (Every slot index at level `l` is at or above `elapsed`'s,
    /// and a lower level's items all come before the next higher-level slot starts.)
    #[inline]
    fn next_slot(&self) -> Option<(usize, usize)> {
        self.occupied
            .iter()
            .position(|&bits| bits != 0)
            .map(|level| (level, self.occupied[level].trailing_zeros() as usize))
    }

    /// First millisecond covered by `slot` of `level` in the current rotation.
    #[inline]
    fn slot_start(&self, level: usize, slot: usize) -> u64 {
        let shift = BITS * level as u32;
        let above = shift + BITS;
        let base = if above >= 64 {
            0
        } else {
            self.elapsed & !((1u64 << above) - 1)
        };
        base | ((slot as u64) << shift)
    }

    fn clear_slot(&mut self, level: usize, slot: usize) {
        self.occupied[level] &= !(1 << slot);
        self.slot_min[level * SLOTS + slot] = u64::MAX;
        if level == 0 {
            self.trim_slot(slot);
        }
    }

    /// Gives back the capacity of an emptied slot that once held a burst.
    fn trim_slot(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        if slot.capacity() > KEEP_CAPACITY {
            slot.shrink_to(KEEP_CAPACITY / 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn expire<T>(w: &mut TimerWheel<T>, now: u64) -> Vec<T> {
        let mut out = Vec::new();
        w.expire(now, &mut out);
        out
    }

    #[test]
    fn items_changed_in_place_keep_their_time() {
        let mut w = TimerWheel::new(1_000);
        w.insert(500, 1); // past
        w.insert(1_100, 2);
        w.insert(1_000 + (1 << 40), 3); // overflow
        for item in w.iter_mut() {
            *item *= 10;
        }
        let mut out = Vec::new();
        w.expire(1_100, &mut out);
        assert_eq!(out, vec![10, 20]);
        w.expire(1_000 + (1 << 40), &mut out);
        assert_eq!(out, vec![10, 20, 30]);
    }

    #[test]
    fn fires_in_due_order_with_fifo_ties() {
        let mut w = TimerWheel::new(1000);
        w.insert(1500, "c");
        w.insert(1001, "a");
        w.insert(1500, "d");
        w.insert(1200, "b");
        w.insert(5000, "e");
        assert_eq!(w.len(), 5);
        assert_eq!(w.next_due(), Some(1001));
        assert_eq!(expire(&mut w, 1000), Vec::<&str>::new());
        assert_eq!(expire(&mut w, 1500), ["a", "b", "c", "d"]);
        assert_eq!(w.next_due(), Some(5000));
        assert_eq!(expire(&mut w, 4999), Vec::<&str>::new());
        assert_eq!(expire(&mut w, 5000), ["e"]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn iter_sees_every_waiting_item_past_placed_and_beyond_reach() {
        let mut w = TimerWheel::new(1000);
        w.insert(500, 1); // already past
        w.insert(1001, 2);
        w.insert(1000 + 64 * 64 * 3, 3);
        w.insert(1000 + (1 << 40), 4); // beyond the wheel's reach
        let mut seen: Vec<i32> = w.iter().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 3, 4]);
        expire(&mut w, 1001);
        let mut seen: Vec<i32> = w.iter().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, [3, 4]);
    }

    #[test]
    fn past_items_fire_at_next_expire_first() {
        let mut w = TimerWheel::new(10_000);
        w.insert(10_005, 3);
        w.insert(9_000, 2);
        w.insert(5, 1);
        w.insert(9_000, 22);
        assert_eq!(w.next_due(), Some(5));
        // Even an expire "before" them (by no more than a small step back) fires past
        // items.
        assert_eq!(expire(&mut w, 10_000 - STEP_BACK_MS), [1, 2, 22]);
        assert_eq!(expire(&mut w, 10_005), [3]);
        // Due exactly at the last expired millisecond is in the past now.
        w.insert(10_005, 4);
        assert_eq!(w.next_due(), Some(10_005));
        assert_eq!(expire(&mut w, 10_005), [4]);
    }

    #[test]
    fn a_clock_set_back_rewinds_the_wheel_and_due_times_hold() {
        let hour = 3_600_000;
        let t = 1_775_642_700_000;
        let mut w = TimerWheel::new(t);
        w.insert(t + 5_000, "waiting");
        w.insert(t + 2 * hour, "far");
        assert!(expire(&mut w, t + 1_000).is_empty());
        // The clock is set back an hour: a retry scheduled 15 s from the new time waits
        // 15 s, not firing at once as if past; waiting items keep their due times.
        let back = t + 1_000 - hour;
        w.insert(back + 15_000, "retry"); // before the rewind: in the past list, placed again by it
        assert_eq!(expire(&mut w, back), Vec::<&str>::new());
        w.insert(back + 15_000, "retry2");
        assert_eq!(w.len(), 4);
        assert_eq!(w.next_due(), Some(back + 15_000));
        assert_eq!(expire(&mut w, back + 14_999), Vec::<&str>::new());
        assert_eq!(expire(&mut w, back + 15_000), ["retry", "retry2"]);
        assert_eq!(expire(&mut w, t + 4_999), Vec::<&str>::new());
        assert_eq!(expire(&mut w, t + 5_000), ["waiting"]);
        // A small step back changes nothing: a past item still fires at once.
        w.insert(t + 4_990, "late");
        assert_eq!(expire(&mut w, t + 4_950), ["late"]);
        assert_eq!(expire(&mut w, t + 2 * hour), ["far"]);
        assert!(w.is_empty());
    }

    #[test]
    fn fifo_holds_across_cascades() {
        let mut w = TimerWheel::new(0);
        w.insert(100_000, 1); // level 2
        expire(&mut w, 70_000); // cascades it down
        w.insert(100_000, 2);
        expire(&mut w, 99_999);
        w.insert(100_000, 3);
        assert_eq!(expire(&mut w, 100_000), [1, 2, 3]);
        // The slot starting right after `now` is cascaded before inserts can land below it.
        let mut w = TimerWheel::new(0);
        w.insert(4096, 'a');
        expire(&mut w, 4095);
        w.insert(4096, 'b');
        assert_eq!(expire(&mut w, 4096), ['a', 'b']);
    }

    #[test]
    fn far_future_items_use_overflow() {
        let year = 365 * 24 * 3600 * 1000u64;
        let start = 1_775_642_700_000; // 2026
        let mut w = TimerWheel::new(start);
        w.insert(start + 10 * year, 'z');
        w.insert(start + 3 * year, 'x');
        w.insert(start + 3 * year, 'y');
        w.insert(start + 1000, 'a');
        assert_eq!(w.next_due(), Some(start + 1000));
        assert_eq!(expire(&mut w, start + 1000), ['a']);
        assert_eq!(w.next_due(), Some(start + 3 * year));
        assert_eq!(expire(&mut w, start + 3 * year - 1), Vec::<char>::new());
        w.insert(start + 3 * year, 'w');
        assert_eq!(expire(&mut w, start + 3 * year), ['x', 'y', 'w']);
        assert_eq!(expire(&mut w, u64::MAX), ['z']);
        assert!(w.is_empty());
    }

    #[test]
    fn extreme_times() {
        let mut w = TimerWheel::new(u64::MAX - 10);
        w.insert(u64::MAX, 1);
        w.insert(u64::MAX - 5, 0);
        assert_eq!(expire(&mut w, u64::MAX), [0, 1]);
        let mut w = TimerWheel::new(0);
        w.insert(u64::MAX, 1);
        w.insert(0, 0);
        assert_eq!(expire(&mut w, 0), [0]);
        assert_eq!(expire(&mut w, u64::MAX), [1]);
    }

    #[test]
    fn many_items_and_slot_capacity_is_given_back() {
        let mut w = TimerWheel::new(0);
        for i in 0..200_000u64 {
            w.insert(1 + (i * 7919) % 100_000, i);
        }
        let mut out = Vec::new();
        let mut last_due = 0;
        let mut count = 0;
        for now in (0..=100_000).step_by(997) {
            out.clear();
            w.expire(now, &mut out);
            for &i in &out {
                let due = 1 + (i * 7919) % 100_000;
                assert!(due >= last_due && due <= now);
                last_due = due;
            }
            count += out.len();
        }
        out.clear();
        w.expire(100_000, &mut out);
        assert_eq!(count + out.len(), 200_000);
        assert!(w.is_empty());
        assert!(w.slots.iter().all(|s| s.capacity() <= KEEP_CAPACITY));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Insert due at `now + offset` (may be negative).
            Insert(i64),
            /// Advance `now` by this much and expire.
            Expire(u64),
            /// Set `now` back by this much (more than a small step), and expire.
            Back(u64),
            /// Check `next_due`.
            Peek,
        }

        fn offset() -> impl Strategy<Value = i64> {
            prop_oneof![
                -100i64..100,
                0i64..5_000,
                0i64..300_000,
                0i64..(1 << 37), // beyond the wheel: overflow
                Just(0i64),
                Just(1 << 24),
                Just((1 << 36) - 1),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => offset().prop_map(Op::Insert),
                2 => prop_oneof![0u64..3, 0u64..100, 0u64..10_000, 0u64..(1 << 37)]
                    .prop_map(Op::Expire),
                1 => Just(Op::Peek),
                1 => prop_oneof![STEP_BACK_MS + 1..STEP_BACK_MS + 3, 101u64..(1 << 30)]
                    .prop_map(Op::Back),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn matches_btreemap_model(
                start in prop_oneof![0u64..1000, Just(1_775_642_700_000u64), Just((1u64 << 36) - 3)],
                ops in prop::collection::vec(op(), 1..300),
            ) {
                let mut w = TimerWheel::new(start);
                let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
                let mut now = start;
                let mut seq = 0u64;
                for op in ops {
                    match op {
                        Op::Insert(off) => {
                            let due = now.saturating_add_signed(off);
                            w.insert(due, seq);
                            model.insert((due, seq), seq);
                            seq += 1;
                        }
                        Op::Expire(dt) | Op::Back(dt) => {
                            if let Op::Back(_) = op {
                                if now < dt {
                                    continue;
                                }
                                now -= dt;
                            } else {
                                now += dt;
                            }
                            let mut out = Vec::new();
                            w.expire(now, &mut out);
                            let keep = model.split_off(&(now + 1, 0));
                            let want: Vec<u64> = model.values().copied().collect();
                            model = keep;
                            prop_assert_eq!(out, want);
                        }
                        Op::Peek => {
                            prop_assert_eq!(w.next_due(), model.keys().next().map(|k| k.0));
                        }
                    }
                    prop_assert_eq!(w.len(), model.len());
                }
                let mut out = Vec::new();
                w.expire(u64::MAX - 1, &mut out);
                prop_assert_eq!(out, model.values().copied().collect::<Vec<_>>());
                prop_assert!(w.is_empty());
            }
        }
    }
}
