//! Every request and response header the broker, the name server and the client decode
//! from the network (`decode_header`); the first byte picks the type. Whatever decodes
//! re-encodes and decodes to an equal value.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use weir_protocol::bincode::{Decode, Encode};
use weir_protocol::admin::*;
use weir_protocol::broker::*;
use weir_protocol::filter::*;
use weir_protocol::route::*;
use weir_protocol::rpc::{ErrorHeader, decode_header, encode_header};
use weir_protocol::{MessageId, broker};

fn round_trip<T: Encode + Decode<()> + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let v: T = decode_header(bytes, "fuzz").ok()?;
    let enc = encode_header(&v, "fuzz").expect("a decoded header encodes");
    let back: T = decode_header(&enc, "fuzz").expect("an encoded header decodes");
    assert_eq!(v, back);
    let again = encode_header(&back, "fuzz").expect("encodes");
    assert_eq!(enc, again);
    Some(v)
}

fn rt<T: Encode + Decode<()> + PartialEq + Debug>(bytes: &[u8]) {
    round_trip::<T>(bytes);
}

/// What the broker parses further out of a header: a message id (view by id).
fn view_by_id(bytes: &[u8]) {
    if let Some(v) = round_trip::<ViewMessageById>(bytes)
        && let Ok(id) = v.msg_id.parse::<MessageId>()
    {
        assert_eq!(id.to_string().parse::<MessageId>().ok(), Some(id));
        assert!(id.to_string().eq_ignore_ascii_case(&v.msg_id));
    }
}

/// The body of a broker's registration: its topics (too many for a header).
fn registered_topics(bytes: &[u8]) {
    if let Ok(t) = RegisteredTopics::decode(bytes) {
        let enc = t.encode().expect("decoded topics encode");
        assert_eq!(RegisteredTopics::decode(&enc).ok(), Some(t));
    }
}

const TYPES: &[fn(&[u8])] = &[
    // Broker requests.
    rt::<SendMessage>,
    rt::<SendBatch>,
    rt::<PullMessage>,
    rt::<QueryConsumerOffset>,
    rt::<UpdateConsumerOffset>,
    rt::<GetQueueOffsets>,
    rt::<SearchOffsetByTimestamp>,
    rt::<CreateTopic>,
    rt::<DeleteTopic>,
    rt::<ResetOffset>,
    rt::<OffsetsReset>,
    rt::<DeleteGroup>,
    rt::<GroupDeleted>,
    rt::<GetBrokerStats>,
    rt::<BrokerStats>,
    rt::<GetBrokerConfig>,
    rt::<SetBrokerConfig>,
    rt::<BrokerSettings>,
    rt::<GetMessageTrail>,
    rt::<MessageTrail>,
    rt::<GetGroupSummaries>,
    rt::<GroupSummaries>,
    rt::<GetTopicStats>,
    rt::<QueryMessageByKey>,
    view_by_id,
    rt::<Heartbeat>,
    rt::<UnregisterClient>,
    rt::<GetConsumerList>,
    rt::<GetConsumerConnections>,
    rt::<NotifyConsumerIdsChanged>,
    rt::<ConsumerSendMsgBack>,
    rt::<LockBatchMq>,
    rt::<UnlockBatchMq>,
    rt::<GetConsumeStats>,
    rt::<UploadFilter>,
    rt::<ListFilters>,
    rt::<RemoveFilter>,
    rt::<ResetFilter>,
    // Name server requests.
    rt::<RegisterBroker>,
    registered_topics,
    rt::<UnregisterBroker>,
    rt::<GetRoute>,
    rt::<GetClusterInfo>,
    rt::<GetAllTopics>,
    rt::<GetTopicSummaries>,
    // Responses (the client decodes them).
    rt::<ErrorHeader>,
    rt::<()>,
    rt::<SendResult>,
    rt::<SendBatchResult>,
    rt::<PullResult>,
    rt::<ConsumerOffset>,
    rt::<QueueOffsets>,
    rt::<OffsetAnswer>,
    rt::<TopicStats>,
    rt::<RecordCount>,
    rt::<ConsumerList>,
    rt::<ConsumerConnections>,
    rt::<SentBack>,
    rt::<LockedQueues>,
    rt::<ConsumeStats>,
    rt::<RegisterBrokerResponse>,
    rt::<TopicRoute>,
    rt::<ClusterInfo>,
    rt::<TopicList>,
    rt::<TopicSummaries>,
    rt::<FilterUploaded>,
    rt::<FilterList>,
    rt::<FilterRemoved>,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    TYPES[usize::from(pick) % TYPES.len()](rest);
    // A pull's body, as the client splits it.
    let _ = broker::split_records(rest);
});
