//! Keeps every message. Takes no parameters and never reads a body: what it costs is the
//! cost of the filter call itself.

use weir_filter_sdk::{Filter, Message, ParamError, Params};

pub struct KeepAll;

impl Filter for KeepAll {
    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&[])?;
        Ok(KeepAll)
    }

    fn keep(&mut self, _msg: &Message<'_>) -> bool {
        true
    }
}

weir_filter_sdk::export_filter!(KeepAll);
