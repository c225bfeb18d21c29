//! Go-style duration strings (`24h`, `90m`, `1h30m`, `1.5h`, `45s`, `500ms`).
//!
//! meshca's configuration is written in the same notation as FSM's and Istio's Helm values, so
//! the parser follows Go's `time.ParseDuration` — except that negative durations are refused,
//! since nothing in a CA's configuration can last less than nothing.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration: write a number with a unit, such as 24h, 90m or 45s")]
    Empty,
    /// A leading `-`.
    #[error("negative duration {input:?}: durations must be zero or more")]
    Negative {
        /// The string as given.
        input: String,
    },
    /// A number without a unit (`"10"`), which Go refuses too (only a bare `0` is allowed).
    #[error("missing unit in duration {input:?}: add one of h, m, s, ms, us, ns (e.g. {input}s)")]
    MissingUnit {
        /// The string as given.
        input: String,
    },
    /// A unit that is not one of Go's.
    #[error(
        "unknown unit {unit:?} in duration {input:?}: use h, m, s, ms, us or ns (days are not a unit: write 72h)"
    )]
    UnknownUnit {
        /// The string as given.
        input: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// Something that is not a number where one should be.
    #[error("invalid duration {input:?}: expected numbers with units, such as 1h30m or 1.5h")]
    Invalid {
        /// The string as given.
        input: String,
    },
    /// More than `u64::MAX` nanoseconds.
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The string as given.
        input: String,
    },
}

/// Parses a Go-style duration: a sequence of decimal numbers, each with an optional fraction and
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). A bare `0` is allowed, as in Go.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => {
            return Err(DurationError::Negative {
                input: input.to_owned(),
            });
        }
        None => s,
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid {
        input: input.to_owned(),
    };
    let overflow = || DurationError::Overflow {
        input: input.to_owned(),
    };

    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_dot.len());
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_num
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "" if !after_num.is_empty() => return Err(invalid()),
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                });
            }
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // The fraction, truncated to nanoseconds as Go does.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way a person would write it in configuration: `24h`, `1h30m`, `45s`,
/// `1m0.5s` is written `60500ms`. The output always parses back to the same duration.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let nanos = duration.as_nanos();
    const SEC: u128 = 1_000_000_000;
    if !nanos.is_multiple_of(SEC) {
        // Sub-second precision: a single unit keeps it exact and readable.
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = nanos / SEC;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 {
        let _ = write!(out, "{s}s");
    }
    out
}

/// Serde support: `#[serde(with = "meshca_provider::duration::serde_go")]`.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Serialises as a Go-style string.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    /// Deserialises from a Go-style string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn parses_go_examples() {
        let cases: &[(&str, Duration)] = &[
            ("24h", Duration::from_secs(24 * H)),
            ("90m", Duration::from_secs(90 * 60)),
            ("1h30m", Duration::from_secs(H + 30 * 60)),
            ("1.5h", Duration::from_secs(H + 30 * 60)),
            ("45s", Duration::from_secs(45)),
            ("500ms", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            (
                "2h45m30.25s",
                Duration::from_millis((2 * H + 45 * 60 + 30) * 1000 + 250),
            ),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            (" 10m ", Duration::from_secs(600)),
            ("87600h", Duration::from_secs(87_600 * H)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "parsing {text:?}");
        }
    }

    #[test]
    fn refuses_bad_input_with_a_specific_error() {
        type Check = fn(&DurationError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, DurationError::Empty)),
            ("   ", |e| matches!(e, DurationError::Empty)),
            ("-1h", |e| matches!(e, DurationError::Negative { .. })),
            ("10", |e| matches!(e, DurationError::MissingUnit { .. })),
            ("1h30", |e| matches!(e, DurationError::MissingUnit { .. })),
            (
                "3d",
                |e| matches!(e, DurationError::UnknownUnit { unit, .. } if unit == "d"),
            ),
            ("1 h", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("10H", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("h", |e| matches!(e, DurationError::Invalid { .. })),
            (".h", |e| matches!(e, DurationError::Invalid { .. })),
            ("1..5h", |e| matches!(e, DurationError::Invalid { .. })),
            ("abc", |e| matches!(e, DurationError::Invalid { .. })),
            ("99999999999999999999h", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("9999999999h", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
        ];
        for (text, is_expected) in cases {
            let err = parse_duration(text).expect_err(text);
            assert!(is_expected(&err), "{text:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [
            1,
            45,
            59,
            60,
            61,
            90 * 60,
            3600,
            5400,
            86_400,
            87_600 * 3600,
            3661,
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs}s");
        }
        for d in [
            Duration::from_millis(500),
            Duration::from_millis(60_500),
            Duration::from_micros(3),
            Duration::from_nanos(1),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }
}
