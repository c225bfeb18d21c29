//! Wall-clock time behind a trait, so tests can move time without sleeping.

use std::fmt::Debug;
use std::time::SystemTime;

/// A source of the current wall-clock time.
///
/// The daemon anchors its clock to tokio's (pausable) clock; providers that stamp validity
/// periods themselves (Tresor) take a `Clock` so that tests under paused time see certificates
/// issued "now" in virtual time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// `at` in RFC 3339, UTC (`2026-12-07T15:08:30.123456789Z`), for logs and messages; a time
/// outside what RFC 3339 can write is shown as its `Debug` form.
pub fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
