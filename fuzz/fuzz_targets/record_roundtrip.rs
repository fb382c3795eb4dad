//! Encode → probe: any message the store accepts encodes to a record that `probe` accepts
//! at exactly its offset and length, that parses back to the same message, and whose
//! filter attributes are what the filter SDK encodes for the same message.

#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weir_filter_sdk::testing::TestMessage;
use weir_protocol::record::{self, Assigned, Message, Probe, RecordView, canonical_addr};

#[derive(Arbitrary, Debug)]
struct Input {
    topic: String,
    queue_id: u32,
    flag: u32,
    sys_flag: u32,
    born_timestamp: i64,
    born_host: Addr,
    tags: String,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
    body: Vec<u8>,
    reconsume_times: u32,
    prepared_tx_offset: u64,
    queue_offset: u64,
    commit_log_offset: u64,
    store_timestamp: i64,
    store_host: Addr,
    /// Bytes after the record in the segment window.
    tail: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl Addr {
    fn get(&self) -> SocketAddr {
        match *self {
            Addr::V4(ip, port) => SocketAddr::new(IpAddr::from(ip), port),
            Addr::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
        }
    }
}

fuzz_target!(|input: Input| {
    let msg = Message {
        topic: input.topic,
        queue_id: input.queue_id,
        flag: input.flag,
        sys_flag: input.sys_flag,
        born_timestamp: input.born_timestamp,
        born_host: input.born_host.get(),
        tags: input.tags,
        keys: input.keys,
        properties: input.properties,
        body: input.body,
        reconsume_times: input.reconsume_times,
        prepared_tx_offset: input.prepared_tx_offset,
    };
    let a = Assigned {
        queue_offset: input.queue_offset,
        commit_log_offset: input.commit_log_offset,
        store_timestamp: input.store_timestamp,
        store_host: input.store_host.get(),
    };
    let Ok(len) = msg.encoded_len() else {
        return;
    };
    let rec = record::encode_to_vec(&msg, &a).expect("encoded_len accepted it");
    assert_eq!(rec.len(), len);

    let mut window = rec.clone();
    window.extend_from_slice(&input.tail);
    assert_eq!(
        record::probe(&window, a.commit_log_offset),
        Probe::Message(len)
    );
    assert!(matches!(
        record::probe(&window, a.commit_log_offset.wrapping_add(1)),
        Probe::Invalid(_)
    ));

    let v = RecordView::parse_verified(&rec).expect("parses");
    let mut expect = msg.clone();
    expect.born_host = canonical_addr(msg.born_host);
    assert_eq!(v.to_message(), expect);
    assert_eq!(v.queue_offset(), a.queue_offset);
    assert_eq!(v.store_timestamp(), a.store_timestamp);
    assert_eq!(v.store_host(), canonical_addr(a.store_host));
    assert_eq!(
        v.message_id().to_string().parse().ok(),
        Some(v.message_id())
    );

    let fm = record::filter_message(&rec).expect("filter parts");
    let test = TestMessage {
        tags: msg.tags.clone(),
        keys: msg.keys.clone(),
        properties: msg.properties.clone(),
        ..TestMessage::default()
    };
    assert_eq!(fm.attributes, &test.attributes()[..]);
    assert_eq!(fm.body, &msg.body[..]);
});
