//! Request codes and response statuses. Numbers follow RocketMQ's where the concept is the
//! same, so traces read alike; the meanings are ours.

use std::fmt;

macro_rules! codes {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $value:expr, $text:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name { $($(#[$vm])* $variant = $value,)* }

        impl $name {
            pub fn from_u16(v: u16) -> Option<Self> {
                match v { $($value => Some(Self::$variant),)* _ => None }
            }
            /// A short human name.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// What a request asks for.
    RequestCode {
        SendMessage = 10, "send message";
        PullMessage = 11, "pull message";
        QueryMessage = 12, "query message by key";
        QueryConsumerOffset = 14, "query consumer offset";
        UpdateConsumerOffset = 15, "update consumer offset";
        SetBrokerConfig = 25, "set broker config";
        GetBrokerConfig = 26, "get broker config";
        GetBrokerStats = 28, "get broker stats";
        CreateTopic = 17, "create or update topic";
        SearchOffsetByTimestamp = 29, "search offset by timestamp";
        GetQueueOffsets = 30, "get queue min/max offsets";
        ViewMessageById = 33, "view message by id";
        Heartbeat = 34, "heartbeat";
        UnregisterClient = 35, "unregister client";
        ConsumerSendMsgBack = 36, "consumer send message back";
        EndTransaction = 37, "end transaction";
        GetConsumerList = 38, "get consumer list";
        CheckTransactionState = 39, "check transaction state";
        NotifyConsumerIdsChanged = 40, "notify consumer ids changed";
        LockBatchMq = 41, "lock queues";
        UnlockBatchMq = 42, "unlock queues";
        RegisterBroker = 103, "register broker";
        UnregisterBroker = 104, "unregister broker";
        GetRoute = 105, "get topic route";
        GetClusterInfo = 106, "get cluster info";
        GetTopicStats = 202, "get topic stats";
        GetConsumerConnections = 203, "get consumer connections";
        GetAllTopics = 206, "get all topics";
        DeleteGroup = 207, "delete consumer group";
        GetConsumeStats = 208, "get consume stats";
        DeleteTopic = 215, "delete topic";
        ResetOffset = 222, "reset consumer offsets";
        GetMessageTrail = 230, "get message trail";
        GetTopicSummaries = 231, "get topic summaries";
        GetGroupSummaries = 232, "get group summaries";
        SendBatch = 320, "send batch";
        UploadFilter = 400, "upload filter";
        ListFilters = 401, "list filters";
        RemoveFilter = 402, "remove filter";
        ResetFilter = 403, "reset filter";
        ListTransactions = 420, "list transactions";
        ResolveTransaction = 421, "resolve transaction";
        HaHello = 500, "replication hello";
        HaData = 501, "replication data";
        HaAck = 502, "replication ack";
        HaSync = 503, "replication metadata";
        HaComponent = 504, "replication filter component";
    }
}

codes! {
    /// Why a request failed (a response's status; 0 is success and has no variant).
    ErrorCode {
        SystemError = 1, "system error";
        SystemBusy = 2, "system busy";
        RequestCodeNotSupported = 3, "request code not supported";
        FlushDiskTimeout = 10, "flush disk timeout";
        MessageIllegal = 13, "message illegal";
        ServiceNotAvailable = 14, "service not available";
        NoPermission = 16, "no permission";
        TopicNotExist = 17, "topic does not exist";
        TopicExistAlready = 18, "topic exists already";
        PullNotFound = 19, "pull: nothing found";
        PullRetryImmediately = 20, "pull: retry immediately";
        PullOffsetMoved = 21, "pull: offset moved";
        QueryNotFound = 22, "query: not found";
        SubscriptionParseFailed = 23, "subscription parse failed";
        InvalidParameter = 29, "invalid parameter";
        BadRequest = 100, "bad request";
        /// An uploaded filter was refused (not a component of the filter world, too big,
        /// forbidden imports, `init` failed); nothing was stored.
        FilterRejected = 110, "filter rejected";
        /// The group's filter failed on this pull (trap, time or memory limit, its own
        /// error, wrong verdicts); the offset did not move.
        FilterFailed = 111, "filter failed";
        FilterNotFound = 112, "filter not found";
        /// The broker's disk is fuller than its limit: sends are refused until space is
        /// freed; reads go on. Another broker may take the message.
        DiskFull = 113, "disk full";
        /// A sync of the broker's store failed: it accepts no more writes until it is
        /// restarted (reads go on). Another broker may take the message.
        WritesStopped = 114, "writes stopped";
        /// An end-transaction that does not match its half message (another producer
        /// group, another transaction, no half message there).
        TransactionInvalid = 115, "transaction invalid";
        /// A write sent to a slave: slaves are readable, never writable.
        NotMaster = 116, "not a master";
        /// A slave refuses to serve a log that differs from its master's.
        ReplicaDiverged = 117, "replica diverged";
        /// Access control: the principal lacks a permission the request needs (the
        /// message names it).
        AccessDenied = 118, "access denied";
        /// Access control: the request is unsigned, of an unknown access key, or its
        /// signature does not verify (a wrong secret).
        AuthFailed = 119, "authentication failed";
        /// Access control: the request's timestamp is outside the server's window.
        RequestExpired = 120, "request expired";
        /// Access control: the signed request was seen before.
        RequestReplayed = 121, "request replayed";
        /// The group has live members, whose commits would undo the operation (reset
        /// offsets, delete the group): stop them first.
        GroupHasMembers = 122, "group has live members";
        /// Flow control: the send waited longer than the broker's `send_queue_wait_ms`
        /// for its append to start (the store is not keeping up). Not stored: retry after
        /// a pause, or on another broker.
        StoreBusy = 123, "store busy, retry";
        /// The group's filter for the topic is marked failed (it failed too many batches
        /// in a row): its pulls fail without running it until a new version is uploaded
        /// or `weir filter reset` clears the mark. The message names the filter, its
        /// version and the cause.
        FilterMarkedFailed = 124, "filter marked failed";
    }
}

/// Response status of success.
pub const SUCCESS: u16 = 0;
