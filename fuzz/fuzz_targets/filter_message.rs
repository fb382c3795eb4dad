//! The WIT message encoding: how the broker turns a stored record into a filter's
//! `message` (`record::filter_message`: fixed fields, attribute bytes, body), and how the
//! filter SDK decodes those attributes in the guest. Neither panics on any bytes, and for
//! a record that parses, the guest sees exactly what the record holds. A batch is built
//! the way the broker builds it: attributes back to back, each message locating its own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_filter_sdk::Message as GuestMessage;
use weir_protocol::RecordView;
use weir_protocol::broker::split_records;
use weir_protocol::record;

fn exercise_guest(m: &GuestMessage<'_>) {
    let _ = (m.queue_offset(), m.born_timestamp(), m.store_timestamp());
    let _ = (m.reconsume_count(), m.tags(), m.body(), m.body_str());
    let keys: Vec<&str> = m.keys().collect();
    let props: Vec<(&str, &str)> = m.properties().collect();
    let names: Vec<&str> = props
        .iter()
        .map(|(k, _)| *k)
        .chain(keys.iter().copied())
        .collect();
    let mut values = vec![None; names.len()];
    m.properties_of(&names, &mut values);
    for (name, v) in names.iter().zip(&values) {
        // The one-pass lookup agrees with the single lookup.
        assert_eq!(m.property(name), *v, "{name}");
    }
}

/// One record through the broker's conversion and the guest's decoding.
fn one(bytes: &[u8], attributes: &mut Vec<u8>) -> Option<(usize, usize)> {
    let fm = record::filter_message(bytes).ok()?;
    let at = attributes.len();
    attributes.extend_from_slice(fm.attributes);
    let guest = GuestMessage::decode(
        fm.queue_offset,
        fm.born_timestamp,
        fm.store_timestamp,
        fm.reconsume_count,
        fm.attributes,
        Some(fm.body),
    );
    if let Some(g) = &guest {
        exercise_guest(g);
    }
    if let Ok(v) = RecordView::parse(bytes) {
        let g = guest.expect("the guest decodes what the store parses");
        assert_eq!(g.tags(), v.tags());
        assert!(g.keys().eq(v.keys()));
        assert!(g.properties().eq(v.properties()));
        assert_eq!(g.body(), Some(v.body()));
        assert_eq!(g.queue_offset(), v.queue_offset());
        assert_eq!(g.born_timestamp(), v.born_timestamp());
        assert_eq!(g.store_timestamp(), v.store_timestamp());
        assert_eq!(g.reconsume_count(), v.reconsume_times());
    }
    Some((at, fm.attributes.len()))
}

fuzz_target!(|data: &[u8]| {
    let mut attributes = Vec::new();
    one(data, &mut attributes);

    // A pulled body of several records, as one batch.
    let Ok(records) = split_records(data) else {
        return;
    };
    let mut attributes = Vec::new();
    let spans: Vec<(usize, usize)> = records
        .iter()
        .filter_map(|r| one(r, &mut attributes))
        .collect();
    for (at, len) in spans {
        let slice = attributes.get(at..at + len).expect("span within the batch");
        let _ = GuestMessage::decode(0, 0, 0, 0, slice, None);
    }
});
