//! Time as whole seconds since the epoch, the precision `metav1.Time` keeps
//! on the wire, and Go-style durations (`30s`, `5m`, `1h30m`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::{Error, Result};

/// Seconds since the epoch of a `Time` (sub-second part dropped).
pub fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

/// The `Time` of a second since the epoch (saturating at jiff's range, which
/// spans years -9999 to 9999 and is never reached by real clocks).
pub fn time(secs: i64) -> Time {
    let ts = Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    Time(ts)
}

/// Seconds of a Go-style duration: one or more `<digits><s|m|h>`.
pub fn parse_duration(text: &str) -> Result<i64> {
    let bad = || Error::InvalidDuration(text.to_string());
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: i64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").expect("d"), 30);
        assert_eq!(parse_duration("5m").expect("d"), 300);
        assert_eq!(parse_duration("1h30m").expect("d"), 5400);
        assert_eq!(parse_duration("1m1s").expect("d"), 61);
        for bad in ["", "5", "m", "5d", "1h 30m", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_round_trips_whole_seconds() {
        let t = time(1_800_000_000);
        assert_eq!(secs(&t), 1_800_000_000);
        let json = serde_json::to_string(&t).expect("json");
        let back: Time = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t);
    }
}
