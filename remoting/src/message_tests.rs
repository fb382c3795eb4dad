//! Tests of `message`.

use super::*;

fn sample(born: SocketAddr, store: SocketAddr) -> MessageExt {
    MessageExt {
        topic: "TopicTest".into(),
        queue_id: 3,
        flag: 7,
        queue_offset: 42,
        commit_log_offset: 1 << 33,
        sys_flag: sys_flag::MULTI_TAGS,
        born_timestamp: 1_700_000_000_000,
        born_host: born,
        store_timestamp: 1_700_000_000_001,
        store_host: store,
        reconsume_times: 2,
        prepared_transaction_offset: 0,
        body: Bytes::from_static(b"hello"),
        properties: encode_properties([("TAGS", "TagA"), ("KEYS", "k1 k2")]),
    }
}

#[test]
fn messages_round_trip_with_v4_and_v6_hosts() {
    let v4: SocketAddr = "10.0.0.1:10911".parse().unwrap();
    let v6: SocketAddr = "[::1]:10911".parse().unwrap();
    let mut buf = BytesMut::new();
    let msgs = [sample(v4, v4), sample(v6, v4), sample(v4, v6)];
    for m in &msgs {
        let before = buf.len();
        m.encode(&mut buf).unwrap();
        assert_eq!(buf.len() - before, m.encoded_len());
    }
    let back = MessageExt::decode_all(&buf.freeze()).unwrap();
    assert_eq!(back.len(), 3);
    for (a, b) in msgs.iter().zip(&back) {
        assert_eq!(a.wire_sys_flag(), b.sys_flag);
        let mut b = b.clone();
        b.sys_flag = a.sys_flag;
        assert_eq!(*a, b);
    }
}

/// Byte positions `MessageDecoder` reads directly (`PHY_POS_POSITION`,
/// `QUEUE_OFFSET_POSITION`, `SYSFLAG_POSITION`).
#[test]
fn fixed_positions_match_rocketmq() {
    let m = sample("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let mut buf = BytesMut::new();
    m.encode(&mut buf).unwrap();
    let i64_at = |p: usize| i64::from_be_bytes(buf[p..p + 8].try_into().unwrap());
    let i32_at = |p: usize| i32::from_be_bytes(buf[p..p + 4].try_into().unwrap());
    assert_eq!(i32_at(4), MESSAGE_MAGIC_CODE);
    assert_eq!(i32_at(16), 7, "MESSAGE_FLAG_POSTION");
    assert_eq!(i64_at(20), 42, "QUEUE_OFFSET_POSITION");
    assert_eq!(i64_at(28), 1 << 33, "PHY_POS_POSITION");
    assert_eq!(i32_at(36), sys_flag::MULTI_TAGS, "SYSFLAG_POSITION");
    assert_eq!(i32_at(8), body_crc(b"hello"));
}

#[test]
fn offset_msg_id_matches_rocketmq() {
    // 127.0.0.1:10911, offset 0x1234: what a RocketMQ broker would print.
    let id = offset_msg_id("127.0.0.1:10911".parse().unwrap(), 0x1234);
    assert_eq!(id, "7F00000100002A9F0000000000001234");
    assert_eq!(
        parse_offset_msg_id(&id).unwrap(),
        ("127.0.0.1:10911".parse().unwrap(), 0x1234)
    );
    let v6 = offset_msg_id("[::1]:1".parse().unwrap(), 5);
    assert_eq!(v6.len(), 56);
    assert_eq!(parse_offset_msg_id(&v6).unwrap().1, 5);
    for bad in ["", "XYZ", "7F00000100002A9F000000000000123G", "7F0000010"] {
        assert!(parse_offset_msg_id(bad).is_err(), "{bad}");
    }
}

#[test]
fn properties_as_java_splits_them() {
    let s = encode_properties([("TAGS", "a"), ("KEYS", "k1 k2"), ("UNIQ_KEY", "X")]);
    assert_eq!(s, "TAGS\u{1}a\u{2}KEYS\u{1}k1 k2\u{2}UNIQ_KEY\u{1}X");
    let back = decode_properties(&s);
    assert_eq!(back[1], ("KEYS".to_string(), "k1 k2".to_string()));
    // Empty names or values and separators alone are dropped; duplicates replace.
    let odd = "\u{2}\u{1}v\u{2}k\u{1}\u{2}a\u{1}1\u{2}a\u{1}2\u{2}";
    assert_eq!(decode_properties(odd), vec![("a".into(), "2".into())]);
    assert!(decode_properties("").is_empty());
}

#[test]
fn many_properties_keep_their_order_and_the_last_of_each_name() {
    let n = 200_000;
    let mut s: String = (0..n).map(|i| format!("k{i}\u{1}v{i}\u{2}")).collect();
    s.push_str("k7\u{1}again");
    let got = decode_properties(&s);
    assert_eq!(got.len(), n);
    assert_eq!(got[0], ("k0".into(), "v0".into()));
    assert_eq!(
        got[7],
        ("k7".into(), "again".into()),
        "a duplicate replaces in place"
    );
    assert_eq!(got[n - 1], (format!("k{}", n - 1), format!("v{}", n - 1)));
}

#[test]
fn batches_round_trip_and_lies_are_refused() {
    let entries = vec![
        BatchEntry {
            flag: 0,
            body: Bytes::from_static(b"one"),
            properties: encode_properties([("TAGS", "t")]),
        },
        BatchEntry {
            flag: 1,
            body: Bytes::new(),
            properties: String::new(),
        },
    ];
    let body = encode_batch(&entries).unwrap();
    assert_eq!(decode_batch(&body).unwrap(), entries);
    let first_len = 4 * 5 + 3 + 2 + entries[0].properties.len();
    for cut in (1..body.len()).filter(|&c| c != first_len) {
        assert!(decode_batch(&body.slice(..cut)).is_err(), "cut at {cut}");
    }
    let mut lie = body.to_vec();
    lie[3] = lie[3].wrapping_add(1);
    assert!(decode_batch(&Bytes::from(lie)).is_err());
}

#[test]
fn compressed_bodies_inflate_within_a_limit() {
    use std::io::Write;
    let plain = vec![b'x'; 10_000];
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
    enc.write_all(&plain).unwrap();
    let z = enc.finish().unwrap();
    let flag = sys_flag::COMPRESSED;
    assert_eq!(decompress(flag, &z, 1 << 20).unwrap(), plain);
    assert_eq!(
        decompress(flag | sys_flag::COMPRESSION_ZLIB, &z, 1 << 20).unwrap(),
        plain
    );
    assert!(matches!(
        decompress(flag, &z, 9_999),
        Err(RemotingError::TooLong { .. })
    ));
    assert!(decompress(flag | (1 << 8), &z, 1 << 20).is_err());
    assert!(decompress(flag, b"not zlib", 1 << 20).is_err());
}

#[test]
fn truncated_messages_are_errors() {
    let m = sample("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let mut buf = BytesMut::new();
    m.encode(&mut buf).unwrap();
    let buf = buf.freeze();
    for cut in 1..buf.len() {
        assert!(MessageExt::decode_all(&buf.slice(..cut)).is_err(), "{cut}");
    }
    let mut long = m.clone();
    long.topic = "t".repeat(128);
    assert!(long.encode(&mut BytesMut::new()).is_err());
}

#[test]
fn java_string_hash_matches_java() {
    assert_eq!(java_string_hash("TagA"), 2_598_919);
    assert_eq!(java_string_hash(""), 0);
    // "polygenelubricants".hashCode() == Integer.MIN_VALUE
    assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    // Outside the BMP: two UTF-16 units.
    assert_eq!(java_string_hash("😀"), 0xD83D * 31 + 0xDE00);
}
