//! Keeps the messages whose body matches a regular expression (or, with `invert=true`,
//! those whose body does not).
//!
//! # Parameters
//!
//! - `pattern` (required, non-empty): the regular expression, in the syntax of the Rust
//!   [`regex`] crate. It matches anywhere in the body unless anchored (`^...$`); flags go
//!   inline, e.g. `(?i)` for case-insensitive, `(?s)` for `.` to match newlines. A pattern
//!   that does not parse, or that compiles to more than 1 MiB, fails `init` with the regex
//!   crate's message.
//! - `invert` (optional flag, default `false`): keep the messages that do *not* match.
//!
//! # Bodies
//!
//! Bodies are matched as bytes, so they need not be UTF-8, and nothing is decoded or
//! copied per message. In the default Unicode mode, `.`, classes and literals match UTF-8
//! encoded characters: bytes that are not valid UTF-8 match nothing but byte-oriented
//! escapes, e.g. `(?-u:\xFF)`. A message without a body (which the broker does not send,
//! since this filter asks for bodies) is never kept, whatever `invert` says.
//!
//! Matching memory is bounded: the compiled pattern is capped at 1 MiB and the lazy
//! DFA's cache at 1 MiB, so a pathological pattern fails at upload instead of exhausting
//! the filter's memory.

use regex::bytes::{Regex, RegexBuilder};
use weir_filter_sdk::{Filter, Message, ParamError, Params};

/// Cap on the compiled pattern's heap size, bytes.
pub const SIZE_LIMIT: usize = 1 << 20;
/// Cap on the lazy DFA's cache, bytes (beyond it the matcher falls back to slower engines
/// rather than growing).
pub const DFA_SIZE_LIMIT: usize = 1 << 20;

/// The filter.
#[derive(Debug, Clone)]
pub struct BodyRegex {
    regex: Regex,
    invert: bool,
}

impl BodyRegex {
    /// Compiles `pattern` under this filter's limits.
    pub fn compile(pattern: &str) -> Result<Regex, ParamError> {
        if pattern.is_empty() {
            return Err(ParamError::new(
                "parameter \"pattern\": is empty (it would match every body)",
            ));
        }
        RegexBuilder::new(pattern)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => ParamError::new(format!(
                    "parameter \"pattern\": compiles to more than the filter's {limit}-byte \
                     limit; simplify it (large counted repetitions such as {{1000}} and \
                     Unicode classes repeated many times are the usual cause)"
                )),
                other => ParamError::new(format!("parameter \"pattern\": {other}")),
            })
    }
}

impl Filter for BodyRegex {
    const NEEDS_BODY: bool = true;

    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&["pattern", "invert"])?;
        let regex = Self::compile(params.require("pattern")?)?;
        let invert = params.flag("invert", false)?;
        Ok(BodyRegex { regex, invert })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        match msg.body() {
            Some(body) => self.regex.is_match(body) != self.invert,
            None => false,
        }
    }
}

weir_filter_sdk::export_filter!(BodyRegex);

#[cfg(test)]
mod tests {
    use weir_filter_sdk::testing::{TestMessage, run};

    use super::*;

    fn bodies(bodies: &[&[u8]]) -> Vec<TestMessage> {
        bodies.iter().map(|b| TestMessage::new().body(*b)).collect()
    }

    #[test]
    fn matches_and_inverts() {
        let msgs = bodies(&[b"level=ERROR disk full", b"level=INFO ok", b"", b"error: x"]);
        let kept = run::<BodyRegex>(&[("pattern", "ERROR|WARN")], &msgs).unwrap();
        assert_eq!(kept, [true, false, false, false]);
        let kept = run::<BodyRegex>(&[("pattern", "(?i)error")], &msgs).unwrap();
        assert_eq!(kept, [true, false, false, true]);
        let kept = run::<BodyRegex>(&[("pattern", "(?i)error"), ("invert", "true")], &msgs);
        assert_eq!(kept.unwrap(), [false, true, true, false]);
        let kept = run::<BodyRegex>(&[("pattern", "^level="), ("invert", "no")], &msgs);
        assert_eq!(kept.unwrap(), [true, true, false, false]);
        // Anchors cover the whole body.
        let kept = run::<BodyRegex>(&[("pattern", "^$")], &msgs).unwrap();
        assert_eq!(kept, [false, false, true, false]);
    }

    #[test]
    fn unicode_and_bytes() {
        let msgs = bodies(&[
            "prix: 12 €".as_bytes(),
            "Ωmega".as_bytes(),
            b"\xff\xfe binary ok",
            b"\xff",
        ]);
        // Unicode classes work on UTF-8 text.
        let kept = run::<BodyRegex>(&[("pattern", r"\d+ \p{Sc}")], &msgs).unwrap();
        assert_eq!(kept, [true, false, false, false]);
        let kept = run::<BodyRegex>(&[("pattern", r"^\w")], &msgs).unwrap();
        assert_eq!(kept, [true, true, false, false]);
        // Non-UTF-8 bodies are still searched; raw bytes need (?-u).
        let kept = run::<BodyRegex>(&[("pattern", "binary")], &msgs).unwrap();
        assert_eq!(kept, [false, false, true, false]);
        let kept = run::<BodyRegex>(&[("pattern", r"(?-u:^\xFF)")], &msgs).unwrap();
        assert_eq!(kept, [false, false, true, true]);
        let kept = run::<BodyRegex>(&[("pattern", "^.")], &msgs).unwrap();
        assert_eq!(kept, [true, true, false, false]);
    }

    #[test]
    fn bad_params() {
        let msgs = bodies(&[b"x"]);
        let e = run::<BodyRegex>(&[], &msgs).unwrap_err();
        assert_eq!(e, "missing parameter \"pattern\"");
        let e = run::<BodyRegex>(&[("pattern", "")], &msgs).unwrap_err();
        assert!(e.starts_with("parameter \"pattern\": is empty"), "{e}");
        let e = run::<BodyRegex>(&[("pattern", "(abc")], &msgs).unwrap_err();
        assert!(
            e.starts_with("parameter \"pattern\": regex parse error"),
            "{e}"
        );
        assert!(e.contains("unclosed group"), "{e}");
        let e = run::<BodyRegex>(&[("pattern", "x"), ("invert", "maybe")], &msgs).unwrap_err();
        assert!(
            e.contains("parameter \"invert\": expected true or false"),
            "{e}"
        );
        let e = run::<BodyRegex>(&[("pattern", "x"), ("inverse", "1")], &msgs).unwrap_err();
        assert!(e.contains("unknown parameter \"inverse\" (this filter takes: pattern, invert)"));
    }

    #[test]
    fn pathological_patterns_fail_init() {
        for pattern in [r"\w{1000}", "(a{1000}){1000}", r"(?:\pL{50}){50}"] {
            let e = BodyRegex::compile(pattern).unwrap_err().0;
            assert!(e.contains("1048576-byte limit"), "{pattern}: {e}");
        }
        // Everyday patterns fit comfortably.
        for pattern in [
            r"\w+@\w+\.com",
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}",
            r#"(?i)"status"\s*:\s*"(failed|error)""#,
            r"\p{Greek}+",
            r"[[:alpha:]]{1,20}",
        ] {
            assert!(BodyRegex::compile(pattern).is_ok(), "{pattern}");
        }
    }
}
