//! RocketMQ's remoting codec on untrusted bytes: a frame (both header encodings), the
//! messages of a pull body, a batch send's body, properties and JSON bodies. Nothing
//! panics; whatever decodes re-encodes to what decodes the same.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir_remoting::RemotingCommand;
use weir_remoting::body::{self, HeartbeatData, LockBatchRequestBody};
use weir_remoting::message::{self, MessageExt};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    // A frame after its length field; re-encoded, it decodes to the same command.
    if let Ok(cmd) = RemotingCommand::decode(bytes.clone()) {
        if let Ok(wire) = cmd.to_bytes() {
            let again = RemotingCommand::decode(wire.slice(4..)).expect("re-encoded frame decodes");
            assert_eq!(again.code, cmd.code);
            assert_eq!(again.opaque, cmd.opaque);
            assert_eq!(again.ext_fields, cmd.ext_fields);
            assert_eq!(again.body, cmd.body);
        }
    }
    let _ = RemotingCommand::split_frame(&bytes);
    let _ = RemotingCommand::from_parts(data, Bytes::new());
    // Messages of a pull answer; encoded again, they read back equal.
    if let Ok(msgs) = MessageExt::decode_all(&bytes) {
        let mut out = BytesMut::new();
        for m in &msgs {
            if m.encode(&mut out).is_err() {
                return;
            }
        }
        let back = MessageExt::decode_all(&out.freeze()).expect("re-encoded messages decode");
        assert_eq!(back.len(), msgs.len());
    }
    if let Ok(entries) = message::decode_batch(&bytes) {
        let again = message::encode_batch(&entries).expect("a decoded batch encodes");
        assert_eq!(message::decode_batch(&again).expect("decodes"), entries);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = message::decode_properties(s);
        let _ = message::parse_offset_msg_id(s);
    }
    let _ = message::decompress(message::sys_flag::COMPRESSED, data, 1 << 20);
    let _ = body::from_json::<HeartbeatData>(data, "heartbeat");
    let _ = body::from_json::<LockBatchRequestBody>(data, "lock");
});
