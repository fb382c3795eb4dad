//! The frame decoder: `Frame::decode` on one frame's bytes, and `read_frame` reading a
//! stream of frames. Whatever decodes re-encodes to exactly the bytes it came from.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir_protocol::frame::{self, Frame};

/// Small, so that a length prefix cannot make the target allocate much.
const MAX_FRAME: usize = 64 << 10;

/// Reading from a slice never waits, so one poll finishes the future.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from a slice returned Pending"),
    }
}

fn reencode(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    f.encode(&mut out, usize::MAX)
        .expect("a decoded frame encodes");
    out
}

fuzz_target!(|data: &[u8]| {
    // One frame's bytes, after the length field.
    if let Ok(f) = Frame::decode(Bytes::copy_from_slice(data)) {
        let out = reencode(&f);
        assert_eq!(&out[4..], data);
        assert_eq!(out.len(), f.wire_len());
    }

    // A stream of length-prefixed frames.
    let mut rest = data;
    loop {
        let before = rest;
        match now(frame::read_frame(&mut rest, MAX_FRAME)) {
            Ok(Some(f)) => {
                let used = before.len() - rest.len();
                assert_eq!(&reencode(&f)[..], &before[..used]);
            }
            Ok(None) => {
                assert!(before.is_empty());
                break;
            }
            Err(_) => break,
        }
    }
});
