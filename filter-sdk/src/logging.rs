//! Logging to the broker's log (rate-limited there); natively, to stderr.
//!
//! Invariant: [`Level`] mirrors `wit/filter.wit`'s `level` one to one; a line printed
//! natively looks like one `weir filter test` prints (`[info] text`).

use crate::bindings;

/// Writes a line to the broker's log. There, per filter version, a line is logged only
/// when fewer than 10 were logged in the second before it (others are dropped and
/// counted) and is cut at 1024 bytes. Natively (tests), to stderr as `[info] text`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::weir::filter::host::log(level.into(), message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{}] {message}", level.as_str());
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

impl Level {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
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
