use std::io;
use std::path::PathBuf;

/// Everything the store can fail with. I/O errors carry the path they happened on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// (The cause is part of the message, not a chained source, so it prints once.)
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    #[error(
        "data folder {path} is in use by another process (lock held on {path}/lock); \
         stop that process or choose another folder"
    )]
    Locked { path: PathBuf },

    #[error("invalid store configuration: {0}")]
    Config(String),

    #[error("invalid message: {0}")]
    InvalidMessage(String),

    #[error(
        "message record of {size} bytes does not fit a commit log segment of {segment_size} bytes"
    )]
    MessageTooLarge { size: u64, segment_size: u64 },

    #[error("corrupt {what} at {path}: {detail}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error("no message at commit log offset {offset}: {detail}")]
    NoMessageAt { offset: u64, detail: String },

    #[error("invalid message id {id:?}: {detail}")]
    InvalidMessageId { id: String, detail: String },

    #[error("flushing the commit log failed: {0}")]
    FlushFailed(String),

    /// The disk holding the data folder is fuller than `disk_full_ratio` (or the folder
    /// reached `disk_quota_bytes`): appends are refused until space is freed; reads go on.
    #[error("disk full: {usage}; sends are refused until space is freed (reads continue)")]
    DiskFull { usage: String },

    /// A sync of the store's files failed earlier. The page cache can no longer be trusted
    /// to reach the disk (a failed fsync may have dropped dirty pages), so appends are
    /// refused until the broker restarts and recovery re-reads what is really on disk.
    #[error(
        "the store stopped accepting writes after a failed sync ({cause}); reads continue; restart the broker to recover"
    )]
    WritesStopped { cause: String },

    #[error("the store is shut down")]
    ShutDown,

    /// A replica's log does not line up with its master's.
    #[error("replica does not match its master: {detail}")]
    ReplicaMismatch { detail: String },

    /// A record from the master lines up with a replica's log but is damaged (on the way,
    /// or on the master's disk): not taken; nothing is wrong with the replica's log.
    #[error("replicated record damaged: {detail}")]
    ReplicaDamaged { offset: u64, detail: String },
}

impl From<weir_protocol::RecordError> for StoreError {
    fn from(e: weir_protocol::RecordError) -> Self {
        use weir_protocol::RecordError as R;
        match e {
            R::InvalidMessage(m) => StoreError::InvalidMessage(m),
            R::Malformed(m) => StoreError::InvalidMessage(format!("malformed record: {m}")),
            R::InvalidMessageId { id, detail } => StoreError::InvalidMessageId { id, detail },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches an operation and a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|error| StoreError::Io {
            op,
            path: path.to_path_buf(),
            error,
        })
    }
}
