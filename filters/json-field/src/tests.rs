use weir_filter_sdk::testing::{TestMessage, run};

use super::*;

const ORDER: &str = r#"{
    "order": {
        "id": 9007199254740993,
        "total": 149.5,
        "qty": 3,
        "status": "shipped",
        "rush": true,
        "note": null,
        "placed": "2024-03-01T10:00:00Z",
        "customer": {"tier": "gold", "id": "c-17", "tags": ["vip", "eu"]},
        "items": [{"sku": "A-1", "price": 100}, {"sku": "B-2", "price": 49.5}],
        "dims": [1, 2.0, 3],
        "0": "zero key",
        "a.b": "dotted"
    }
}"#;

/// Verdicts of the filter with `params` over `bodies`.
fn verdicts(params: &[(&str, &str)], bodies: &[&[u8]]) -> Vec<bool> {
    let msgs: Vec<TestMessage> = bodies.iter().map(|b| TestMessage::new().body(*b)).collect();
    run::<JsonField>(params, &msgs).unwrap_or_else(|e| panic!("{params:?}: {e}"))
}

/// Whether the ORDER document is kept.
fn keeps(params: &[(&str, &str)]) -> bool {
    verdicts(params, &[ORDER.as_bytes()])[0]
}

fn init_error(params: &[(&str, &str)]) -> String {
    run::<JsonField>(params, &[]).expect_err("init should fail")
}

#[test]
fn paths() {
    assert_eq!(
        find_path(ORDER.as_bytes(), "order.customer.tier"),
        Some(Value::from("gold"))
    );
    assert_eq!(
        find_path(ORDER.as_bytes(), "order.items.1.sku"),
        Some(Value::from("B-2"))
    );
    assert_eq!(
        find_path(ORDER.as_bytes(), "order.customer.tags.0"),
        Some(Value::from("vip"))
    );
    assert_eq!(find_path(ORDER.as_bytes(), "order.note"), Some(Value::Null));
    // A digit segment on an object is a key.
    assert_eq!(
        find_path(ORDER.as_bytes(), "order.0"),
        Some(Value::from("zero key"))
    );
    let customer = find_path(ORDER.as_bytes(), "order.customer").unwrap();
    assert_eq!(customer["id"], "c-17");
    for missing in [
        "order.nope",
        "order.items.2.sku",
        "order.items.x",
        "order.status.length",
        "order.a.b",
        "nope",
        "order.customer.tags.00x",
    ] {
        assert_eq!(find_path(ORDER.as_bytes(), missing), None, "{missing}");
    }
    // Escaped keys are matched after unescaping.
    assert_eq!(
        find_path(br#"{"t\u0069er": 1}"#, "tier"),
        Some(Value::from(1))
    );
    // Duplicate keys: the last wins.
    assert_eq!(find_path(br#"{"a": 1, "a": 2}"#, "a"), Some(Value::from(2)));
    assert_eq!(
        find_path(br#"[10, [20, 21]]"#, "1.1"),
        Some(Value::from(21))
    );
}

#[test]
fn eq_and_ne() {
    assert!(keeps(&[("path", "order.customer.tier"), ("value", "gold")]));
    assert!(keeps(&[
        ("path", "order.customer.tier"),
        ("op", "eq"),
        ("value", "\"gold\"")
    ]));
    assert!(!keeps(&[
        ("path", "order.customer.tier"),
        ("value", "Gold")
    ]));
    assert!(keeps(&[("path", "order.qty"), ("value", "3")]));
    assert!(keeps(&[("path", "order.qty"), ("value", "3.0")]));
    assert!(!keeps(&[("path", "order.qty"), ("value", "\"3\"")]));
    assert!(keeps(&[("path", "order.total"), ("value", "149.5")]));
    assert!(keeps(&[("path", "order.rush"), ("value", "true")]));
    assert!(!keeps(&[("path", "order.rush"), ("value", "\"true\"")]));
    assert!(keeps(&[("path", "order.note"), ("value", "null")]));
    assert!(keeps(&[
        ("path", "order.id"),
        ("value", "9007199254740993")
    ]));
    assert!(!keeps(&[
        ("path", "order.id"),
        ("value", "9007199254740992")
    ]));
    assert!(keeps(&[("path", "order.dims"), ("value", "[1.0, 2, 3]")]));
    assert!(keeps(&[
        ("path", "order.items.0"),
        ("value", r#"{"price": 100, "sku": "A-1"}"#)
    ]));
    assert!(keeps(&[
        ("path", "order.status"),
        ("op", "NE"),
        ("value", "pending")
    ]));
    assert!(!keeps(&[
        ("path", "order.status"),
        ("op", "ne"),
        ("value", "shipped")
    ]));
    // A missing field is neither equal nor unequal.
    assert!(!keeps(&[
        ("path", "order.nope"),
        ("op", "ne"),
        ("value", "x")
    ]));
    assert!(!keeps(&[("path", "order.nope"), ("value", "null")]));
}

#[test]
fn in_lists() {
    let tier = |value: &str| {
        keeps(&[
            ("path", "order.customer.tier"),
            ("op", "in"),
            ("value", value),
        ])
    };
    assert!(tier("silver,gold"));
    assert!(tier("silver, gold ,platinum"));
    assert!(tier(r#"["gold", "platinum"]"#));
    assert!(tier("gold"));
    assert!(!tier("silver,platinum"));
    assert!(!tier(r#""silver,gold""#));
    let qty = |value: &str| keeps(&[("path", "order.qty"), ("op", "in"), ("value", value)]);
    assert!(qty("1,2,3"));
    assert!(qty("[3]"));
    assert!(qty("3"));
    assert!(!qty("\"3\",4"));
    assert!(!qty("1,2"));
}

#[test]
fn ordering() {
    let cmp =
        |path: &str, op: &str, value: &str| keeps(&[("path", path), ("op", op), ("value", value)]);
    assert!(cmp("order.total", "gt", "100"));
    assert!(!cmp("order.total", "gt", "149.5"));
    assert!(cmp("order.total", "ge", "149.5"));
    assert!(cmp("order.total", "lt", "150"));
    assert!(cmp("order.total", "le", "149.5"));
    assert!(!cmp("order.total", "lt", "-1"));
    assert!(cmp("order.qty", "lt", "3.5"));
    assert!(cmp("order.qty", "gt", "2.999"));
    assert!(cmp("order.id", "gt", "9007199254740992"));
    assert!(cmp("order.id", "gt", "9007199254740992.0"));
    assert!(cmp("order.qty", "lt", "18446744073709551615"));
    // Strings compare as strings, so ISO timestamps order by time.
    assert!(cmp("order.placed", "ge", "2024-01-01"));
    assert!(!cmp("order.placed", "lt", "2024-03-01"));
    assert!(cmp("order.customer.tier", "lt", "silver"));
    // Mixed types never match.
    assert!(!cmp("order.qty", "gt", "\"1\""));
    assert!(!cmp("order.status", "gt", "1"));
    assert!(!cmp("order.rush", "gt", "1"));
    assert!(!cmp("order.nope", "lt", "1"));
}

#[test]
fn exists() {
    let exists = |path: &str| keeps(&[("path", path), ("op", "exists")]);
    assert!(exists("order.customer.tags"));
    assert!(exists("order.note"));
    assert!(exists("order.items.1"));
    assert!(!exists("order.items.2"));
    assert!(!exists("order.customer.email"));
}

#[test]
fn bodies_that_are_not_json() {
    let params = [("path", "a"), ("op", "exists")];
    let kept = verdicts(
        &params,
        &[
            br#"{"a": 1}"#,
            b"",
            b"not json",
            br#"{"a": 1"#,
            br#"{"a": 1} trailing"#,
            br#"{"a": 1} {"a": 2}"#,
            b"{\"a\": 1, \"b\": \"\xff\"}",
            b"\xef\xbb\xbf{\"a\": 1}",
            b"  {\"a\": 1}\n",
            b"[1]",
            b"1",
        ],
    );
    assert_eq!(
        kept,
        [
            true, false, false, false, false, false, false, false, true, false, false
        ]
    );
}

#[test]
fn bad_params() {
    for (params, want) in [
        (vec![], "missing parameter \"path\""),
        (
            vec![("path", "a")],
            "missing parameter \"value\" (op=eq needs one)",
        ),
        (
            vec![("path", "a"), ("op", "gt")],
            "missing parameter \"value\" (op=gt needs one)",
        ),
        (
            vec![("path", ""), ("value", "1")],
            "parameter \"path\": is empty",
        ),
        (
            vec![("path", "a..b"), ("value", "1")],
            "parameter \"path\": empty segment in \"a..b\"",
        ),
        (vec![("path", ".a"), ("value", "1")], "empty segment"),
        (
            vec![("path", "a"), ("op", "like"), ("value", "1")],
            "parameter \"op\": expected eq, ne, in, gt, ge, lt, le or exists, got \"like\"",
        ),
        (
            vec![("path", "a"), ("op", "exists"), ("value", "1")],
            "parameter \"value\": op=exists takes no value",
        ),
        (
            vec![("path", "a"), ("op", "gt"), ("value", "true")],
            "parameter \"value\": op=gt compares numbers or strings, got true",
        ),
        (
            vec![("path", "a"), ("op", "le"), ("value", "[1]")],
            "op=le compares numbers or strings",
        ),
        (
            vec![("path", "a"), ("value", "1"), ("vlaue", "2")],
            "unknown parameter \"vlaue\" (this filter takes: path, op, value)",
        ),
    ] {
        let e = init_error(&params);
        assert!(e.contains(want), "{params:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn value_parsing() {
    assert_eq!(parse_value("42"), Value::from(42));
    assert_eq!(parse_value("true"), Value::Bool(true));
    assert_eq!(parse_value("\"x\""), Value::from("x"));
    assert_eq!(parse_value("x"), Value::from("x"));
    assert_eq!(parse_value(""), Value::from(""));
    assert_eq!(parse_value("1,2"), Value::from("1,2"));
    assert_eq!(
        parse_list("a, 2 ,\"c\""),
        [Value::from("a"), Value::from(2), Value::from("c")]
    );
    assert_eq!(
        parse_list("[\"a,b\", 1]"),
        [Value::from("a,b"), Value::from(1)]
    );
    assert_eq!(parse_list("null"), [Value::Null]);
}
