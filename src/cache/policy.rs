//! When to renew and when to retry: pure functions of a certificate's validity, the settings
//! and a random draw, so every edge is a table test.

use std::time::{Duration, SystemTime};

/// Default fraction of the lifetime at which a certificate is renewed (`renewal.fraction`).
pub const DEFAULT_RENEW_FRACTION: f64 = 0.5;
/// Default spread of renewals, as a fraction of the lifetime (`renewal.jitter`).
pub const DEFAULT_JITTER_FRACTION: f64 = 0.1;
/// Default latest renewal before expiry (`renewal.floor`), as documented in the README.
pub const DEFAULT_RENEW_FLOOR: Duration = Duration::from_secs(60);
/// Default first retry delay after a failed issuance (`renewal.backoffInitial`).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default longest retry delay (`renewal.backoffMax`).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// When certificates are renewed, relative to their real validity period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewPolicy {
    /// Renew at this fraction of the lifetime (0.5: halfway from NotBefore to NotAfter).
    pub fraction: f64,
    /// Spread renewals uniformly by up to ± this fraction of the lifetime.
    pub jitter_fraction: f64,
    /// Never renew later than this long before NotAfter. For lifetimes shorter than twice the
    /// floor, the floor shrinks to half the lifetime, so a short certificate is still used.
    pub floor: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            fraction: DEFAULT_RENEW_FRACTION,
            jitter_fraction: DEFAULT_JITTER_FRACTION,
            floor: DEFAULT_RENEW_FLOOR,
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// `jitter` is a uniform random draw in `[-1, 1]` (values outside are clamped); the result is
/// `not_before + lifetime × (fraction + jitter × jitter_fraction)`, clamped into
/// `[not_before, not_after − floor]`. It may lie in the past: [`renew_in`] turns that into
/// "now". A zero or negative lifetime renews at `not_before`, i.e. immediately.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    settings: &RenewPolicy,
    jitter: f64,
) -> SystemTime {
    let lifetime = match not_after.duration_since(not_before) {
        Ok(lifetime) if !lifetime.is_zero() => lifetime,
        _ => return not_before.min(not_after),
    };
    let fraction = finite_or(settings.fraction, 0.5).clamp(0.0, 1.0);
    let spread = finite_or(settings.jitter_fraction, 0.0).clamp(0.0, 1.0);
    let point = (fraction + spread * finite_or(jitter, 0.0).clamp(-1.0, 1.0)).clamp(0.0, 1.0);
    let target = not_before + lifetime.mul_f64(point);
    let latest = not_after - settings.floor.min(lifetime / 2);
    target.min(latest)
}

/// How long from `now` until the renewal [`renew_at`] picks; zero when that time has passed.
pub fn renew_in(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    settings: &RenewPolicy,
    jitter: f64,
) -> Duration {
    renew_at(not_before, not_after, settings, jitter)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// Exponential backoff for a key whose issuance keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Upper bound on any delay.
    pub max: Duration,
}

/// No retry comes sooner than this, whatever the settings say, so a zero setting cannot spin.
const MIN_RETRY: Duration = Duration::from_millis(10);
/// The retry that must happen before the last good certificate expires is made this long
/// before NotAfter.
const BEFORE_EXPIRY: Duration = Duration::from_secs(1);

/// How long to wait before attempt number `failures + 1`, after `failures` (≥ 1) failures.
///
/// The base delay is `initial × 2^(failures−1)`; `jitter` in `[0, 1]` adds up to a quarter of
/// it (so successive delays still strictly grow), and the result is capped at `max`. When the
/// last good certificate is still valid (`not_after`) and the delay would pass its expiry, the
/// retry is moved to just before expiry: a failing backend never lets a certificate lapse
/// without one more try.
pub fn retry_in(
    now: SystemTime,
    failures: u32,
    backoff: &Backoff,
    jitter: f64,
    not_after: Option<SystemTime>,
) -> Duration {
    let initial = backoff.initial.max(MIN_RETRY);
    let max = backoff.max.max(initial);
    let exponent = failures.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1_u32 << exponent).min(max);
    let extra = base.mul_f64(finite_or(jitter, 0.0).clamp(0.0, 1.0) / 4.0);
    let delay = base.saturating_add(extra).min(max);
    let Some(remaining) = not_after.and_then(|end| end.duration_since(now).ok()) else {
        return delay;
    };
    if delay > remaining && remaining > BEFORE_EXPIRY {
        return remaining - BEFORE_EXPIRY;
    }
    delay
}

/// The share of the time left on the certificate being renewed that one issuance may take.
pub const ISSUE_TIMEOUT_FRACTION: f64 = 0.25;
/// No issuance is given less than this, however little time its certificate has left (unless
/// `renewal.issueTimeout` itself is shorter).
pub const MIN_ISSUE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one issuance may take: `renewal.issueTimeout` (`configured`), but no more than
/// [`ISSUE_TIMEOUT_FRACTION`] of the time left before `not_after`, the NotAfter of the
/// certificate being renewed, and no less than [`MIN_ISSUE_TIMEOUT`]. A first issuance, or the
/// renewal of a certificate that has already expired, has no window to fit: `configured`.
///
/// With 1-minute certificates renewed halfway, a 30 s timeout would otherwise spend the whole
/// time left on one hung call; bounded, a hung call leaves room for the retries.
pub fn issue_timeout_for(
    now: SystemTime,
    not_after: Option<SystemTime>,
    configured: Duration,
) -> Duration {
    let Some(left) = not_after.and_then(|end| end.duration_since(now).ok()) else {
        return configured;
    };
    if left.is_zero() {
        return configured;
    }
    let share = left.mul_f64(ISSUE_TIMEOUT_FRACTION).max(MIN_ISSUE_TIMEOUT);
    configured.min(share)
}

/// The window over which the renewals an outage left waiting in backoff are retried once the
/// provider is seen working again (its health check passes, or a failing renewal succeeds).
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(2);

/// How long after the provider is seen healthy again a key waiting in backoff is retried:
/// `jitter` (a uniform draw in `[0, 1]`, clamped) of `window`, so that the keys an outage left
/// waiting do not all reach the backend in the same instant.
pub fn recovery_delay(window: Duration, jitter: f64) -> Duration {
    window.mul_f64(finite_or(jitter, 0.0).clamp(0.0, 1.0))
}

fn finite_or(value: f64, default: f64) -> f64 {
    if value.is_finite() { value } else { default }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy(fraction: f64, jitter_fraction: f64, floor: Duration) -> RenewPolicy {
        RenewPolicy {
            fraction,
            jitter_fraction,
            floor,
        }
    }

    #[test]
    fn renewal_point_table() {
        let day = 24 * 3600;
        let five_min = Duration::from_secs(300);
        #[rustfmt::skip]
        let cases: &[(&str, RenewPolicy, u64, u64, f64, SystemTime)] = &[
            ("half of a day", policy(0.5, 0.1, five_min), 0, day, 0.0, t(day / 2)),
            ("jitter +1 adds 10%", policy(0.5, 0.1, five_min), 0, day, 1.0, t(day * 6 / 10)),
            ("jitter -1 takes 10%", policy(0.5, 0.1, five_min), 0, day, -1.0, t(day * 4 / 10)),
            ("jitter is clamped to ±1", policy(0.5, 0.1, five_min), 0, day, -7.0, t(day * 4 / 10)),
            ("offset by NotBefore", policy(0.5, 0.0, five_min), 100, 100 + day, 0.3, t(100 + day / 2)),
            ("other fraction", policy(0.8, 0.0, Duration::from_secs(100)), 0, 1000, 0.0, t(800)),
            ("floor clamps a late fraction", policy(0.999, 0.0, five_min), 0, day, 0.0, t(day - 300)),
            ("floor clamps jitter", policy(0.9, 0.1, HOUR), 0, day, 1.0, t(day - 3600)),
            ("floor shrinks to half a short lifetime", policy(0.9, 0.0, HOUR), 0, 600, 0.0, t(300)),
            ("zero lifetime renews at once", policy(0.5, 0.1, five_min), 50, 50, 0.5, t(50)),
            ("inverted validity renews at once", policy(0.5, 0.1, five_min), 80, 50, 0.5, t(50)),
            ("fraction above 1 is clamped", policy(3.0, 0.0, Duration::ZERO), 0, 1000, 0.0, t(1000)),
            ("NaN settings fall back", policy(f64::NAN, f64::NAN, Duration::ZERO), 0, 1000, f64::NAN, t(500)),
        ];
        for (name, settings, nb, na, jitter, expected) in cases {
            let got = renew_at(t(*nb), t(*na), settings, *jitter);
            // Float arithmetic on the lifetime may be off by nanoseconds, never more.
            let error = got
                .duration_since(*expected)
                .or_else(|_| expected.duration_since(got))
                .unwrap();
            assert!(
                error < Duration::from_millis(1),
                "{name}: {got:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn jittered_renewals_stay_within_the_spread() {
        let settings = RenewPolicy::default();
        let (nb, na) = (t(0), t(24 * 3600));
        for i in 0..=200 {
            let jitter = -1.0 + f64::from(i) / 100.0;
            let at = renew_at(nb, na, &settings, jitter);
            let offset = at.duration_since(nb).unwrap().as_secs_f64() / (24.0 * 3600.0);
            assert!(
                (0.4 - 1e-9..=0.6 + 1e-9).contains(&offset),
                "{jitter} -> {offset}"
            );
        }
    }

    #[test]
    fn renewal_in_the_past_is_due_now() {
        let settings = RenewPolicy::default();
        // Issued 20h ago for 24h: the halfway point is 8h behind us.
        let now = t(20 * 3600);
        assert_eq!(
            renew_in(now, t(0), t(24 * 3600), &settings, 0.0),
            Duration::ZERO
        );
        // Already expired.
        assert_eq!(
            renew_in(t(99 * 3600), t(0), t(24 * 3600), &settings, 0.0),
            Duration::ZERO
        );
        // Fresh: twelve hours to go.
        assert_eq!(
            renew_in(t(0), t(0), t(24 * 3600), &settings, 0.0),
            12 * HOUR
        );
    }

    #[test]
    fn retries_grow_and_are_capped() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let delays: Vec<_> = (1..=10)
            .map(|n| retry_in(t(0), n, &backoff, 0.0, None).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        for n in 1..40 {
            let low = retry_in(t(0), n, &backoff, 0.0, None);
            let high = retry_in(t(0), n, &backoff, 1.0, None);
            let next_low = retry_in(t(0), n + 1, &backoff, 0.0, None);
            assert!(low <= high && high <= backoff.max, "attempt {n}");
            assert!(high < next_low || next_low == backoff.max, "attempt {n}");
        }
        assert_eq!(
            retry_in(t(0), 3, &backoff, 1.0, None),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_retry_is_made_before_the_last_good_certificate_expires() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: HOUR,
        };
        // 2048 s of backoff, but the certificate expires in 600 s: try at 599 s.
        let expiry = Some(t(600));
        assert_eq!(
            retry_in(t(0), 12, &backoff, 0.0, expiry),
            Duration::from_secs(599)
        );
        // Within the last second, or already expired: the normal backoff applies.
        assert_eq!(
            retry_in(t(600), 2, &backoff, 0.0, expiry),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_in(t(700), 2, &backoff, 0.0, expiry),
            Duration::from_secs(2)
        );
        // A short delay is not stretched.
        assert_eq!(
            retry_in(t(0), 1, &backoff, 0.0, expiry),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn zero_settings_cannot_spin() {
        let backoff = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(retry_in(t(0), 1, &backoff, 1.0, None), MIN_RETRY);
        assert_eq!(retry_in(t(0), u32::MAX, &backoff, 1.0, None), MIN_RETRY);
    }

    #[test]
    fn the_issue_timeout_fits_the_renewal_window() {
        let now = t(0);
        let configured = Duration::from_secs(30);
        let at = |secs| Some(now + Duration::from_secs(secs));
        // First issuance, or an expired certificate: nothing to fit.
        assert_eq!(issue_timeout_for(now, None, configured), configured);
        assert_eq!(issue_timeout_for(now, Some(now), configured), configured);
        assert_eq!(issue_timeout_for(t(10), at(5), configured), configured);
        // A day-long certificate halfway: the configured timeout.
        assert_eq!(
            issue_timeout_for(now, at(12 * 3600), configured),
            configured
        );
        // A 1-minute certificate renewed with 30 s left: a quarter of that.
        assert_eq!(
            issue_timeout_for(now, at(30), configured),
            Duration::from_millis(7500)
        );
        // Close to expiry: the floor.
        assert_eq!(issue_timeout_for(now, at(4), configured), MIN_ISSUE_TIMEOUT);
        // Never longer than configured, even when that is below the floor.
        let short = Duration::from_secs(1);
        assert_eq!(issue_timeout_for(now, at(4), short), short);
        assert_eq!(issue_timeout_for(now, at(3600), short), short);
    }

    #[test]
    fn recovery_delays_spread_over_the_window() {
        let window = Duration::from_secs(2);
        assert_eq!(recovery_delay(window, 0.0), Duration::ZERO);
        assert_eq!(recovery_delay(window, 0.5), Duration::from_secs(1));
        assert_eq!(recovery_delay(window, 1.0), window);
        assert_eq!(recovery_delay(window, 7.0), window);
        assert_eq!(recovery_delay(window, f64::NAN), Duration::ZERO);
    }
}

#[cfg(test)]
mod backdating_tests {
    use super::*;

    /// A 20s certificate back-dated by 60s, received now: measured from its NotBefore it is
    /// already past its renewal point; measured from its receipt (what the worker passes) it is
    /// renewed about 10s from now.
    #[test]
    fn back_dated_short_certificates_are_not_renewed_at_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = now - Duration::from_secs(60);
        let not_after = now + Duration::from_secs(20);
        let policy = RenewPolicy {
            floor: Duration::from_secs(2),
            ..RenewPolicy::default()
        };
        assert_eq!(
            renew_in(now, not_before, not_after, &policy, 0.0),
            Duration::ZERO
        );
        let from_receipt = renew_in(now, not_before.max(now), not_after, &policy, 0.0);
        assert_eq!(from_receipt, Duration::from_secs(10));
        for jitter in [-1.0, 1.0] {
            let delay = renew_in(now, not_before.max(now), not_after, &policy, jitter);
            assert!(
                (Duration::from_secs(8)..=Duration::from_secs(12)).contains(&delay),
                "{delay:?}"
            );
        }
    }
}
