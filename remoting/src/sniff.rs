//! Telling protocols apart by a connection's first bytes, so one port can serve weir's
//! own frame, RocketMQ's remoting frame and TLS.
//!
//! Frames of both protocols start with a 4-byte big-endian length, whose first byte is 0
//! for any frame under 16 MiB. Byte 4 is then RocketMQ's serialize type (0 JSON, 1
//! ROCKETMQ) and weir's frame version (2 and up: never 0 or 1). A TLS connection starts
//! with a handshake record: 0x16, then version major 3.

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello.
    Tls,
    /// RocketMQ's remoting frame.
    Remoting,
    /// Neither: for the caller's own protocol to judge.
    Other,
}

/// Bytes [`sniff`] needs to decide.
pub const SNIFF_LEN: usize = 5;

/// Classifies a connection by its first [`SNIFF_LEN`] bytes (fewer: `Other` unless the
/// first two already say TLS).
pub fn sniff(first: &[u8]) -> Sniffed {
    match first {
        [0x16, 0x03, ..] => Sniffed::Tls,
        [0, _, _, _, 0 | 1, ..] => Sniffed::Remoting,
        _ => Sniffed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RemotingCommand;
    use crate::SerializeType;

    #[test]
    fn frames_and_handshakes_are_told_apart() {
        for st in [SerializeType::Json, SerializeType::RocketMq] {
            let mut cmd = RemotingCommand::request(105, 1).with("topic", "T");
            cmd.serialize_type = st;
            let wire = cmd.to_bytes().unwrap();
            assert_eq!(sniff(&wire[..SNIFF_LEN]), Sniffed::Remoting);
        }
        // A TLS 1.2/1.3 ClientHello record header.
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
        // weir's frame: length, then version 2.
        assert_eq!(sniff(&[0, 0, 0, 40, 2]), Sniffed::Other);
        assert_eq!(sniff(&[0, 0, 0]), Sniffed::Other);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniffed::Other);
    }
}
