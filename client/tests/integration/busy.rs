//! Flow control, client side: a broker's busy answer (`StoreBusy`: its store is behind,
//! nothing stored) makes the producer back off and retry, and the retry succeeds without
//! a copy.

use crate::common::{broker_with, client, namesrv, wait_route};

use std::time::Duration;

use weir_client::{Admin, Message, Producer};
use weir_protocol::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_answer_leads_to_a_retry_that_succeeds() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let b = broker_with(dir.path(), "broker-a", &ns_addr, |c| {
        c.send_queue_wait_ms = 10;
    })
    .await;
    let c = client(&ns_addr);
    let admin = Admin::new(c.clone());
    admin.create_topic("Busy", 1).await.unwrap();
    wait_route(&admin, "Busy", 1).await;
    let mut producer = Producer::new("pg", c.clone());
    // (Room for a slow machine: each retry waits a longer pause.)
    producer.set_retry_times_when_send_failed(4);
    // Warm: the route and the connection, before the store is made slow.
    producer.send(&Message::new("Busy", "warm")).await.unwrap();

    // Each append now takes 40 ms, one at a time: of two sends at once, the second waits
    // past 10 ms for its turn and is answered busy; its retry, after the pause (50 ms),
    // goes in.
    b.broker()
        .send_queue
        .slow_appends_for_tests(Duration::from_millis(40));
    let (m1, m2) = (Message::new("Busy", "one"), Message::new("Busy", "two"));
    let (one, two) = tokio::join!(producer.send(&m1), producer.send(&m2));
    let (one, two) = (one.expect("sent"), two.expect("sent"));
    let busy = b
        .broker()
        .metrics
        .errors()
        .into_iter()
        .find(|(code, _)| *code == ErrorCode::StoreBusy)
        .map_or(0, |(_, n)| n);
    assert!(busy >= 1, "no send was answered busy");
    assert_eq!(b.broker().send_queue.refused(), busy);
    // Stored once each: three messages in all, at offsets 0, 1, 2.
    assert_eq!(b.broker().store().max_offset("Busy", 0), 3);
    let mut offsets = [one.queue_offset, two.queue_offset];
    offsets.sort_unstable();
    assert_eq!(offsets, [1, 2]);
    assert_ne!(one.msg_id, two.msg_id);
}
