//! Durations in resource specs, written the way people say them: `250ms`, `5s`, `1m30s`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration parsed from a humantime string (`"30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like 250ms, 5s or 1m: {e}"))
        })
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

pub fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

pub fn millis(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}
