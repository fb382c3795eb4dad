//! A slave follows its master's deletions: a deleted topic goes with its queues and
//! offsets (so a topic created again under the name starts at offset 0 on both, and the
//! slave stays in step), a deleted group's offsets and filters go, and what was not
//! deleted stays.

use bytes::Bytes;
use weir_filter_artifacts as artifacts;
use weir_protocol::admin::DeleteGroup;
use weir_protocol::broker::DeleteTopic;
use weir_tests::{Msg, T, eventually_for};

use crate::nodes::{Cluster, SETTLE};
use crate::read_queue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_drops_what_its_master_deleted() {
    let c = Cluster::new().await;
    let m = c.node("broker-e", "async-master").await;
    let s = c.node("broker-e", "slave").await;
    c.wait_in_sync("broker-e").await;
    let raw = m.raw().await;
    raw.create_topic("Gone", 1).await;
    raw.create_topic("Kept", 1).await;
    raw.send("Gone", 0, &[Msg::new("g0"), Msg::new("g1")]).await;
    raw.send("Kept", 0, &[Msg::new("k0"), Msg::new("k1")]).await;
    raw.upload("G", "Kept", &artifacts::read(artifacts::KEEP_ALL), &[])
        .await
        .expect("uploaded");
    raw.commit("G", "Kept", 0, 1).await;
    raw.commit("H", "Kept", 0, 2).await;
    raw.commit("H", "Gone", 0, 1).await;
    let on_s = s.raw().await;
    eventually_for(
        "the slave has the topics, offsets and filter",
        SETTLE,
        async || {
            on_s.filter_info("G", "Kept").await.is_some()
                && on_s.committed("G", "Kept", 0).await == Some(1)
                && on_s.committed("H", "Kept", 0).await == Some(2)
                && on_s.committed("H", "Gone", 0).await == Some(1)
        },
    )
    .await;
    c.wait_topic(&s, "Gone").await;

    let delete = DeleteTopic {
        topic: "Gone".into(),
    };
    raw.conn
        .call(&delete, Bytes::new(), T)
        .await
        .expect("deleted");
    let delete = DeleteGroup { group: "G".into() };
    let (done, _) = raw
        .conn
        .call(&delete, Bytes::new(), T)
        .await
        .expect("deleted");
    assert_eq!((done.offsets_removed, done.filters_removed), (1, 1));
    eventually_for(
        "the slave dropped what the master deleted",
        SETTLE,
        async || {
            on_s.filter_info("G", "Kept").await.is_none()
                && on_s.committed("G", "Kept", 0).await.is_none()
                && on_s.committed("H", "Gone", 0).await.is_none()
                && on_s.pull("probe", "Gone", 0, 0, 0).await.is_err()
        },
    )
    .await;
    // What was not deleted stays.
    assert_eq!(on_s.committed("H", "Kept", 0).await, Some(2));
    assert_eq!(read_queue(&s, "Kept", 0).await.len(), 2);

    // Created again, the topic starts at offset 0 on the master and on the slave, which
    // follows on without diverging.
    raw.create_topic("Gone", 1).await;
    raw.send("Gone", 0, &[Msg::new("again")]).await;
    c.wait_in_sync("broker-e").await;
    c.wait_topic(&s, "Gone").await;
    let want = std::collections::BTreeMap::from([(0, "again".to_owned())]);
    assert_eq!(read_queue(&m, "Gone", 0).await, want);
    eventually_for("the slave reads the new topic from 0", SETTLE, async || {
        read_queue(&s, "Gone", 0).await == want
    })
    .await;
    assert!(
        c.status("broker-e")
            .await
            .iter()
            .all(|(_, st)| st.diverged.is_none())
    );
}
