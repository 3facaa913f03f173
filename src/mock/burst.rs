//! The growth-rate ("burst") limit: a second may not admit more than twice the previous one,
//! above a floor.

/// Requests admitted in the current and the previous whole second of one model.
#[derive(Debug, Default)]
pub(super) struct BurstRule {
    second: u64,
    this_second: u32,
    last_second: u32,
}

impl BurstRule {
    /// Moves to whole second `second` (since the simulator was built).
    fn roll(&mut self, second: u64) {
        if second != self.second {
            self.last_second = if second == self.second + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = second;
        }
    }

    /// Whether one more request in `second` is over the limit of `floor`: beyond the first
    /// `floor` of the second, and beyond twice the previous second's.
    pub(super) fn exceeded(&mut self, second: u64, floor: Option<u32>) -> bool {
        self.roll(second);
        floor.is_some_and(|floor| {
            self.this_second >= floor && self.this_second >= 2 * self.last_second
        })
    }

    /// Counts an admitted request (after [`exceeded`](Self::exceeded) said no).
    pub(super) fn admit(&mut self) {
        self.this_second += 1;
    }
}
