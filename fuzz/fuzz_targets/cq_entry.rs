//! The consume queue entry decoder (20 bytes: commit log offset, size, tag hash): every
//! entry decodes, and re-encodes to its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_store::fuzzing::{CQ_ENTRY_SIZE, decode_cq_entry, encode_cq_entry};

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(CQ_ENTRY_SIZE) {
        let bytes: &[u8; CQ_ENTRY_SIZE] = chunk.try_into().expect("exact chunk");
        let (offset, size, tag_hash) = decode_cq_entry(bytes);
        assert_eq!(&encode_cq_entry(offset, size, tag_hash), bytes);
    }
});
