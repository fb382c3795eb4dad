//! Round trips, damage and edge cases of the record format.

use super::*;

fn sample() -> Message {
    let mut m = Message::new("TopicA", 3, b"hello body".to_vec())
        .with_tags("TagA")
        .with_key("k1")
        .with_key("order-42")
        .with_property("a", "1")
        .with_property("empty", "");
    m.born_host = "10.1.2.3:5555".parse().unwrap();
    m.born_timestamp = 1_700_000_000_000;
    m.reconsume_times = 2;
    m.flag = 7;
    m
}

fn encode(m: &Message, offset: u64) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len().unwrap()];
    let a = Assigned {
        queue_offset: 9,
        commit_log_offset: offset,
        store_timestamp: 1_700_000_000_123,
        store_host: "[::1]:10911".parse().unwrap(),
    };
    encode_into(m, &a, &mut buf);
    buf
}

#[test]
fn attributes_and_body_agree_with_the_view() {
    let buf = encode(&sample(), 0);
    let v = RecordView::parse(&buf).unwrap();
    let (attributes, body) = attributes_and_body(&buf).unwrap();
    let start = pos::VARIABLE + 2 + v.topic().len();
    assert_eq!(attributes, &buf[start..buf.len() - 4 - v.body().len()]);
    assert_eq!(body, b"hello body");
    // tag "TagA", then the keys and properties sections.
    assert_eq!(&attributes[..6], b"\x04\x00TagA");
    assert_eq!(
        attributes.len(),
        6 + 4 + (2 + 2) + (2 + 8) + 4 + (2 + 1 + 4 + 1) + (2 + 5 + 4)
    );
    // A corrupted length never yields out-of-range slices.
    for at in pos::VARIABLE..buf.len() {
        let mut bad = buf.clone();
        bad[at] ^= 0xff;
        if let Ok((a, b)) = attributes_and_body(&bad) {
            assert!(a.len() + b.len() < bad.len());
        }
    }
    assert!(attributes_and_body(&buf[..buf.len() - 1]).is_err());
}

#[test]
fn body_len_reads_lengths_only_and_agrees_with_the_view() {
    let buf = encode(&sample(), 0);
    assert_eq!(RecordView::body_len(&buf).unwrap(), b"hello body".len());
    assert!(RecordView::body_len(&buf[..buf.len() - 1]).is_err());
    // Text that is not UTF-8 fails the view but not the count.
    let mut bad_topic = buf.clone();
    bad_topic[pos::VARIABLE + 2] = 0xff;
    assert!(RecordView::parse(&bad_topic).is_err());
    assert_eq!(RecordView::body_len(&bad_topic).unwrap(), 10);
    // A corrupted length never yields a length past the record.
    for at in pos::VARIABLE..buf.len() {
        let mut bad = buf.clone();
        bad[at] ^= 0xff;
        if let Ok(n) = RecordView::body_len(&bad) {
            assert!(n < bad.len());
        }
    }
}

#[test]
fn round_trip() {
    let m = sample();
    let buf = encode(&m, 4096);
    assert_eq!(probe(&buf, 4096), Probe::Message(buf.len()));
    let v = RecordView::parse_verified(&buf).unwrap();
    assert_eq!(v.to_message(), m);
    assert_eq!(v.queue_offset(), 9);
    assert_eq!(v.commit_log_offset(), 4096);
    assert_eq!(v.store_timestamp(), 1_700_000_000_123);
    assert_eq!(v.store_host(), "[::1]:10911".parse().unwrap());
    assert_eq!(v.property("a"), Some("1"));
    assert_eq!(v.property("zz"), None);
}

#[test]
fn probe_rejects_damage_and_other_positions() {
    let buf = encode(&sample(), 100);
    assert!(matches!(probe(&buf, 101), Probe::Invalid(_)));
    for i in 0..buf.len() {
        let mut b = buf.clone();
        b[i] ^= 0x5a;
        assert!(
            matches!(probe(&b, 100), Probe::Invalid(_)),
            "flip at {i} undetected"
        );
    }
    for cut in 0..buf.len() {
        assert!(matches!(probe(&buf[..cut], 100), Probe::Invalid(_)));
    }
    assert!(matches!(
        probe(&[0u8; 64], 0),
        Probe::Invalid("end of data")
    ));
}

#[test]
fn probe_frame_walks_frames_and_leaves_contents_to_crc_ok() {
    let buf = encode(&sample(), 100);
    assert_eq!(probe_frame(&buf, 100), Probe::Message(buf.len()));
    assert!(crc_ok(&buf));
    assert!(matches!(probe_frame(&buf, 101), Probe::Invalid(_)));
    for cut in 0..buf.len() {
        assert!(matches!(probe_frame(&buf[..cut], 100), Probe::Invalid(_)));
    }
    // A flipped body byte: the frame still walks, the checksum does not hold.
    let mut b = buf.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert_eq!(probe_frame(&b, 100), Probe::Message(buf.len()));
    assert!(!crc_ok(&b));
    assert!(!crc_ok(&b[..RECORD_OVERHEAD - 1]));
}

#[test]
fn blank_filler() {
    let mut b = vec![0u8; 40];
    encode_blank(&mut b);
    assert_eq!(probe(&b, 0), Probe::Blank(40));
    assert!(matches!(probe(&b[..39], 0), Probe::Invalid(_)));
}

#[test]
fn rejects_bad_messages() {
    for t in ["", ".", "..", "a/b", "a\0b"] {
        assert!(Message::new(t, 0, vec![]).encoded_len().is_err(), "{t:?}");
    }
    assert!(
        Message::new("t", 0, vec![])
            .with_key("")
            .encoded_len()
            .is_err()
    );
    let long_tag = "x".repeat(70_000);
    assert!(
        Message::new("t", 0, vec![])
            .with_tags(long_tag)
            .encoded_len()
            .is_err()
    );
}

#[test]
fn message_id_round_trips() {
    for host in ["127.0.0.1:10911", "[2001:db8::7]:9"] {
        let id = MessageId {
            store_host: host.parse().unwrap(),
            offset: 0x0123_4567_89ab_cdef,
        };
        let s = id.to_string();
        assert_eq!(s.parse::<MessageId>().unwrap(), id);
        assert_eq!(id.to_text(), s);
    }
    assert_eq!(
        MessageId {
            store_host: "127.0.0.1:10911".parse().unwrap(),
            offset: 5
        }
        .to_string(),
        "7F00000100002A9F0000000000000005"
    );
    for bad in [
        "",
        "zz",
        "7F00000100002A9F000000000000000G",
        "7F000001FFFFFFFF0000000000000005",
    ] {
        assert!(bad.parse::<MessageId>().is_err(), "{bad}");
    }
}

#[test]
fn tag_hash_is_stable() {
    assert_eq!(tag_hash(""), 0);
    assert_eq!(tag_hash("a"), 0xaf63_dc4c_8601_ec8c);
    assert_ne!(tag_hash("TagA"), tag_hash("TagB"));
}
