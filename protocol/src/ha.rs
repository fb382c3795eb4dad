//! Master/slave replication: what a slave and its master say on the master's HA port.
//!
//! A slave connects and says where its log ends ([`HaHello`], with the last bytes before
//! that end, which the master compares with its own: a slave whose log differs is refused).
//! The master then streams its log from there as it is stored ([`HaData`], one way, the
//! bytes in the body); the slave appends the same bytes at the same offsets and reports its
//! end ([`HaAck`], one way), after syncing them under sync flush. Every few seconds the
//! slave also fetches what else it follows: topics, consumer offsets (delay-level progress
//! included) and filter registrations ([`HaSync`], components by [`HaComponent`]).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::codes::RequestCode;
use crate::route::TopicConfig;
use crate::rpc::Rpc;

/// What a broker is in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerRole {
    /// Takes writes; acknowledges them without waiting for a slave.
    #[default]
    AsyncMaster,
    /// Takes writes; acknowledges them once a slave has them too.
    SyncMaster,
    /// Replicates its master; readable, never writable.
    Slave,
}

impl BrokerRole {
    pub fn is_master(self) -> bool {
        self != BrokerRole::Slave
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerRole::AsyncMaster => "async-master",
            BrokerRole::SyncMaster => "sync-master",
            BrokerRole::Slave => "slave",
        }
    }
}

/// Most log bytes before a slave's end that it sends for the master to compare.
pub const TAIL_LEN: usize = 64;

/// Slave → master, first on a connection: who it is and where its log ends.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HaHello {
    pub broker_name: String,
    pub broker_id: u64,
    /// The slave's log ends here.
    pub end: u64,
    /// The last bytes of the slave's log before `end` (at most [`TAIL_LEN`], within one
    /// segment), which must equal the master's bytes there.
    pub tail: Vec<u8>,
    /// The term of the log the slave follows (0 today; a failover would raise it).
    pub epoch: u64,
}

impl Rpc for HaHello {
    const CODE: RequestCode = RequestCode::HaHello;
    type Response = HaWelcome;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HaWelcome {
    /// The master's log ends here now; streaming starts at the slave's end.
    pub master_end: u64,
    pub epoch: u64,
}

/// Master → slave, one way: the master's log from `offset`, exactly as stored, in the body.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HaData {
    pub offset: u64,
    /// Where the master's log ended when this was sent (for the slave's lag).
    pub master_end: u64,
    /// When the master sent this (ms since the epoch).
    pub sent_ms: i64,
}

impl Rpc for HaData {
    const CODE: RequestCode = RequestCode::HaData;
    type Response = ();
}

/// Slave → master, one way: the slave's log ends at `end` (on disk up to there when the
/// slave flushes synchronously).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct HaAck {
    pub end: u64,
}

impl Rpc for HaAck {
    const CODE: RequestCode = RequestCode::HaAck;
    type Response = ();
}

/// Slave → master: the metadata a slave follows, a page at a time. The answer travels in
/// the body ([`HaSnapshot`]): the topics and filters with the first page (`after` is
/// `None`), then the master's consumer offsets in key order, at most [`OFFSETS_PAGE`] a
/// page, each page after the last key of the one before, so no answer outgrows a frame
/// however many offsets a master holds.
///
/// `offsets` are consumer offsets committed on the slave itself (consumers commit there
/// while the master is away) and not yet seen in a snapshot, at most [`OFFSETS_PAGE`] a
/// request: the master takes each one that is ahead of its own (up to its queue's end), so
/// progress made on the slave survives the master's return.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct HaSync {
    pub offsets: Vec<OffsetRow>,
    /// The master's offsets from after this (group, topic, queue id); `None`: the first
    /// page.
    pub after: Option<(String, String, u32)>,
}

/// Most consumer offsets in one [`HaSync`] or [`HaSnapshot`] page: at the longest group
/// (255 bytes) and topic (127) names, about 8 MiB, within a frame's 16 MiB.
pub const OFFSETS_PAGE: usize = 20_000;

impl Rpc for HaSync {
    const CODE: RequestCode = RequestCode::HaSync;
    type Response = ();
}

/// Bytes of a [`HaSync`] header its offsets may take. They travel in the header, which
/// decodes within 1 MiB counting each row's 64 bytes in memory and its names: 20,000 rows
/// of short names (1.3 MB counted) were refused, and a slave that held that many offsets
/// of its own could never give them back or copy the master's metadata again.
const SYNC_PAGE_BYTES: usize = 768 << 10;

/// `rows` in pages for [`HaSync::offsets`]: at most [`OFFSETS_PAGE`] rows each, few enough
/// that the request's header decodes (a row alone always does: names are short).
pub fn sync_pages(rows: &[OffsetRow]) -> Vec<&[OffsetRow]> {
    let mut pages = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let (mut bytes, mut n) = (0usize, 0usize);
        for (group, topic, _, _) in rest.iter().take(OFFSETS_PAGE) {
            let row = 64usize
                .saturating_add(group.len())
                .saturating_add(topic.len());
            if n > 0 && bytes.saturating_add(row) > SYNC_PAGE_BYTES {
                break;
            }
            bytes = bytes.saturating_add(row);
            n += 1;
        }
        let (page, tail) = rest.split_at(n);
        pages.push(page);
        rest = tail;
    }
    pages
}

/// One consumer offset: (group, topic, queue id, offset).
pub type OffsetRow = (String, String, u32, u64);

/// A filter registration as the master has it: the slave installs the same version.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterEntry {
    pub group: String,
    pub topic: String,
    pub version: u64,
    pub sha256: String,
    pub params: Vec<(String, String)>,
    /// The memory cap the upload asked (`None`: the broker's default).
    pub memory: Option<u64>,
}

/// What a slave follows besides the log: one page of it (see [`HaSync`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct HaSnapshot {
    /// Every topic, on the first page; empty on the others.
    pub topics: Vec<TopicConfig>,
    /// A page of the master's consumer offsets, in key order.
    pub offsets: Vec<OffsetRow>,
    /// Every filter registration, on the first page; empty on the others.
    pub filters: Vec<FilterEntry>,
    /// More offsets follow `offsets`' last.
    pub more: bool,
}

impl HaSnapshot {
    pub fn encode(&self) -> Result<bytes::Bytes, crate::ProtocolError> {
        crate::rpc::encode_body(self, "replication snapshot")
    }
    pub fn decode(body: &[u8]) -> Result<Self, crate::ProtocolError> {
        crate::rpc::decode_body(body, "replication snapshot")
    }
}

/// Slave → master: a filter component by its hash; the bytes come back in the body,
/// gzip-compressed when that is smaller (as an upload's may be, [`crate::filter::UploadFilter`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HaComponent {
    pub sha256: String,
}

impl Rpc for HaComponent {
    const CODE: RequestCode = RequestCode::HaComponent;
    type Response = ();
}

/// A broker's replication as it reports it to name servers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct HaStatus {
    pub role: BrokerRole,
    /// Where slaves connect (masters).
    pub ha_addr: Option<String>,
    /// Master: bytes its slowest slave is behind; slave: bytes it is behind its master.
    pub lag_bytes: u64,
    /// How old the oldest byte not yet replicated is, ms (0 when caught up).
    pub lag_ms: u64,
    /// Slave: whether it is connected to its master and streaming; master: slaves
    /// connected.
    pub connected: u32,
    /// A slave that found its log differing from its master's stops; why, if it did.
    pub diverged: Option<String>,
}

#[cfg(test)]
mod sync_page_tests {
    use super::*;

    fn rows(n: usize, name_len: usize) -> Vec<OffsetRow> {
        (0..n)
            .map(|i| {
                let name = format!("{i:0>name_len$}");
                (name.clone(), name, 0, i as u64)
            })
            .collect()
    }

    #[test]
    fn every_page_of_offsets_decodes_as_a_header() {
        for (n, name_len) in [(0, 4), (1, 4), (20_000, 4), (50_000, 8), (3_000, 255)] {
            let all = rows(n, name_len);
            let pages = sync_pages(&all);
            assert_eq!(pages.concat(), all, "{n} rows of {name_len}-byte names");
            for page in pages {
                assert!(!page.is_empty() && page.len() <= OFFSETS_PAGE);
                let sync = HaSync {
                    offsets: page.to_vec(),
                    after: None,
                };
                let header = crate::rpc::encode_header(&sync, "sync").expect("encodes");
                let back: HaSync = crate::rpc::decode_header(&header, "sync").expect("decodes");
                assert_eq!(back, sync);
            }
        }
        // What was refused before: one page of 20,000 short rows.
        let sync = HaSync {
            offsets: rows(20_000, 4),
            after: None,
        };
        let header = crate::rpc::encode_header(&sync, "sync").expect("encodes");
        assert!(crate::rpc::decode_header::<HaSync>(&header, "sync").is_err());
    }
}
