//! {{name}}: a weir message filter (written by `weir filter new`).
//!
//! Keeps the messages whose property `property` has the value `value`, e.g.
//! `--param property=region --param value=eu`. Change `init` and `keep` to filter on
//! anything else: tags, keys, other properties, or the body (set `NEEDS_BODY`).

use weir_filter_sdk::{Filter, Level, Message, ParamError, Params, log};

pub struct PropertyEquals {
    property: String,
    value: String,
}

impl Filter for PropertyEquals {
    // const NEEDS_BODY: bool = true; // only if `keep` reads bodies (each costs a copy)

    fn init(params: &Params) -> Result<Self, ParamError> {
        // A typo in a parameter name is an error at upload, not a silent default.
        params.allow_only(&["property", "value"])?;
        let property = params.require("property")?.to_owned();
        let value = params.require("value")?.to_owned();
        log(
            Level::Info,
            &format!("keeping messages whose property {property:?} is {value:?}"),
        );
        Ok(Self { property, value })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        msg.property(&self.property) == Some(self.value.as_str())
    }
}

weir_filter_sdk::export_filter!(PropertyEquals);

#[cfg(test)]
mod tests {
    use weir_filter_sdk::testing::{TestMessage, run};

    use super::*;

    #[test]
    fn keeps_the_messages_with_the_value() {
        let verdicts = run::<PropertyEquals>(
            &[("property", "region"), ("value", "eu")],
            &[
                TestMessage::new().property("region", "eu"),
                TestMessage::new().property("region", "us"),
                TestMessage::new().tags("TagA"),
                TestMessage::new()
                    .property("tier", "gold")
                    .property("region", "eu"),
            ],
        )
        .unwrap();
        assert_eq!(verdicts, [true, false, false, true]);
    }

    #[test]
    fn refuses_missing_and_unknown_parameters() {
        let err = run::<PropertyEquals>(&[("property", "region")], &[]).unwrap_err();
        assert!(err.contains("missing parameter \"value\""), "{err}");
        let err = run::<PropertyEquals>(
            &[("property", "region"), ("value", "eu"), ("colour", "red")],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("unknown parameter \"colour\""), "{err}");
    }
}
