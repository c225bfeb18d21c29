//! Rate limits for log lines a caller can cause: refusals, NACKs, failed accepts. A flood of
//! them costs a counter increment each, and at most `burst` lines per period reach the log,
//! the next one saying how many were held back.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Lets `burst` events through per period and counts the ones held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            burst,
            window_start: None,
            in_window: 0,
            held_back: 0,
        }
    }

    /// `Some(events held back since the last one let through)` when this event may be logged.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.period => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.held_back))
        } else {
            self.held_back += 1;
            None
        }
    }

    /// Events held back since the last one let through.
    #[cfg(test)]
    pub(crate) fn held_back(&self) -> u64 {
        self.held_back
    }
}

/// A [`Throttle`] shared by tasks.
#[derive(Debug)]
pub(crate) struct SharedThrottle(Mutex<Throttle>);

impl SharedThrottle {
    pub(crate) fn new(period: Duration, burst: u32) -> Self {
        Self(Mutex::new(Throttle::new(period, burst)))
    }

    /// See [`Throttle::ready`].
    pub(crate) fn ready(&self) -> Option<u64> {
        self.lock().ready(Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, Throttle> {
        // A holder only updates counters: a panic leaves nothing half-written that matters.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// At most this many bytes of a caller's text go into a log line or an error message.
pub(crate) const MAX_LOGGED_BYTES: usize = 1024;

/// A caller's text for a log line: at most [`MAX_LOGGED_BYTES`] of it, control characters and
/// quotes escaped (a NACK cannot forge log lines), and how long it really was when cut.
pub(crate) struct CallerText<'a>(pub(crate) &'a str);

impl std::fmt::Display for CallerText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        let mut end = text.len().min(MAX_LOGGED_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "\"{}\"", text[..end].escape_debug())?;
        if end < text.len() {
            write!(f, "… ({} bytes)", text.len())?;
        }
        Ok(())
    }
}

/// `text` cut to at most [`MAX_LOGGED_BYTES`] (at a character boundary), marked when cut.
pub(crate) fn cut(mut text: String) -> String {
    if text.len() > MAX_LOGGED_BYTES {
        let mut end = MAX_LOGGED_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_a_burst_through_per_period_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(10), 2);
        assert_eq!(throttle.ready(start), Some(0));
        assert_eq!(throttle.ready(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(throttle.ready(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.held_back(), 3);
        assert_eq!(throttle.ready(start + Duration::from_secs(10)), Some(3));
        assert_eq!(throttle.ready(start + Duration::from_secs(11)), Some(0));
        assert_eq!(throttle.ready(start + Duration::from_secs(12)), None);
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_at_a_character_boundary() {
        assert_eq!(cut("short".to_owned()), "short");
        let long = cut("é".repeat(1000));
        assert!(
            long.ends_with('…') && long.len() <= MAX_LOGGED_BYTES + 3,
            "{}",
            long.len()
        );
    }

    #[test]
    fn caller_text_is_cut_and_escaped() {
        assert_eq!(CallerText("bad cert").to_string(), "\"bad cert\"");
        assert_eq!(
            CallerText("line\n2023-01-01 INFO forged\u{1b}[0m").to_string(),
            "\"line\\n2023-01-01 INFO forged\\u{1b}[0m\""
        );
        let long = "é".repeat(1000);
        let shown = CallerText(&long).to_string();
        assert!(shown.ends_with("… (2000 bytes)"), "{shown}");
        assert!(shown.len() < MAX_LOGGED_BYTES + 40, "{}", shown.len());
    }
}
