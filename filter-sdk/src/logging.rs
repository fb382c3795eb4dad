//! Logging to the broker's log (rate-limited there); natively, to stderr.
//!
//! Invariant: [`Level`] mirrors `wit/filter.wit`'s `level` one to one.

use crate::bindings;

/// Writes a line to the broker's log (rate-limited there). Natively, to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::weir::filter::host::log(level.into(), message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Severity of a [`log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl From<Level> for bindings::weir::filter::types::Level {
    fn from(l: Level) -> Self {
        use bindings::weir::filter::types::Level as W;
        match l {
            Level::Trace => W::Trace,
            Level::Debug => W::Debug,
            Level::Info => W::Info,
            Level::Warn => W::Warn,
            Level::Error => W::Error,
        }
    }
}
