//! The units one node holds for one (limit, key), tagged with the window they belong to.
//!
//! The window (its end, in whole seconds) and the count share one atomic word, so taking a
//! unit, adding a grant, dropping a finished window's units and giving a unit back are each a
//! single compare-and-swap: a unit can never be taken from, added to or counted in another
//! window than its own, whatever runs in between. (With a separate window field, a request
//! could take a unit of the old window just as a grant switched to the new one, and count it
//! there, or a refund could put an old unit into the new window.)

use std::sync::atomic::{AtomicU64, Ordering};

/// Most units a node holds at once for one key (the count is 32 bits of the word).
pub const MAX_UNITS: u64 = u32::MAX as u64;

#[derive(Default)]
pub struct WindowUnits(AtomicU64);

fn pack(end_s: u32, units: u32) -> u64 {
    ((end_s as u64) << 32) | units as u64
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// The tag of the window ending at `end_ms` (window ends are whole seconds; the tag lasts
/// until 2106).
fn tag(end_ms: u64) -> u32 {
    (end_ms / 1000).min(u32::MAX as u64) as u32
}

impl WindowUnits {
    fn update(&self, f: impl Fn(u32, u32) -> Option<(u32, u32)>) -> Result<(u32, u32), (u32, u32)> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (w, n) = unpack(v);
                f(w, n).map(|(w, n)| pack(w, n))
            })
            .map(unpack)
            .map_err(unpack)
    }

    /// End (unix ms) of the window the units belong to; 0 before the first grant.
    pub fn window_end_ms(&self) -> u64 {
        unpack(self.0.load(Ordering::Acquire)).0 as u64 * 1000
    }

    pub fn units(&self) -> u64 {
        unpack(self.0.load(Ordering::Acquire)).1 as u64
    }

    /// Takes one unit; returns its window's end and how many there were.
    pub fn take(&self) -> Option<(u64, u64)> {
        self.update(|w, n| (n > 0).then(|| (w, n - 1)))
            .ok()
            .map(|(w, n)| (w as u64 * 1000, n as u64))
    }

    /// Adds `n` units of the window ending at `end_ms`: to the units of that window, or in
    /// place of those of an earlier window (which are dropped). Units of a window older than
    /// the held one are dropped. Returns whether they were taken in.
    pub fn grant(&self, end_ms: u64, n: u64) -> bool {
        let (t, n) = (tag(end_ms), n.min(MAX_UNITS) as u32);
        self.update(|w, have| {
            if w == t {
                Some((w, have.saturating_add(n)))
            } else if t > w {
                Some((t, n))
            } else {
                None
            }
        })
        .is_ok()
    }

    /// Starts the window ending at `end_ms` with `n` units if it is later than the held one
    /// (per-node `local` windows); returns whether it did.
    pub fn open(&self, end_ms: u64, n: u64) -> bool {
        let (t, n) = (tag(end_ms), n.min(MAX_UNITS) as u32);
        self.update(|w, _| (t > w).then_some((t, n))).is_ok()
    }

    /// Gives one unit back to the window ending at `end_ms`, if the units still belong to it.
    pub fn give_back(&self, end_ms: u64) -> bool {
        let t = tag(end_ms);
        self.update(|w, n| (w == t).then(|| (w, n.saturating_add(1))))
            .is_ok()
    }

    /// Drops the units when their window has ended at `now_ms`.
    pub fn expire(&self, now_ms: u64) {
        let _ = self.update(|w, n| (n > 0 && w as u64 * 1000 <= now_ms).then_some((w, 0)));
    }

    /// Takes every unit of the window ending at `end_ms` (none if the units belong to
    /// another window); returns how many.
    pub fn drain(&self, end_ms: u64) -> u64 {
        let t = tag(end_ms);
        self.update(|w, n| (w == t && n > 0).then_some((w, 0)))
            .map_or(0, |(_, n)| n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_belong_to_their_window_through_every_operation() {
        let u = WindowUnits::default();
        assert_eq!((u.window_end_ms(), u.take()), (0, None));
        assert!(u.grant(20_000, 2));
        assert_eq!(u.take(), Some((20_000, 2)));
        // A newer window replaces the units; an older one is ignored.
        assert!(u.grant(30_000, 5));
        assert!(!u.grant(20_000, 9));
        assert_eq!((u.window_end_ms(), u.units()), (30_000, 5));
        // A unit of the old window cannot come back into the new one.
        assert!(!u.give_back(20_000));
        assert!(u.give_back(30_000));
        assert_eq!(u.units(), 6);
        u.expire(29_999);
        assert_eq!(u.units(), 6);
        u.expire(30_000);
        assert_eq!((u.units(), u.window_end_ms()), (0, 30_000));
        assert!(u.grant(30_000, 3) && u.drain(20_000) == 0 && u.drain(30_000) == 3);
        assert!(u.grant(40_000, u64::MAX));
        assert_eq!(u.units(), MAX_UNITS);
    }
}
