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

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
