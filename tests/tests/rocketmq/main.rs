//! RocketMQ's remoting protocol on weir's ports: raw frames as RocketMQ's clients write
//! them (`raw`), and RocketMQ's own Java and Go clients (`clients`, built by `scripts/test`).

mod raw;
