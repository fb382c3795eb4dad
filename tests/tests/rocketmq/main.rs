//! RocketMQ's remoting protocol on weir's ports: raw frames as RocketMQ's clients write
//! them (`raw`), and RocketMQ's own clients (`java`, `go`, `python`; the harness in
//! `probe`, the probes built by `scripts/test`).

mod go;
mod java;
mod probe;
mod python;
mod raw;
