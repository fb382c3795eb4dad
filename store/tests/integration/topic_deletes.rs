//! Topics deleted under appends: appends racing a delete, and queue handles kept across one.

use crate::common::{read_all, small_config};
use weir_store::{Message, MessageStore};

/// Sends racing a topic's delete: what is appended after the delete returns is kept, across
/// a restart too, and no delete fails on a queue made meanwhile. (Before, an append that
/// looked its queue up before the delete wrote into a file the delete removed, and one
/// made while the folder went made it fail "Directory not empty".)
#[test]
fn appends_racing_a_topic_delete_are_kept_once_it_returns() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(small_config(dir.path())).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Message> = (0..4)
                        .map(|q| Message::new("Doomed", q, b"racing".to_vec()))
                        .collect();
                    // Refusals are allowed; losses after the delete are not.
                    let _ = store.put_batch(&batch);
                }
            })
        })
        .collect();
    let mut kept = Vec::new();
    for round in 0..40 {
        store.delete_topic("Doomed").unwrap();
        let after: Vec<Message> = (0..4)
            .map(|q| Message::new("Doomed", q, format!("after-{round}").into_bytes()))
            .collect();
        kept = store.put_batch(&after).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in racers {
        r.join().unwrap();
    }
    let last = format!("after-{}", 39);
    let has_last = |store: &MessageStore| {
        (0..4).all(|q| {
            read_all(store, "Doomed", q)
                .iter()
                .any(|(_, m)| m.body == last.as_bytes())
        })
    };
    assert_eq!(kept.len(), 4);
    assert!(has_last(&store), "lost before the restart");
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    assert!(has_last(&store), "lost across the restart");
}

/// `append_to` writes through its handle only the messages of the handle's queue (others
/// are looked up by name), makes the queue when the handle is made, and after the topic's
/// delete writes into its new queue, which is what a reopened store reads.
#[test]
fn a_queue_handle_takes_only_its_own_messages_and_follows_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let kept = store.queue_handle("Kept", 1).unwrap();
    assert!(
        dir.path().join("consumequeue/Kept/1").is_dir(),
        "the handle made its queue"
    );
    let batch = [
        Message::new("Kept", 1, b"k0".to_vec()),
        Message::new("Other", 1, b"o0".to_vec()),
        Message::new("Kept", 0, b"z0".to_vec()),
        Message::new("Kept", 1, b"k1".to_vec()),
    ];
    let put = store.append_to(&kept, &batch).unwrap();
    let at: Vec<_> = put.results().iter().map(|r| r.queue_offset).collect();
    assert_eq!(at, [0, 0, 0, 1]);
    let bodies = |store: &MessageStore, topic: &str, q: u32| {
        read_all(store, topic, q)
            .into_iter()
            .map(|(_, m)| String::from_utf8(m.body).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&store, "Kept", 1), ["k0", "k1"]);
    assert_eq!(bodies(&store, "Other", 1), ["o0"]);
    assert_eq!(bodies(&store, "Kept", 0), ["z0"]);

    store.delete_topic("Kept").unwrap();
    let put = store
        .append_to(&kept, &[Message::new("Kept", 1, b"after".to_vec())])
        .unwrap();
    assert_eq!(put.results()[0].queue_offset, 0);
    assert_eq!(bodies(&store, "Kept", 1), ["after"]);
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    assert_eq!(bodies(&store, "Kept", 1), ["after"]);
    assert_eq!(bodies(&store, "Other", 1), ["o0"]);
}
