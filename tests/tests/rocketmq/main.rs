//! RocketMQ's remoting protocol on weir's ports: raw frames as RocketMQ's clients write
//! them (`raw`), and RocketMQ's own clients (`java` 4.9.x, `java5` the newest 5.x remoting
//! client, `go`, `node`: ali-ons, the pure-JavaScript one, and `python`: PyPI's
//! `rocketmq`, the C++ client underneath; the harness in `probe`, the probes built by
//! `scripts/test`).

mod go;
mod java;
mod java5;
mod node;
mod probe;
mod python;
mod raw;
