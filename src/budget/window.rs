//! The shaping algorithm: a sliding window of time slots, one per quota dimension.
//!
//! DashScope enforces RPM and TPM *per second* (RPS = RPM/60, TPS = TPM/60), by a continuous
//! bucket on some paths and by fixed one-second windows on others. A limiter that keeps **the
//! sum over every window of length `W` at or below `rate · W`** satisfies both: any fixed
//! one-second window is one of those windows, and a continuous bucket holding one second's worth
//! never runs dry when no second ever asks for more than a second's worth.
//!
//! Why not governor or a plain token bucket: a token bucket of capacity `C` and rate `R` admits
//! up to `C + R` in some one-second window, twice the quota when `C` is a second's worth; and
//! governor has no refund, rejects costs above its burst, and needs a clock of its own. Settling
//! against real usage needs both refunds and debt, so the window is ours.
//!
//! The window is kept in `SLOTS` slots of `W / SLOTS` each (5 ms for the default one second),
//! so memory is fixed per model whatever the traffic (1.6 KB a dimension). A slot counts until
//! its whole width has left the window, which errs on the safe side by at most one slot: a
//! charge counts for up to 5 ms longer than the window, about 0.25% of the quota on average
//! (with 10 ms slots, the goodput example's sustained rate was 0.969 of the quota; with 5 ms,
//! 0.972).
//!
//! **Debt.** A cost that does not fit — a request larger than the whole window, or usage above
//! its estimate — is charged up to the window's room and the rest is *carried*: the carry is
//! moved into the window as room appears, and nothing new is admitted while any is carried.

use std::time::Duration;

use tokio::time::Instant;

/// Slots per window.
pub(crate) const SLOTS: usize = 200;

/// Slots kept: one more than a window, because a slot's amounts may have been charged at its
/// very end, and must count until a whole window after that.
const RING: usize = SLOTS + 1;

/// Where a charge was put, so that a credit can be taken back from the same slot while it is
/// still in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotRef {
    /// The absolute slot number (time since the window's epoch, in slot widths).
    pub(crate) slot: u64,
}

/// One quota dimension (requests or tokens) of one model.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Slot amounts; `slots[n % RING]` holds absolute slot `n` for the last `RING` slots.
    slots: [u64; RING],
    /// The sum of `slots`.
    sum: u64,
    /// The newest absolute slot `slots` has been advanced to.
    head: u64,
    /// Owed amount not yet in the window.
    carry: u64,
    epoch: Instant,
    slot_width: Duration,
}

impl Window {
    pub(crate) fn new(width: Duration, now: Instant) -> Self {
        // A slot of at least a microsecond: a zero or tiny window still has a defined width.
        let slot_width = (width / SLOTS as u32).max(Duration::from_micros(1));
        Window {
            slots: [0; RING],
            sum: 0,
            head: 0,
            carry: 0,
            epoch: now,
            slot_width,
        }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        (since.as_nanos() / self.slot_width.as_nanos().max(1)) as u64
    }

    /// Moves the window to `now`: slots that left it are emptied, and carried debt moves in
    /// as room appears under `limit`, slot by slot, as if the window had been watched all along.
    pub(crate) fn advance(&mut self, now: Instant, limit: u64) {
        let current = self.slot_of(now);
        let mut steps = current.saturating_sub(self.head);
        let mut stepped = 0u64;
        while steps > 0 {
            if self.carry == 0 && (self.sum == 0 || steps >= RING as u64) {
                // Nothing owed: everything older than a window simply leaves.
                if steps >= RING as u64 {
                    self.slots = [0; RING];
                    self.sum = 0;
                    self.head = current;
                    break;
                }
                if self.sum == 0 {
                    self.head = current;
                    break;
                }
            }
            if self.carry > 0 && stepped >= 2 * RING as u64 && self.sum > 0 {
                // Two windows of debt entering as slots leave: the window is full and turns
                // the same way every window, each one taking `sum` off the debt. Skip whole
                // windows at once, so a debt of any size costs a bounded number of steps.
                let windows = (steps / RING as u64).min(self.carry / self.sum);
                if windows > 0 {
                    self.carry -= windows * self.sum;
                    self.head += windows * RING as u64;
                    steps -= windows * RING as u64;
                    continue;
                }
            }
            self.head += 1;
            let index = (self.head % RING as u64) as usize;
            self.sum -= self.slots[index];
            self.slots[index] = 0;
            self.move_carry(limit);
            steps -= 1;
            stepped += 1;
        }
        self.move_carry(limit);
    }

    /// Moves as much carried debt into the current slot as `limit` leaves room for.
    fn move_carry(&mut self, limit: u64) {
        if self.carry > 0 {
            let room = limit.saturating_sub(self.sum);
            let moved = room.min(self.carry);
            self.put(moved);
            self.carry -= moved;
        }
    }

    fn put(&mut self, amount: u64) {
        let index = (self.head % RING as u64) as usize;
        self.slots[index] = self.slots[index].saturating_add(amount);
        self.sum = self.sum.saturating_add(amount);
    }

    /// Whether `cost` can be taken now under `limit` (after [`advance`](Self::advance)): it fits
    /// in the room left, or — when it is larger than the whole limit — the window is empty.
    /// Nothing is admitted while debt is carried.
    pub(crate) fn fits(&self, cost: u64, limit: u64) -> bool {
        if self.carry > 0 {
            return false;
        }
        self.sum.saturating_add(cost) <= limit || (self.sum == 0 && cost > limit)
    }

    /// Takes `cost` (call only when it [`fits`](Self::fits), or to charge debt): what fits under
    /// `limit` goes into the current slot, the rest is carried.
    pub(crate) fn charge(&mut self, cost: u64, limit: u64) -> SlotRef {
        let room = limit.saturating_sub(self.sum);
        let now_part = cost.min(room);
        self.put(now_part);
        self.carry = self.carry.saturating_add(cost - now_part);
        SlotRef { slot: self.head }
    }

    /// Gives `amount` back: from the carry first, then from the slot of `at` if it is still in
    /// the window (an amount that already left the window is not given back twice).
    pub(crate) fn credit(&mut self, at: SlotRef, amount: u64) {
        let from_carry = amount.min(self.carry);
        self.carry -= from_carry;
        let rest = amount - from_carry;
        if rest == 0 || at.slot + (RING as u64) <= self.head || at.slot > self.head {
            return;
        }
        let index = (at.slot % RING as u64) as usize;
        let taken = rest.min(self.slots[index]);
        self.slots[index] -= taken;
        self.sum -= taken;
    }

    /// How long after `now` until `cost` fits under `limit`, assuming nothing else is charged
    /// meanwhile. `Duration::ZERO` when it fits now.
    pub(crate) fn wait_for(&self, now: Instant, cost: u64, limit: u64) -> Duration {
        if self.fits(cost, limit) {
            return Duration::ZERO;
        }
        // Room needed: everything above `limit - cost`, or everything when `cost > limit`.
        let keep = limit.saturating_sub(cost);
        let mut excess = self.sum.saturating_add(self.carry).saturating_sub(keep);
        if cost > limit {
            excess = self.sum.saturating_add(self.carry);
        }
        // Slots leave oldest first, and carried debt enters as they leave: the carry has to pass
        // through the window, a window's `limit` at a time, after the slots there now.
        let mut freed = 0u64;
        for age in (0..RING as u64).rev() {
            let Some(slot) = self.head.checked_sub(age) else {
                continue;
            };
            freed = freed.saturating_add(self.slots[(slot % RING as u64) as usize]);
            if freed >= excess {
                return self.until_slot_leaves(now, slot);
            }
        }
        // What is still owed after the whole window left: a window per `limit` of it.
        let owed = excess - freed;
        let windows = owed.div_ceil(limit.max(1));
        let last = self.until_slot_leaves(now, self.head);
        let window = self.slot_width * SLOTS as u32;
        last.saturating_add(window.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX)))
    }

    /// Time from `now` until absolute slot `slot` has left the window.
    fn until_slot_leaves(&self, now: Instant, slot: u64) -> Duration {
        let leaves = slot.saturating_add(RING as u64);
        // In nanoseconds: a slot count past u32::MAX (12 hours of 10 µs slots) must not be
        // clamped, or the slot would seem to have left long ago.
        let nanos = self
            .slot_width
            .as_nanos()
            .saturating_mul(u128::from(leaves));
        const NANOS: u128 = 1_000_000_000;
        let at = u64::try_from(nanos / NANOS)
            .ok()
            .map(|secs| Duration::new(secs, (nanos % NANOS) as u32))
            .and_then(|d| self.epoch.checked_add(d));
        match at {
            Some(at) => at.saturating_duration_since(now),
            None => Duration::MAX,
        }
    }

    /// What is in the window plus what is carried.
    pub(crate) fn used(&self) -> u64 {
        self.sum.saturating_add(self.carry)
    }

    /// Whether nothing is counted: a window in this state behaves as a new one.
    pub(crate) fn is_idle(&self) -> bool {
        self.sum == 0 && self.carry == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn fills_then_frees_a_second_later() {
        let start = Instant::now();
        let mut w = Window::new(SECOND, start);
        for _ in 0..5 {
            w.advance(start, 5);
            assert!(w.fits(1, 5));
            w.charge(1, 5);
        }
        assert!(!w.fits(1, 5));
        let wait = w.wait_for(start, 1, 5);
        assert!(
            wait > Duration::from_millis(990) && wait <= Duration::from_millis(1020),
            "{wait:?}"
        );
        w.advance(start + wait, 5);
        assert!(w.fits(5, 5));
    }

    #[test]
    fn big_costs_wait_for_an_empty_window_then_carry_debt() {
        let start = Instant::now();
        let mut w = Window::new(SECOND, start);
        w.charge(3, 10);
        assert!(!w.fits(25, 10));
        let wait = w.wait_for(start, 25, 10);
        let later = start + wait;
        w.advance(later, 10);
        assert!(w.fits(25, 10));
        w.charge(25, 10);
        assert_eq!(w.used(), 25);
        // 10 in the window, 15 owed: nothing fits for two more windows or so.
        assert!(!w.fits(1, 10));
        let wait = w.wait_for(later, 1, 10);
        assert!(wait >= Duration::from_secs(2), "{wait:?}");
    }

    #[test]
    fn credit_comes_back_from_carry_then_slot() {
        let start = Instant::now();
        let mut w = Window::new(SECOND, start);
        let at = w.charge(8, 10);
        w.credit(at, 5);
        assert_eq!(w.used(), 3);
        // A credit for a slot that left the window changes nothing.
        let later = start + 2 * SECOND;
        w.advance(later, 10);
        w.credit(at, 3);
        assert!(w.is_idle());
    }

    #[test]
    fn debt_drains_a_window_at_a_time_however_long_the_gap() {
        let start = Instant::now();
        let mut w = Window::new(SECOND, start);
        w.charge(1_000_000, 10);
        // Ten seconds later, a hundred windows of 10 have gone in: 999,900 still owed.
        w.advance(start + 10 * SECOND, 10);
        let owed = w.used();
        assert!((999_880..=999_910).contains(&owed), "{owed}");
        // A huge gap drains it all in a bounded number of steps.
        w.advance(start + 1_000_000 * SECOND, 10);
        assert!(w.is_idle() || w.used() <= 10, "{}", w.used());
    }

    #[test]
    fn still_limits_after_u32_max_slots() {
        // A 1 ms window has 10 µs slots: u32::MAX of them pass in under 12 hours (with the
        // default one second, in 497 days). A full window must still say how long to wait.
        let start = Instant::now();
        let window = Duration::from_millis(1);
        let mut w = Window::new(window, start);
        let later = start + Duration::from_secs(12 * 3600);
        w.advance(later, 5);
        assert!(w.fits(5, 5));
        w.charge(5, 5);
        assert!(!w.fits(1, 5));
        let wait = w.wait_for(later, 1, 5);
        assert!(
            !wait.is_zero() && wait <= window + window / SLOTS as u32,
            "{wait:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]

        /// Whatever the arrivals, no window of the width ever holds more than the limit
        /// (plus one cost above the limit, admitted into an empty window).
        #[test]
        fn never_over_the_limit_in_any_window(
            gaps in proptest::collection::vec(0u64..400, 1..300),
            costs in proptest::collection::vec(1u64..30, 300),
            limit in 5u64..100,
        ) {
            let start = Instant::now();
            let mut w = Window::new(SECOND, start);
            let mut now = start;
            let mut admitted: Vec<(Instant, u64)> = Vec::new();
            for (gap, cost) in gaps.iter().zip(costs.iter()) {
                now += Duration::from_millis(*gap);
                w.advance(now, limit);
                if w.fits(*cost, limit) {
                    w.charge(*cost, limit);
                    admitted.push((now, *cost));
                }
            }
            for (i, &(t, _)) in admitted.iter().enumerate() {
                let in_window: u64 = admitted[i..]
                    .iter()
                    .take_while(|(u, _)| *u < t + SECOND)
                    .map(|(_, c)| c)
                    .sum();
                let biggest = admitted[i..].iter().take_while(|(u, _)| *u < t + SECOND).map(|(_, c)| *c).max().unwrap_or(0);
                prop_assert!(in_window <= limit.max(biggest), "{in_window} > {limit}");
            }
        }
    }
}
