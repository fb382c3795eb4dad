//! Tests of `command`.

use super::*;

fn roundtrip(cmd: &RemotingCommand) -> RemotingCommand {
    let wire = cmd.to_bytes().unwrap();
    let len = RemotingCommand::frame_len(wire[..4].try_into().unwrap(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(len, wire.len() - 4);
    RemotingCommand::decode(wire.slice(4..)).unwrap()
}

#[test]
fn both_header_encodings_round_trip() {
    for st in [SerializeType::Json, SerializeType::RocketMq] {
        let mut cmd = RemotingCommand::request(310, 42)
            .with("topic", "TopicTest")
            .with("queueId", 3)
            .with("b", "TopicTest")
            .with_body(&b"hello"[..]);
        cmd.serialize_type = st;
        cmd.remark = Some("why".into());
        let back = roundtrip(&cmd);
        assert_eq!(back, cmd, "{st:?}");
        assert_eq!(back.num::<u32>("queueId").unwrap(), 3);
        let resp = RemotingCommand::response_to(&back, 0, None);
        assert!(resp.is_response());
        assert_eq!(roundtrip(&resp).serialize_type, st);
    }
}

#[test]
fn parts_carry_a_frame_through_a_driver() {
    for st in [SerializeType::Json, SerializeType::RocketMq] {
        let mut cmd = RemotingCommand::request(11, 9)
            .with("topic", "T")
            .with_body(&b"xyz"[..])
            .oneway();
        cmd.serialize_type = st;
        let wire = cmd.to_bytes().unwrap();
        let (typed, body, code, opaque, flag) =
            RemotingCommand::split_frame(&wire.slice(4..)).unwrap();
        assert_eq!((code, opaque, flag), (11, 9, FLAG_ONEWAY));
        assert_eq!(
            RemotingCommand::from_parts(&typed, body.clone()).unwrap(),
            cmd
        );
        assert_eq!(cmd.header_parts().unwrap(), typed);
        let mut again = BytesMut::new();
        RemotingCommand::encode_parts(&typed, &body, &mut again).unwrap();
        assert_eq!(again.freeze(), wire);
    }
    assert!(RemotingCommand::from_parts(&[], Bytes::new()).is_err());
    assert!(RemotingCommand::from_parts(&[9, b'{', b'}'], Bytes::new()).is_err());
}

/// A header as the Java client (fastjson) writes it for `GET_ROUTEINFO_BY_TOPIC`.
#[test]
fn reads_a_java_client_json_request() {
    let header = br#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":435}"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(header.len() as i32).to_be_bytes());
    frame.extend_from_slice(header);
    let cmd = RemotingCommand::decode(Bytes::from(frame)).unwrap();
    assert_eq!(cmd.code, 105);
    assert_eq!(cmd.opaque, 3);
    assert_eq!(cmd.language, LanguageCode::Java);
    assert_eq!(cmd.field("topic").unwrap(), "TopicTest");
    assert!(!cmd.is_response() && !cmd.is_oneway());
    assert!(cmd.body.is_empty());
}

/// Go's client sends numbers and nulls in places; all are read as their text.
#[test]
fn lenient_with_scalar_field_values() {
    let header =
        br#"{"code":11,"language":9,"extFields":{"queueId":2,"x":null,"b":true},"unknown":[1]}
"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(header.len() as i32).to_be_bytes());
    frame.extend_from_slice(header);
    let cmd = RemotingCommand::decode(Bytes::from(frame)).unwrap();
    assert_eq!(cmd.language, LanguageCode::Go);
    assert_eq!(cmd.num::<i32>("queueId").unwrap(), 2);
    assert_eq!(cmd.opt_bool("b"), Some(true));
    assert_eq!(cmd.opt_field("x"), None);
}

fn json_frame(header: &str) -> Bytes {
    let mut frame = Vec::new();
    frame.extend_from_slice(&(header.len() as i32).to_be_bytes());
    frame.extend_from_slice(header.as_bytes());
    Bytes::from(frame)
}

/// A header's ext fields are bounded in number, and only scalars are taken: what a
/// header decodes into stays about its own size.
#[test]
fn ext_fields_are_bounded_and_scalar() {
    let fields = |n: usize| {
        let body: Vec<String> = (0..n).map(|i| format!("\"f{i}\":{i}")).collect();
        format!(r#"{{"code":10,"extFields":{{{}}}}}"#, body.join(","))
    };
    let cmd = RemotingCommand::decode(json_frame(&fields(MAX_EXT_FIELDS))).unwrap();
    assert_eq!(cmd.ext_fields.len(), MAX_EXT_FIELDS);
    assert_eq!(cmd.field("f7").unwrap(), "7");
    let err = RemotingCommand::decode(json_frame(&fields(MAX_EXT_FIELDS + 1))).unwrap_err();
    assert!(err.to_string().contains("more than 1024 fields"), "{err}");
    for nested in [r#"{"a":[1,2]}"#, r#"{"a":{"b":"c"}}"#] {
        let header = format!(r#"{{"code":10,"extFields":{nested}}}"#);
        let err = RemotingCommand::decode(json_frame(&header)).unwrap_err();
        assert!(
            err.to_string().contains("a string, number or boolean"),
            "{err}"
        );
    }
    // The binary header: the same bound.
    let mut cmd = RemotingCommand::request(10, 1);
    for i in 0..=MAX_EXT_FIELDS {
        cmd = cmd.with(&format!("f{i}"), i);
    }
    cmd.serialize_type = SerializeType::RocketMq;
    let wire = cmd.to_bytes().unwrap();
    let err = RemotingCommand::decode(wire.slice(4..)).unwrap_err();
    assert!(err.to_string().contains("more than 1024 fields"), "{err}");
}

/// A JSON header is an object: an array (which serde would read field by field) or a
/// scalar is refused, by the driver's peek as by the handler's decode.
#[test]
fn a_json_header_must_be_an_object() {
    for header in ["[34]", "[10,0,399,1,0]", " \"hi\"", "34", "null"] {
        let frame = json_frame(header);
        let err = RemotingCommand::decode(frame.clone()).unwrap_err();
        assert!(
            matches!(err, RemotingError::BadJsonHeader(_)),
            "{header}: {err}"
        );
        assert!(RemotingCommand::split_frame(&frame).is_err(), "{header}");
    }
    let ok = json_frame(" \n{\"code\":34,\"opaque\":5}");
    assert_eq!(RemotingCommand::decode(ok.clone()).unwrap().code, 34);
    assert_eq!(RemotingCommand::split_frame(&ok).unwrap().2, 34);
}

#[test]
fn bad_input_is_an_error_never_a_panic() {
    assert!(RemotingCommand::frame_len((-1i32).to_be_bytes(), DEFAULT_MAX_FRAME).is_err());
    assert!(matches!(
        RemotingCommand::frame_len((32i32 << 20).to_be_bytes(), DEFAULT_MAX_FRAME),
        Err(RemotingError::FrameTooLarge { .. })
    ));
    // Header longer than the frame.
    let frame = Bytes::from(vec![0, 0, 0, 9, b'{']);
    assert!(RemotingCommand::decode(frame).is_err());
    // Unknown serialize type.
    assert!(matches!(
        RemotingCommand::decode(Bytes::from(vec![7, 0, 0, 0])),
        Err(RemotingError::UnknownSerializeType(7))
    ));
    // Every prefix of a valid binary frame fails cleanly.
    let mut cmd = RemotingCommand::request(10, 1).with("a", "b");
    cmd.serialize_type = SerializeType::RocketMq;
    let wire = cmd.to_bytes().unwrap();
    for cut in 4..wire.len() {
        assert!(
            RemotingCommand::decode(wire.slice(4..cut)).is_err(),
            "a frame cut at {cut} of {} decoded",
            wire.len()
        );
    }
    // A negative length inside the binary header.
    let mut h = vec![0, 10, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    h.extend_from_slice(&(-5i32).to_be_bytes());
    let mut frame = ((1u32 << 24) | h.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&h);
    assert!(RemotingCommand::decode(Bytes::from(frame)).is_err());
    // A field that is not a number.
    let cmd = RemotingCommand::request(10, 1).with("queueId", "x");
    assert!(matches!(
        cmd.num::<u32>("queueId"),
        Err(RemotingError::BadField { .. })
    ));
    assert!(matches!(
        cmd.num::<u32>("absent"),
        Err(RemotingError::MissingField(_))
    ));
}
