//! The SQL92 filter's cases: parsing, evaluation and the filter end to end. Over ~600
//! lines on purpose: a table of expressions and their expected results reads best whole.

use weir_filter_sdk::testing::{TestMessage, run};

use super::*;

fn expr(source: &str) -> Expr {
    parse(source).unwrap_or_else(|e| panic!("{source:?} should parse: {e}"))
}

/// The three-valued result of `source` against `props`.
fn eval3(source: &str, props: &[(&str, &str)]) -> Option<bool> {
    expr(source).evaluate3(|name| props.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
}

fn keeps(source: &str, props: &[(&str, &str)]) -> bool {
    expr(source).evaluate(|name| props.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
}

const T: Option<bool> = Some(true);
const F: Option<bool> = Some(false);
const U: Option<bool> = None;

#[test]
fn string_equality() {
    let p = [("region", "eu"), ("quote", "it's")];
    assert_eq!(eval3("region = 'eu'", &p), T);
    assert_eq!(eval3("region = 'EU'", &p), F);
    assert_eq!(eval3("region <> 'us'", &p), T);
    assert_eq!(eval3("region <> 'eu'", &p), F);
    assert_eq!(eval3("'eu' = region", &p), T);
    assert_eq!(eval3("quote = 'it''s'", &p), T);
    assert_eq!(eval3("region = ''", &[("region", "")]), T);
    // A missing property is UNKNOWN for = and <> alike.
    assert_eq!(eval3("nope = 'eu'", &p), U);
    assert_eq!(eval3("nope <> 'eu'", &p), U);
}

#[test]
fn numeric_equality() {
    assert_eq!(eval3("a = 3", &[("a", "3")]), T);
    assert_eq!(eval3("a = 3", &[("a", "3.0")]), T);
    assert_eq!(eval3("a = 3", &[("a", " 3 ")]), T);
    assert_eq!(eval3("a = 3", &[("a", "+3")]), T);
    assert_eq!(eval3("a = 3.0", &[("a", "3")]), T);
    assert_eq!(eval3("a = 3", &[("a", "4")]), F);
    assert_eq!(eval3("a <> 3", &[("a", "4")]), T);
    assert_eq!(eval3("a = -7", &[("a", "-7")]), T);
    assert_eq!(eval3("a = 1e3", &[("a", "1000")]), T);
    // Number literal: numeric; string literal: text.
    assert_eq!(eval3("a = 3", &[("a", "03")]), T);
    assert_eq!(eval3("a = '3'", &[("a", "03")]), F);
    // Not a number: UNKNOWN, whichever operator.
    assert_eq!(eval3("a = 3", &[("a", "three")]), U);
    assert_eq!(eval3("a <> 3", &[("a", "three")]), U);
    assert_eq!(eval3("a = 3", &[("a", "inf")]), U);
    assert_eq!(eval3("a = 3", &[("a", "NaN")]), U);
    assert_eq!(eval3("a = 3", &[("a", "")]), U);
}

#[test]
fn ordering_operators() {
    for (source, value, want) in [
        ("a > 5", "6", T),
        ("a > 5", "5", F),
        ("a >= 5", "5", T),
        ("a >= 5", "4.999", F),
        ("a < 5", "4", T),
        ("a < 5", "5", F),
        ("a <= 5", "5", T),
        ("a <= 5", "5.001", F),
        // Numeric, not lexicographic.
        ("a > 9", "10", T),
        ("a > -1", "-0.5", T),
        ("a < -1.5", "-2", T),
        ("a > 3", "3.5", T),
        ("a >= 2.5", "3", T),
        ("a > 1.5e2", "151", T),
        // Not a number: UNKNOWN.
        ("a > 5", "six", U),
        ("a <= 5", "", U),
    ] {
        assert_eq!(
            eval3(source, &[("a", value)]),
            want,
            "{source} with a = {value:?}"
        );
    }
    assert_eq!(eval3("a > 5", &[]), U);
}

#[test]
fn property_numbers() {
    use crate::expr::{Num, parse_num};
    for (text, want) in [
        ("0", Some(Num::Int(0))),
        ("-12", Some(Num::Int(-12))),
        ("+7", Some(Num::Int(7))),
        (" 42\t", Some(Num::Int(42))),
        ("007", Some(Num::Int(7))),
        (
            "999999999999999999",
            Some(Num::Int(999_999_999_999_999_999)),
        ),
        ("9223372036854775807", Some(Num::Int(i64::MAX))),
        ("-9223372036854775808", Some(Num::Int(i64::MIN))),
        (
            "9223372036854775808",
            Some(Num::Float(9_223_372_036_854_775_808.0)),
        ),
        ("1.5", Some(Num::Float(1.5))),
        ("-.5", Some(Num::Float(-0.5))),
        ("1e3", Some(Num::Float(1000.0))),
        ("", None),
        ("-", None),
        ("+", None),
        ("1-2", None),
        ("0x10", None),
        ("inf", None),
        ("NaN", None),
        ("1e999", None),
        ("12ab", None),
    ] {
        assert_eq!(parse_num(text.as_bytes()), want, "{text:?}");
    }
}

#[test]
fn numbers_compare_exactly() {
    // 2^53 + 1 is not representable as f64: converting would make these equal.
    let big = [("a", "9007199254740993")];
    assert_eq!(eval3("a > 9007199254740992", &big), T);
    assert_eq!(eval3("a > 9007199254740992.0", &big), T);
    assert_eq!(eval3("a = 9007199254740992.0", &big), F);
    assert_eq!(
        eval3("a = -9223372036854775808", &[("a", "-9223372036854775808")]),
        T
    );
    assert_eq!(eval3("a < 9223372036854775807", &[("a", "1e19")]), F);
    assert_eq!(eval3("a > -9223372036854775808", &[("a", "-1e19")]), F);
    assert_eq!(eval3("a > 2", &[("a", "2.0000001")]), T);
    assert_eq!(eval3("a < -2", &[("a", "-2.0000001")]), T);
    assert_eq!(eval3("a = 0", &[("a", "-0.0")]), T);
}

#[test]
fn between() {
    for (value, want) in [
        ("1", T),
        ("5", T),
        ("10", T),
        ("0", F),
        ("11", F),
        ("10.5", F),
    ] {
        assert_eq!(
            eval3("a BETWEEN 1 AND 10", &[("a", value)]),
            want,
            "{value}"
        );
        assert_eq!(
            eval3("a NOT BETWEEN 1 AND 10", &[("a", value)]),
            want.map(|b| !b),
            "{value}"
        );
    }
    assert_eq!(eval3("a BETWEEN -1.5 AND 1.5", &[("a", "-1")]), T);
    assert_eq!(eval3("a BETWEEN 3 AND 3", &[("a", "3")]), T);
    assert_eq!(eval3("a BETWEEN 1 AND 10", &[]), U);
    assert_eq!(eval3("a NOT BETWEEN 1 AND 10", &[]), U);
    assert_eq!(eval3("a BETWEEN 1 AND 10", &[("a", "x")]), U);
    // Bounds may be properties; a missing bound is UNKNOWN unless the other side decides.
    let p = [("a", "5"), ("lo", "1"), ("hi", "9")];
    assert_eq!(eval3("a BETWEEN lo AND hi", &p), T);
    assert_eq!(eval3("a BETWEEN lo AND nope", &p), U);
    assert_eq!(eval3("a BETWEEN nope AND 4", &p), F);
    assert_eq!(eval3("a NOT BETWEEN nope AND 4", &p), T);
}

#[test]
fn in_lists() {
    let p = [("tier", "gold")];
    assert_eq!(eval3("tier IN ('gold', 'platinum')", &p), T);
    assert_eq!(eval3("tier IN ('silver')", &p), F);
    assert_eq!(eval3("tier NOT IN ('silver', 'bronze')", &p), T);
    assert_eq!(eval3("tier NOT IN ('gold')", &p), F);
    assert_eq!(eval3("tier IN ('Gold')", &p), F);
    assert_eq!(eval3("tier IN ('gold', 'gold', 'a')", &p), T);
    assert_eq!(eval3("nope IN ('gold')", &p), U);
    assert_eq!(eval3("nope NOT IN ('gold')", &p), U);
    // Long lists are searched, not scanned: every member is found.
    let members: Vec<String> = (0..50).map(|i| format!("'v{i}'")).collect();
    let source = format!("k IN ({})", members.join(", "));
    for i in 0..50 {
        let v = format!("v{i}");
        assert!(keeps(&source, &[("k", &v)]), "{v}");
    }
    assert!(!keeps(&source, &[("k", "v50")]));
}

#[test]
fn is_null() {
    let p = [("a", "1"), ("empty", "")];
    assert_eq!(eval3("a IS NULL", &p), F);
    assert_eq!(eval3("a IS NOT NULL", &p), T);
    assert_eq!(eval3("nope IS NULL", &p), T);
    assert_eq!(eval3("nope IS NOT NULL", &p), F);
    // Empty is a value, not NULL.
    assert_eq!(eval3("empty IS NULL", &p), F);
    assert_eq!(eval3("NOT nope IS NULL", &p), F);
}

#[test]
fn text_operators() {
    let p = [("url", "https://example.com/a")];
    assert_eq!(eval3("url CONTAINS 'example'", &p), T);
    assert_eq!(eval3("url CONTAINS 'EXAMPLE'", &p), F);
    assert_eq!(eval3("url NOT CONTAINS 'x.org'", &p), T);
    assert_eq!(eval3("url STARTSWITH 'https:'", &p), T);
    assert_eq!(eval3("url NOT STARTSWITH 'https:'", &p), F);
    assert_eq!(eval3("url ENDSWITH '/a'", &p), T);
    assert_eq!(eval3("url not endswith '/a'", &p), F);
    assert_eq!(eval3("nope CONTAINS 'x'", &p), U);
    assert_eq!(eval3("nope NOT CONTAINS 'x'", &p), U);
}

#[test]
fn booleans() {
    assert_eq!(eval3("TRUE", &[]), T);
    assert_eq!(eval3("FALSE", &[]), F);
    assert_eq!(eval3("NOT FALSE", &[]), T);
    for (value, want) in [("true", T), ("TRUE", T), ("False", F), ("yes", U), ("1", U)] {
        assert_eq!(eval3("vip = TRUE", &[("vip", value)]), want, "{value}");
        assert_eq!(eval3("vip <> FALSE", &[("vip", value)]), want, "{value}");
    }
    assert_eq!(eval3("vip = TRUE", &[]), U);
    // A number never equals a boolean.
    assert_eq!(eval3("1 = TRUE", &[]), F);
}

#[test]
fn constants_and_property_pairs() {
    assert_eq!(eval3("1 = 1", &[]), T);
    assert_eq!(eval3("1 < 2.5", &[]), T);
    assert_eq!(eval3("'a' = 'b'", &[]), F);
    let p = [("a", "10"), ("b", "9"), ("s", "x"), ("t", "x")];
    assert_eq!(eval3("a > b", &p), T);
    assert_eq!(eval3("s = t", &p), T);
    // Two strings with = compare as text even when both are numbers.
    assert_eq!(eval3("a = b", &[("a", "1"), ("b", "1.0")]), F);
    assert_eq!(eval3("s < t", &p), U);
}

#[test]
fn three_valued_logic() {
    // `m = 'x'` with no `m` is UNKNOWN.
    let val = |v: Option<bool>| match v {
        Some(true) => "TRUE",
        Some(false) => "FALSE",
        None => "m = 'x'",
    };
    for a in [T, F, U] {
        assert_eq!(eval3(&format!("NOT {}", val(a)), &[]), a.map(|b| !b));
        for b in [T, F, U] {
            let and = match (a, b) {
                (F, _) | (_, F) => F,
                (T, T) => T,
                _ => U,
            };
            let or = match (a, b) {
                (T, _) | (_, T) => T,
                (F, F) => F,
                _ => U,
            };
            assert_eq!(
                eval3(&format!("{} AND {}", val(a), val(b)), &[]),
                and,
                "{a:?} AND {b:?}"
            );
            assert_eq!(
                eval3(&format!("{} OR {}", val(a), val(b)), &[]),
                or,
                "{a:?} OR {b:?}"
            );
        }
    }
    // UNKNOWN at the top drops the message.
    assert!(!keeps("NOT m = 'x'", &[]));
    assert!(keeps("m IS NULL OR m <> 'x'", &[]));
}

#[test]
fn precedence() {
    for (source, canonical) in [
        ("a = 1 OR b = 2 AND c = 3", "(a = 1 OR (b = 2 AND c = 3))"),
        ("a = 1 AND b = 2 OR c = 3", "((a = 1 AND b = 2) OR c = 3)"),
        ("NOT a = 1 AND b = 2", "(NOT a = 1 AND b = 2)"),
        ("NOT a = 1 OR b = 2", "(NOT a = 1 OR b = 2)"),
        ("NOT (a = 1 OR b = 2)", "NOT (a = 1 OR b = 2)"),
        ("(a = 1 OR b = 2) AND c = 3", "((a = 1 OR b = 2) AND c = 3)"),
        ("a = 1 AND (b = 2 AND c = 3)", "(a = 1 AND b = 2 AND c = 3)"),
        ("NOT NOT a = 1", "NOT NOT a = 1"),
        (
            "a BETWEEN 1 AND 2 AND b = 1",
            "(a BETWEEN 1 AND 2 AND b = 1)",
        ),
        ("((a = 1))", "a = 1"),
    ] {
        assert_eq!(expr(source).to_string(), canonical, "{source}");
    }
    // AND before OR changes verdicts: a=1 alone satisfies the first reading only.
    let p = [("a", "1"), ("c", "0")];
    assert!(keeps("a = 1 OR b = 2 AND c = 3", &p));
    assert!(!keeps("(a = 1 OR b = 2) AND c = 3", &p));
    // NOT binds to the comparison, not to the AND.
    let p = [("a", "2"), ("b", "3")];
    assert!(!keeps("NOT a = 2 AND b = 3", &p));
    assert!(keeps("NOT (a = 2 AND b = 4)", &p));
}

#[test]
fn lexical_forms() {
    // Case-insensitive keywords, comments, odd spacing.
    assert!(keeps(
        "a between 1 and 3 aNd b is not null -- trailing comment",
        &[("a", "2"), ("b", "")]
    ));
    assert!(keeps(
        "/* lead */a=1/* mid */and(b<>2)",
        &[("a", "1"), ("b", "3")]
    ));
    assert!(keeps("a = 1 -- one\n AND b = 2", &[("a", "1"), ("b", "2")]));
    // Property names.
    let p = [
        ("order.region", "eu"),
        ("$x_1", "1"),
        ("_y", "2"),
        ("région", "é"),
    ];
    assert!(keeps("order.region = 'eu' AND $x_1 = 1 AND _y = 2", &p));
    assert!(keeps("région = 'é'", &p));
    // Number forms.
    for (source, value) in [
        ("a = 42L", "42"),
        ("a = .5", "0.5"),
        ("a = 5.", "5"),
        ("a = 1e3", "1000"),
        ("a = 2.5E-3", "0.0025"),
        ("a = +5", "5"),
        ("a = - 5", "-5"),
        ("a = -.25", "-0.25"),
        ("a=-9223372036854775808", "-9223372036854775808"),
        ("a = 9223372036854775807", "9223372036854775807"),
    ] {
        assert!(keeps(source, &[("a", value)]), "{source}");
    }
}

#[test]
fn display_round_trips() {
    for source in [
        "a = 'it''s' AND b <> -1.5 OR NOT c IN ('x', 'y''z')",
        "a NOT BETWEEN -3 AND 4.25 AND b IS NOT NULL AND c IS NULL",
        "(a > 1e20 OR b <= -9223372036854775808) AND TRUE AND NOT FALSE",
        "u NOT CONTAINS 'x' OR u STARTSWITH 'h' OR u ENDSWITH '/' OR x = FALSE",
        "a = b AND 1 < 2 AND a >= 0.1",
    ] {
        let e = expr(source);
        assert_eq!(expr(&e.to_string()), e, "{source} -> {e}");
    }
}

#[test]
fn error_messages() {
    // (expression, expected text in the message, 1-based column)
    let cases: &[(&str, &str, usize)] = &[
        (
            "a > AND b = 1",
            "expected a value after '>', found 'AND'",
            5,
        ),
        ("", "the expression is empty", 1),
        ("   ", "the expression is empty", 4),
        (
            "a = 1 AND",
            "expected a condition after 'AND', found the end of the expression",
            10,
        ),
        ("a = 'abc", "unterminated string literal", 5),
        (
            "(a = 1",
            "expected ')' to close the '(' at column 1 after '1'",
            7,
        ),
        ("a = 1)", "unexpected ')' with no '(' to close", 6),
        ("a != 1", "unexpected '!=' (not-equal is <>)", 3),
        ("a == 1", "unexpected '==' (compare with a single =)", 3),
        ("a && b", "unexpected character '&' (use AND)", 3),
        ("a = \"x\"", "string literals take single quotes", 5),
        ("a > 'x'", "'x' cannot be ordered", 5),
        ("a < TRUE", "'TRUE' cannot be ordered", 5),
        (
            "a BETWEEN 5 AND 1",
            "lower bound 5 is greater than its upper bound 1",
            11,
        ),
        ("a BETWEEN 1 OR 5", "expected AND after '1', found 'OR'", 13),
        ("a BETWEEN 'a' AND 'z'", "'a' cannot be ordered", 11),
        (
            "a IN (1, 2)",
            "IN lists hold 'string' literals only (write '1', not 1), found '1'",
            7,
        ),
        (
            "a IN ()",
            "expected a 'string' literal after '(', found ')'",
            7,
        ),
        (
            "a IN ('x' 'y')",
            "expected ',' or ')' after 'x', found 'y'",
            11,
        ),
        ("a IN 'x'", "expected '(' after 'IN', found 'x'", 6),
        (
            "'x' IN ('x')",
            "IN applies to a property name, found 'x'",
            1,
        ),
        (
            "5 IS NULL",
            "IS NULL applies to a property name, found '5'",
            1,
        ),
        (
            "a = NULL",
            "NULL can only be tested with IS NULL or IS NOT NULL",
            5,
        ),
        (
            "a IS 5",
            "expected NULL or NOT NULL after 'IS', found '5'",
            6,
        ),
        ("a IS NOT 5", "expected NULL after 'NOT', found '5'", 10),
        (
            "a AND b = 1",
            "expected an operator (=, <>, <, <=, >, >=, BETWEEN, IN",
            3,
        ),
        (
            "a = 1 b = 2",
            "expected AND, OR or the end of the expression after '1', found 'b'",
            7,
        ),
        ("a = 12ab", "malformed number '12ab'", 5),
        (
            "a = 99999999999999999999",
            "number 99999999999999999999 is out of range",
            5,
        ),
        ("a = 9223372036854775808", "out of range", 5),
        ("a = 1e999", "number 1e999 is out of range", 5),
        (
            "a NOT = 1",
            "expected BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after 'NOT'",
            7,
        ),
        ("a = -b", "expected a number after '-', found 'b'", 6),
        (
            "5",
            "a value on its own is not a condition: '5' needs a comparison",
            1,
        ),
        ("a CONTAINS ''", "CONTAINS needs a non-empty string", 12),
        (
            "a CONTAINS 5",
            "expected a 'string' literal after 'CONTAINS', found '5'",
            12,
        ),
        ("a = 1 /* x", "unterminated comment", 7),
        ("AND a = 1", "expected a condition, found 'AND'", 1),
        (
            "a = 1 OR OR b = 2",
            "expected a condition after 'OR', found 'OR'",
            10,
        ),
        ("a # 1", "unexpected character '#'", 3),
        // Columns count characters, not bytes.
        (
            "région = 'é' AND > 1",
            "expected a condition after 'AND', found '>'",
            18,
        ),
    ];
    for &(source, want, column) in cases {
        let e = parse(source).expect_err(source);
        assert!(
            e.message.contains(want),
            "{source:?}: got {:?}, want {want:?}",
            e.message
        );
        assert_eq!(e.column, column, "{source:?}: {e}");
        // The one-line form names the column and shows the expression.
        let line = e.to_string();
        assert!(line.contains(&format!("at column {column}: ")), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
    let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
    assert!(
        parse(&deep)
            .unwrap_err()
            .message
            .contains("nests deeper than 64")
    );
    let deep_not = format!("{}a = 1", "NOT ".repeat(100));
    assert!(
        parse(&deep_not)
            .unwrap_err()
            .message
            .contains("nests deeper than 64")
    );
}

/// Found by fuzz/sql92's round trip (an expression's canonical form must parse back):
/// NOTs at the depth limit under an AND, whose canonical form parenthesises the AND list
/// and so nested one level deeper than the limit.
#[test]
fn the_canonical_form_of_an_accepted_expression_parses() {
    for (nots, tail) in [
        (64, "a = 1 AND b = 1"),
        (63, "(a = 1 AND b = 1 OR c = 1)"),
        (62, "(a = 1 AND (b = 1 OR NOT c = 1))"),
    ] {
        let source = format!("{}{tail}", "NOT ".repeat(nots));
        match parse(&source) {
            Ok(e) => assert_eq!(parse(&e.to_string()).as_ref(), Ok(&e), "{source}"),
            Err(e) => assert!(e.message.contains("nests deeper than 64"), "{source}: {e}"),
        }
    }
    // Right at the limit, accepted.
    let source = format!("{}a = 1 AND b = 1", "NOT ".repeat(63));
    let e = parse(&source).unwrap();
    assert_eq!(parse(&e.to_string()).unwrap(), e);
}

#[test]
fn error_display() {
    let e = parse("a > AND b = 1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected a value after '>', found 'AND' at column 5: a > AND b = 1"
    );
    assert_eq!(
        format!("{e:#}"),
        "expected a value after '>', found 'AND' at column 5: a > AND b = 1\n  a > AND b = 1\n      ^^^"
    );
    // Control characters do not break the line.
    let e = parse("a =\n> 1").unwrap_err();
    assert_eq!(e.column, 5);
    assert!(e.to_string().ends_with(": a = > 1"), "{e}");
}

#[test]
fn filter_params() {
    let msgs = [TestMessage::new().property("a", "1")];
    assert_eq!(run::<Sql92>(&[("expr", "a = 1")], &msgs).unwrap(), [true]);
    let e = run::<Sql92>(&[], &msgs).unwrap_err();
    assert_eq!(e, "missing parameter \"expr\"");
    let e = run::<Sql92>(&[("expr", "a = 1"), ("exp", "b = 2")], &msgs).unwrap_err();
    assert!(
        e.contains("unknown parameter \"exp\"") && e.contains("takes: expr"),
        "{e}"
    );
    let e = run::<Sql92>(&[("expr", "a > AND b = 1")], &msgs).unwrap_err();
    assert_eq!(
        e,
        "expr: expected a value after '>', found 'AND' at column 5: a > AND b = 1"
    );
}

#[test]
fn filter_on_messages() {
    let msgs = [
        TestMessage::new()
            .property("region", "eu")
            .property("amount", "150"),
        TestMessage::new()
            .property("region", "eu")
            .property("amount", "50"),
        TestMessage::new()
            .property("region", "us")
            .property("amount", "500"),
        TestMessage::new().property("region", "eu"),
        TestMessage::new()
            .property("region", "eu")
            .property("amount", "50")
            .property("vip", "true"),
        TestMessage::new(),
    ];
    let verdicts = run::<Sql92>(
        &[("expr", "region = 'eu' AND (amount > 100 OR vip = TRUE)")],
        &msgs,
    )
    .unwrap();
    assert_eq!(verdicts, [true, false, false, false, true, false]);
    let verdicts = run::<Sql92>(&[("expr", "amount IS NULL")], &msgs).unwrap();
    assert_eq!(verdicts, [false, false, false, true, false, true]);
}

#[test]
fn tags_fall_back_to_the_message_tag() {
    let msgs = [
        TestMessage::new().tags("TagA"),
        TestMessage::new().tags("TagC"),
        TestMessage::new(),
        // A real TAGS property wins over the tag.
        TestMessage::new().tags("TagC").property("TAGS", "TagB"),
    ];
    let verdicts = run::<Sql92>(&[("expr", "TAGS IN ('TagA', 'TagB')")], &msgs).unwrap();
    assert_eq!(verdicts, [true, false, false, true]);
    let verdicts = run::<Sql92>(&[("expr", "TAGS IS NULL")], &msgs).unwrap();
    assert_eq!(verdicts, [false, false, true, false]);
}

#[test]
fn property_slots() {
    let e = expr("b = 1 AND a = 2 OR b IS NULL AND c IN ('x') OR a > 0");
    let names: Vec<&str> = e.property_names().iter().map(|n| &**n).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert!(e.evaluate_resolved(&[Some("1"), Some("2"), None]));
    assert!(e.evaluate_resolved(&[None, None, Some("x")]));
    assert!(!e.evaluate_resolved(&[Some("5"), Some("-1")]));
    assert!(!e.evaluate_resolved(&[]));
}

#[test]
fn one_pass_lookup_agrees_with_lookup_by_name() {
    let many: Vec<String> = (0..20).map(|i| format!("p{i} = {i}")).collect();
    let many = many.join(" OR ");
    let sources = [
        "a = 1 AND b = 'x'",
        "a = 1 OR TAGS = 'T'",
        "NOT a IN ('1', '2') AND c IS NOT NULL",
        "a BETWEEN b AND c",
        "TAGS IS NULL AND a IS NOT NULL",
        many.as_str(),
    ];
    let msgs = [
        TestMessage::new(),
        TestMessage::new().property("a", "1").property("b", "x"),
        TestMessage::new().property("b", "x").property("a", "1"),
        // The first of two same-named properties counts.
        TestMessage::new()
            .property("a", "2")
            .property("a", "1")
            .property("b", "x"),
        TestMessage::new()
            .property("a", "1")
            .property("a", "2")
            .property("b", "x"),
        TestMessage::new()
            .tags("T")
            .property("a", "3")
            .property("c", "4"),
        TestMessage::new()
            .tags("T")
            .property("TAGS", "U")
            .property("b", "1"),
        TestMessage::new()
            .property("b", "0")
            .property("a", "5")
            .property("c", "9"),
        TestMessage::new().property("p19", "19"),
        TestMessage::new().property("p7", "8").property("p3", "3"),
    ];
    for source in sources {
        let e = expr(source);
        let want: Vec<bool> = msgs
            .iter()
            .map(|m| {
                e.evaluate(|name| {
                    let prop = m.properties.iter().find(|(k, _)| k == name);
                    match prop {
                        Some((_, v)) => Some(v.as_str()),
                        None if name == "TAGS" && !m.tags.is_empty() => Some(m.tags.as_str()),
                        None => None,
                    }
                })
            })
            .collect();
        let got = run::<Sql92>(&[("expr", source)], &msgs).unwrap();
        assert_eq!(got, want, "{source}");
        assert!(want.iter().any(|&k| k), "{source} keeps something");
    }
}

#[test]
fn values_compare_as_bytes_and_are_text_only_when_utf8() {
    // A filter reads values as stored bytes (a broker stores only UTF-8): the same verdicts
    // as the text for UTF-8 values, and for one that is not, a comparison of its bytes, or
    // UNKNOWN where it would have to be read as text.
    let bad: &[u8] = &[0xff, b'x'];
    let on = |source: &str, value: &'static [u8]| {
        let e = expr(source);
        let by_bytes = e.evaluate_bytes(|name| (name == "a").then_some(value));
        let slots = e.evaluate_resolved_bytes(&[Some(value)]);
        assert_eq!(by_bytes, slots, "{source}");
        if let Ok(text) = std::str::from_utf8(value) {
            assert_eq!(by_bytes, keeps(source, &[("a", text)]), "{source}");
        }
        by_bytes
    };
    for (source, value, want) in [
        ("a = 'eu'", &b"eu"[..], true),
        ("a = 'eu'", b"eur", false),
        ("a <> 'eu'", b"e", true),
        ("a = 12", b" 12 ", true),
        ("a = 1.5", b"1.50", true),
        ("a > 10", b"9", false),
        ("a = TRUE", b"True", true),
        ("a IN ('x', 'y')", b"y", true),
        ("a CONTAINS 'b'", b"abc", true),
        ("a <> 'x'", bad, true),
        ("a = 'x'", bad, false),
        ("a IN ('x')", bad, false),
        ("a CONTAINS 'x'", bad, false),
        ("NOT a CONTAINS 'x'", bad, false),
        ("a = 1", bad, false),
        ("NOT a = 1", bad, false),
        ("a IS NOT NULL", bad, true),
    ] {
        assert_eq!(on(source, value), want, "{source} on {value:?}");
    }
}
