//! Inputs shared by the filter tests of every language (`tests/integration/filters.rs`,
//! `tests/integration/filter_engines.rs`), with the verdicts every implementation must give.

/// JSON bodies and whether the JSON body field filter with `path=order.tier op=in
/// value=gold,platinum` (that is, `order.tier IN (gold, platinum)`) keeps them: exact,
/// case-sensitive string matches only; anything not an object path to a string is dropped.
pub const TIER_BODIES: &[(&str, bool)] = &[
    (r#"{"order":{"tier":"gold","total":1}}"#, true),
    (r#"{"order":{"tier":"platinum"}}"#, true),
    (
        r#"  {"order":{"total":3,"tier":"gold"},"extra":[1,{"a":"b"}]}  "#,
        true,
    ),
    (r#"{"order":{"tier":"silver"}}"#, false),
    (r#"{"order":{"tier":"Gold"}}"#, false),
    (r#"{"order":{"total":5}}"#, false),
    (r#"{"order":{"tier":["gold"]}}"#, false),
    (r#"{"order":{"tier":"gold"}"#, false),
    (r#"{"order":null}"#, false),
    (r#"{"tier":"gold"}"#, false),
    ("not json", false),
    ("", false),
];
