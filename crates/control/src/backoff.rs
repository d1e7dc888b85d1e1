//! Retry backoff: capped exponential delay with explicit jitter, as a pure function.
//!
//! ```text
//! raw     = base * 2^(attempt - 1)            (attempt 0 is treated as 1)
//! capped  = min(raw, max)
//! jittered = capped * (1 + jitter * (2 * sample - 1))     sample in [0, 1), supplied by the caller
//! delay   = min(jittered, max)                 (the cap applies after jitter)
//! ```
//!
//! The cap is applied after jitter, so a delay never exceeds `max`; once the exponential has reached
//! the cap, jitter can only shorten the delay (it stays in `[max * (1 - jitter), max]`), which still
//! spreads retries that failed together. The randomness is the caller's: pass a uniform sample in
//! `[0, 1)` (tests pass fixed values). Out-of-range or NaN samples are clamped, never a panic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Default first retry delay: 5 s (DESIGN §4).
pub const DEFAULT_BASE: Duration = Duration::from_secs(5);
/// Default cap on a retry delay: 5 min (DESIGN §4).
pub const DEFAULT_MAX: Duration = Duration::from_secs(300);
/// Default jitter: ±20 % (DESIGN §4).
pub const DEFAULT_JITTER: f64 = 0.2;

/// How long to wait before retrying a failed attempt.
///
/// In configuration it reads `{"baseSeconds": 5, "maxSeconds": 300, "jitter": 0.2}`; every field
/// is optional and unknown fields are errors. Call [`BackoffPolicy::validate`] once when loading it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BackoffPolicy {
    /// Delay before the first retry.
    #[serde(rename = "baseSeconds", with = "seconds")]
    pub base: Duration,
    /// No delay is longer than this, jitter included.
    #[serde(rename = "maxSeconds", with = "seconds")]
    pub max: Duration,
    /// Relative jitter in `[0, 1]`: 0.2 spreads a delay over ±20 %.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { base: DEFAULT_BASE, max: DEFAULT_MAX, jitter: DEFAULT_JITTER }
    }
}

impl BackoffPolicy {
    /// Checks that `base > 0`, `max >= base` and `0 <= jitter <= 1`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.base.is_zero() {
            return Err(Error::InvalidBackoff { field: "baseSeconds", message: "must be greater than 0".into() });
        }
        if self.max < self.base {
            return Err(Error::InvalidBackoff {
                field: "maxSeconds",
                message: format!(
                    "must be at least baseSeconds ({} s), got {} s",
                    self.base.as_secs_f64(),
                    self.max.as_secs_f64()
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidBackoff {
                field: "jitter",
                message: format!("must be between 0 and 1, got {}", self.jitter),
            });
        }
        Ok(())
    }
}

/// The delay before retrying after `attempt` attempts have failed (`attempt` is 1 after the first
/// failure; 0 is treated as 1). `jitter_sample` is a uniform sample in `[0, 1)` from the caller.
///
/// Never panics and never overflows, for any `attempt` up to `u32::MAX` and any policy; the result
/// is at most `policy.max`. A policy that fails [`BackoffPolicy::validate`] still gives a bounded
/// answer (jitter is clamped to `[0, 1]`, a `base` above `max` is capped).
///
/// ```
/// use std::time::Duration;
/// use agentplane_control::{BackoffPolicy, retry_delay};
///
/// let p = BackoffPolicy::default();
/// assert_eq!(retry_delay(1, &p, 0.5), Duration::from_secs(5)); // sample 0.5 = no jitter
/// assert_eq!(retry_delay(3, &p, 0.5), Duration::from_secs(20));
/// assert_eq!(retry_delay(1, &p, 0.0), Duration::from_secs(4)); // -20 %
/// assert_eq!(retry_delay(50, &p, 0.99), Duration::from_secs(300)); // capped, jitter included
/// ```
pub fn retry_delay(attempt: u32, policy: &BackoffPolicy, jitter_sample: f64) -> Duration {
    let max = policy.max.as_nanos();
    let capped = exponential_nanos(attempt, policy.base.as_nanos()).min(max);
    let factor = 1.0 + clamp_jitter(policy.jitter) * (2.0 * clamp_sample(jitter_sample) - 1.0);
    // `as` from f64 to u128 saturates (and maps NaN to 0); `factor` is finite and in [0, 2].
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let jittered = (capped as f64 * factor) as u128;
    nanos_to_duration(jittered.min(max))
}

/// When to retry: `now` plus [`retry_delay`]. Saturates at the latest representable time.
pub fn next_retry_at(now: DateTime<Utc>, attempt: u32, policy: &BackoffPolicy, jitter_sample: f64) -> DateTime<Utc> {
    let delay = retry_delay(attempt, policy, jitter_sample);
    chrono::Duration::from_std(delay).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `base * 2^(attempt-1)` in nanoseconds, saturating at `u128::MAX`.
fn exponential_nanos(attempt: u32, base: u128) -> u128 {
    let shift = attempt.saturating_sub(1);
    if base == 0 {
        0
    } else if shift < base.leading_zeros() {
        base << shift
    } else {
        u128::MAX
    }
}

fn clamp_jitter(j: f64) -> f64 {
    if j.is_nan() { 0.0 } else { j.clamp(0.0, 1.0) }
}

fn clamp_sample(s: f64) -> f64 {
    if s.is_nan() { 0.5 } else { s.clamp(0.0, 1.0) }
}

fn nanos_to_duration(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 1e9, so it fits a u32.
    let sub = u32::try_from(n % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// Serde for a [`Duration`] as a number of seconds (fractions allowed), rejecting negative, NaN
/// and infinite values.
mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 { s.serialize_u64(d.as_secs()) } else { s.serialize_f64(d.as_secs_f64()) }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| {
            serde::de::Error::custom(format!("expected a non-negative, finite number of seconds, got {v}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_from_base_until_the_cap() {
        let p = BackoffPolicy::default();
        let got: Vec<u64> = (1..=9).map(|a| retry_delay(a, &p, 0.5).as_secs()).collect();
        assert_eq!(got, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(0, &p, 0.5), secs(5), "attempt 0 is treated as the first");
    }

    #[test]
    fn jitter_spreads_plus_minus_twenty_percent() {
        let p = BackoffPolicy::default();
        assert_eq!(retry_delay(2, &p, 0.0), secs(8));
        assert_eq!(retry_delay(2, &p, 0.25), secs(9));
        assert_eq!(retry_delay(2, &p, 0.75), secs(11));
        // Just below 1: just below +20 %.
        let hi = retry_delay(2, &p, 0.999_999);
        assert!(hi > Duration::from_millis(11_999) && hi < secs(12), "{hi:?}");
    }

    #[test]
    fn cap_applies_after_jitter() {
        let p = BackoffPolicy::default();
        // 160 s * 1.2 = 192 s: below the cap, kept.
        assert_eq!(retry_delay(6, &p, 0.999_999_999).as_secs(), 191);
        // 300 s * 1.2 would be 360 s: capped to 300 s; jitter can only shorten it now.
        assert_eq!(retry_delay(7, &p, 0.999), secs(300));
        assert_eq!(retry_delay(7, &p, 0.0), secs(240));
        assert_eq!(retry_delay(u32::MAX, &p, 0.0), secs(240));
    }

    #[test]
    fn degenerate_inputs_are_bounded() {
        let p = BackoffPolicy::default();
        assert_eq!(retry_delay(1, &p, f64::NAN), secs(5));
        assert_eq!(retry_delay(1, &p, -3.0), secs(4));
        assert_eq!(retry_delay(1, &p, 7.0), secs(6));
        let wild = BackoffPolicy { base: Duration::MAX, max: Duration::MAX, jitter: f64::INFINITY };
        assert_eq!(retry_delay(u32::MAX, &wild, 0.9), Duration::MAX);
        let zero = BackoffPolicy { base: Duration::ZERO, max: secs(1), jitter: 0.2 };
        assert_eq!(retry_delay(10, &zero, 0.9), Duration::ZERO);
        let inverted = BackoffPolicy { base: secs(10), max: secs(1), jitter: 0.0 };
        assert_eq!(retry_delay(1, &inverted, 0.5), secs(1));
    }

    #[test]
    fn next_retry_at_adds_the_delay_and_saturates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let p = BackoffPolicy::default();
        assert_eq!(next_retry_at(now, 2, &p, 0.5), Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 10).unwrap());
        let huge = BackoffPolicy { base: Duration::MAX, max: Duration::MAX, jitter: 0.0 };
        assert_eq!(next_retry_at(now, 1, &huge, 0.5), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn serde_uses_seconds_and_defaults() {
        let p: BackoffPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, BackoffPolicy::default());
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::json!({"baseSeconds": 5, "maxSeconds": 300, "jitter": 0.2})
        );
        let p: BackoffPolicy = serde_json::from_str(r#"{"baseSeconds": 0.5, "maxSeconds": 60}"#).unwrap();
        assert_eq!(p.base, Duration::from_millis(500));
        assert_eq!(p.max, secs(60));
        assert_eq!(serde_json::to_value(p).unwrap()["baseSeconds"], serde_json::json!(0.5));
        let err = serde_json::from_str::<BackoffPolicy>(r#"{"baseSeconds": -1}"#).unwrap_err();
        assert!(err.to_string().contains("non-negative"), "{err}");
        let err = serde_json::from_str::<BackoffPolicy>(r#"{"base": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_names_the_field() {
        assert_eq!(BackoffPolicy::default().validate(), Ok(()));
        let bad = |p: BackoffPolicy| match p.validate() {
            Err(Error::InvalidBackoff { field, .. }) => field,
            other => panic!("expected InvalidBackoff, got {other:?}"),
        };
        assert_eq!(bad(BackoffPolicy { base: Duration::ZERO, ..Default::default() }), "baseSeconds");
        assert_eq!(bad(BackoffPolicy { max: secs(1), ..Default::default() }), "maxSeconds");
        assert_eq!(bad(BackoffPolicy { jitter: 1.5, ..Default::default() }), "jitter");
        assert_eq!(bad(BackoffPolicy { jitter: f64::NAN, ..Default::default() }), "jitter");
    }

    fn policy() -> impl Strategy<Value = BackoffPolicy> {
        (1u64..=u64::MAX / 4, 0u64..=u64::MAX / 2, 0.0f64..=1.0).prop_map(|(base_ms, extra_ms, jitter)| {
            let base = Duration::from_millis(base_ms);
            BackoffPolicy { base, max: base.saturating_add(Duration::from_millis(extra_ms)), jitter }
        })
    }

    proptest! {
        #[test]
        fn within_bounds(p in policy(), attempt in any::<u32>(), sample in 0.0f64..1.0) {
            let d = retry_delay(attempt, &p, sample);
            prop_assert!(d <= p.max);
            // Lower bound: the un-jittered capped delay minus the jitter fraction (1 ns of rounding).
            let shift = attempt.saturating_sub(1);
            let base = p.base.as_nanos();
            let raw = if shift < base.leading_zeros() { base << shift } else { u128::MAX };
            let capped = raw.min(p.max.as_nanos());
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let low = (capped as f64 * (1.0 - p.jitter)) as u128;
            prop_assert!(d.as_nanos() + 1 >= low.saturating_sub(low / 1_000_000_000_000), "{d:?} < {low}");
        }

        #[test]
        fn monotone_in_attempt_for_a_fixed_sample(p in policy(), attempt in 0u32..200, sample in 0.0f64..1.0) {
            prop_assert!(retry_delay(attempt, &p, sample) <= retry_delay(attempt + 1, &p, sample));
        }

        #[test]
        fn exact_doubling_before_the_cap_without_jitter(base_ms in 1u64..10_000, attempt in 1u32..20) {
            let p = BackoffPolicy { base: Duration::from_millis(base_ms), max: Duration::MAX, jitter: 0.0 };
            prop_assert_eq!(retry_delay(attempt + 1, &p, 0.3), retry_delay(attempt, &p, 0.3) * 2);
        }

        #[test]
        fn no_overflow_near_u32_max(p in policy(), attempt in (u32::MAX - 1000)..=u32::MAX, sample in any::<f64>()) {
            let d = retry_delay(attempt, &p, sample);
            prop_assert!(d <= p.max);
            let _ = next_retry_at(DateTime::<Utc>::MAX_UTC, attempt, &p, sample);
        }
    }
}
