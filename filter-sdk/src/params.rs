//! The upload's parameters ([`Params`]) and the error a filter rejects them with
//! ([`ParamError`]).
//!
//! Invariant: a parameter error's text is what the uploader sees, so each names the
//! parameter and what was wrong with it.

use std::fmt;
use std::str::FromStr;

/// The parameters given at upload (`--param K=V`), in order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

/// A parameter that is missing, unknown or malformed. Its text is what the uploader sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamError {}

impl ParamError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Every parameter, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `name` (a parameter may repeat).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn require(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name)
            .ok_or_else(|| ParamError(format!("missing parameter {name:?}")))
    }

    /// `name` parsed as `T`, or `None` when absent.
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, ParamError>
    where
        T::Err: fmt::Display,
    {
        self.get(name)
            .map(|v| {
                v.trim().parse::<T>().map_err(|e| {
                    ParamError(format!(
                        "parameter {name:?}: cannot read {v:?} as {}: {e}",
                        short_type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// `name` parsed as `T`; absent is an error.
    pub fn require_parsed<T: FromStr>(&self, name: &str) -> Result<T, ParamError>
    where
        T::Err: fmt::Display,
    {
        self.parse(name)?
            .ok_or_else(|| ParamError(format!("missing parameter {name:?}")))
    }

    /// A flag: `true/false`, `yes/no`, `1/0`, `on/off`; `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ParamError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "true" | "yes" | "1" | "on" => Ok(true),
                "false" | "no" | "0" | "off" => Ok(false),
                _ => Err(ParamError(format!(
                    "parameter {name:?}: expected true or false, got {v:?}"
                ))),
            },
        }
    }

    /// Rejects parameters not in `known`, so a typo is an error instead of a silent default.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), ParamError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(ParamError(format!(
                "unknown parameter {k:?} (this filter takes: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
