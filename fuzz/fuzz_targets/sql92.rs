//! The SQL92 filter expression: `parse` on any text, and evaluating what parses against
//! arbitrary properties, must not panic or overflow the stack. Also: the canonical form
//! (`Display`) parses back to an equal expression, evaluation by name and by slot agree,
//! and the filter keeps what `evaluate` says.
//!
//! Input: the expression, a zero byte, then `name=value` lines (the message's properties;
//! a line without `=` is its tag).

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_filter_sdk::testing::TestMessage;
use weir_filter_sdk::{Filter, Message, Params};
use weir_filter_sql92::{Sql92, parse};

fuzz_target!(|data: &[u8]| {
    let (src, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(src) = std::str::from_utf8(src) else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    let mut props = Vec::new();
    let mut tag = "";
    for line in rest.lines() {
        match line.split_once('=') {
            Some((k, v)) => props.push((k, v)),
            None => tag = line,
        }
    }

    let expr = match parse(src) {
        Ok(e) => e,
        Err(e) => {
            let _ = (e.to_string(), format!("{e:#}"));
            assert!(
                e.column >= 1 && e.column <= src.chars().count() + 1,
                "{e:?}"
            );
            return;
        }
    };
    let canonical = expr.to_string();
    match parse(&canonical) {
        Ok(again) => assert_eq!(again, expr, "{src:?} -> {canonical:?}"),
        Err(e) => panic!("canonical form {canonical:?} of {src:?} does not parse: {e}"),
    }

    let lookup = |name: &str| {
        props
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .or_else(|| (name == "TAGS" && !tag.is_empty()).then_some(tag))
    };
    let verdict = expr.evaluate(lookup);
    assert_eq!(expr.evaluate3(lookup) == Some(true), verdict);
    let values: Vec<Option<&str>> = expr.property_names().iter().map(|n| lookup(n)).collect();
    assert_eq!(expr.evaluate_resolved(&values), verdict);

    // Through the filter, as the broker runs it (the source as the `expr` parameter).
    let params = Params::new(vec![("expr".to_owned(), src.to_owned())]);
    let mut filter = Sql92::init(&params).expect("init accepts what parses");
    let test = TestMessage {
        tags: tag.to_owned(),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..TestMessage::default()
    };
    let attrs = test.attributes();
    if let Some(m) = Message::decode(0, 0, 0, 0, &attrs, None) {
        assert_eq!(filter.keep(&m), verdict, "{src:?} on {props:?} tag {tag:?}");
    }
});
