//! Message decoding, parameters and native runs.

use super::testing::{TestMessage, run};
use super::*;

struct TagAndKey;
impl Filter for TagAndKey {
    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&[])?;
        Ok(TagAndKey)
    }
    fn keep(&mut self, msg: &Message<'_>) -> bool {
        msg.tags() == "A" && msg.keys().any(|k| k == "k2") && msg.body().is_none()
    }
}

#[test]
fn attributes_round_trip() {
    let m = TestMessage::new()
        .tags("TagA")
        .key("k1")
        .key("k2")
        .property("region", "eu")
        .property("empty", "");
    let attrs = m.attributes();
    let v = Message::decode(7, 1, 2, 3, &attrs, None).unwrap();
    assert_eq!(v.tags(), "TagA");
    assert_eq!(v.keys().collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(v.property("region"), Some("eu"));
    assert_eq!(v.property("empty"), Some(""));
    assert_eq!(v.property("nope"), None);
    assert_eq!(v.properties().count(), 2);
    let mut found = [Some("stale"); 3];
    v.properties_of(&["empty", "nope", "region"], &mut found);
    assert_eq!(found, [Some(""), None, Some("eu")]);
    assert_eq!(v.property_bytes("region"), Some(&b"eu"[..]));
    assert_eq!(v.property_bytes("nope"), None);
    let mut raw = [Some(&b"stale"[..]); 3];
    v.properties_bytes_of(&["region", "nope", "empty"], &mut raw);
    assert_eq!(raw, [Some(&b"eu"[..]), None, Some(&b""[..])]);
    // More names than one pass holds: each looked up on its own, with the same answers.
    let many: Vec<String> = (0..20)
        .map(|i| format!("p{i}"))
        .chain(["region".into()])
        .collect();
    let mut found = vec![Some("stale"); many.len()];
    v.properties_of(&many, &mut found);
    assert_eq!(found.iter().flatten().collect::<Vec<_>>(), [&"eu"]);
    assert_eq!(v.queue_offset(), 7);
    // Every truncation is rejected or yields only whole fields, never misread ones.
    for cut in 0..attrs.len() {
        if let Some(m) = Message::decode(0, 0, 0, 0, &attrs[..cut], None) {
            panic!("truncated attributes accepted: {:?}", m.tags());
        }
    }
    // Malformed keys and properties are cut short by the accessors.
    let mut bad = TestMessage::new().tags("T").attributes();
    bad.truncate(bad.len() - 8);
    bad.extend_from_slice(&[4, 0, 0, 0, 9, 0, b'x', b'y']);
    bad.extend_from_slice(&[0, 0, 0, 0]);
    let v = Message::decode(0, 0, 0, 0, &bad, None).unwrap();
    assert_eq!(v.keys().count(), 0);
}

#[test]
fn a_value_that_is_not_utf8_is_no_text_but_keeps_its_bytes() {
    // (A broker stores only UTF-8; a filter must still not misread what it is given.)
    let mut attrs = TestMessage::new().attributes();
    attrs.truncate(attrs.len() - 4);
    let mut prop = vec![1, 0, b'a', 2, 0, 0, 0, 0xff, b'x'];
    attrs.extend_from_slice(&(prop.len() as u32).to_le_bytes());
    attrs.append(&mut prop);
    let v = Message::decode(0, 0, 0, 0, &attrs, None).unwrap();
    assert_eq!(v.property("a"), None);
    assert_eq!(v.property_bytes("a"), Some(&[0xff, b'x'][..]));
    let mut found = [Some("stale")];
    v.properties_of(&["a"], &mut found);
    assert_eq!(found, [None]);
}

#[test]
fn run_natively() {
    let msgs = [
        TestMessage::new().tags("A").key("k2"),
        TestMessage::new().tags("A").key("k1"),
        TestMessage::new().tags("B").key("k2"),
    ];
    assert_eq!(run::<TagAndKey>(&[], &msgs).unwrap(), [true, false, false]);
    let e = run::<TagAndKey>(&[("x", "1")], &msgs).unwrap_err();
    assert!(e.contains("unknown parameter \"x\""), "{e}");
}

#[test]
fn params() {
    let p = Params::new(vec![
        ("n".into(), "10".into()),
        ("n".into(), "12".into()),
        ("on".into(), "Yes".into()),
        ("bad".into(), "x1".into()),
    ]);
    assert_eq!(p.require_parsed::<u32>("n").unwrap(), 12);
    assert_eq!(p.get_all("n").collect::<Vec<_>>(), ["10", "12"]);
    assert!(p.flag("on", false).unwrap());
    assert!(p.flag("off", false).is_ok_and(|v| !v));
    let e = p.require_parsed::<u32>("bad").unwrap_err().0;
    assert!(e.contains("\"bad\"") && e.contains("u32"), "{e}");
    assert!(p.require("missing").unwrap_err().0.contains("missing"));
    assert!(p.flag("bad", false).is_err());
}

struct Recent;
impl Filter for Recent {
    const NEEDS_BODY: bool = true;
    fn init(_: &Params) -> Result<Self, ParamError> {
        log(Level::Info, "natively on stderr");
        Ok(Recent)
    }
    fn keep(&mut self, msg: &Message<'_>) -> bool {
        msg.born_timestamp() >= 10
            && msg.store_timestamp() >= msg.born_timestamp()
            && msg.reconsume_count() == 0
            && msg.body_str() == Some("b")
            && msg.queue_offset() == 3
    }
}

#[test]
fn test_messages_carry_every_field() {
    let base = TestMessage::new()
        .born_timestamp(10)
        .store_timestamp(11)
        .queue_offset(3)
        .body("b");
    let msgs = [
        base.clone(),
        base.clone().reconsume_count(1),
        base.clone().born_timestamp(9),
        base.clone().body("c"),
        base.queue_offset(4),
    ];
    assert_eq!(
        run::<Recent>(&[], &msgs).unwrap(),
        [true, false, false, false, false]
    );
    assert_eq!(Level::Warn.as_str(), "warn");
}

#[test]
fn packed_entries_out_of_shape_fail_the_batch() {
    let ctx = || wit::BatchContext {
        topic: "t".into(),
        queue_id: 0,
        consumer_group: "g".into(),
    };
    let failed = |r: Result<Vec<bool>, wit::FilterError>| match r {
        Err(wit::FilterError::Failed(m)) => m,
        other => panic!("expected a failed batch, got {other:?}"),
    };
    let attrs = TestMessage::new().tags("A").key("k2").attributes();
    let entry = |attrs_at: u32, attrs_len: u32| {
        let mut e = Vec::new();
        for x in [5u64, 1, 2] {
            e.extend_from_slice(&x.to_le_bytes());
        }
        for x in [0u32, attrs_at, attrs_len, 0, 0] {
            e.extend_from_slice(&x.to_le_bytes());
        }
        e
    };
    let good = entry(0, attrs.len() as u32);
    assert_eq!(good.len(), __private::ENTRY_BYTES);
    let run_batch = |entries: &[u8]| __private::run_batch(&mut TagAndKey, ctx(), entries, &attrs);
    assert_eq!(run_batch(&good).unwrap(), [true]);
    assert_eq!(run_batch(&[]).unwrap(), Vec::<bool>::new());
    // Not a whole number of entries.
    let m = failed(run_batch(&good[..40]));
    assert!(m.contains("not a whole number"), "{m}");
    // Attributes past the data, and a length that overflows.
    for bad in [entry(1, attrs.len() as u32), entry(u32::MAX, 2)] {
        let m = failed(run_batch(&bad));
        assert!(
            m.contains("queue offset 5") && m.contains("malformed"),
            "{m}"
        );
    }
}
