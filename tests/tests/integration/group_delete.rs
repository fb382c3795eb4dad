//! `weir group delete` takes the group's filters with it: every registration of the group
//! goes, and so do their stored components and compiled code unless another group's
//! registration uses them; other groups' filters stay.

use bytes::Bytes;
use weir_filter_artifacts as artifacts;
use weir_protocol::admin::DeleteGroup;
use weir_tests::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_group_removes_its_filters_and_their_unshared_components() {
    let env = Env::start().await;
    let c = env.client().await;
    c.create_topic("A", 1).await;
    c.create_topic("B", 1).await;
    let keep_all = artifacts::read(artifacts::KEEP_ALL);
    let sql = artifacts::read(artifacts::SQL92);
    // G: keep-all on A (shared with H), sql92 on B (its own).
    c.upload("G", "A", &keep_all, &[]).await.expect("uploaded");
    c.upload("G", "B", &sql, &[("expr", "region = 'eu'")])
        .await
        .expect("uploaded");
    c.upload("H", "A", &keep_all, &[]).await.expect("uploaded");
    assert_eq!(env.filter_files("components").len(), 2);

    let (done, _) = c
        .conn
        .call(
            &DeleteGroup { group: "G".into() },
            Bytes::new(),
            weir_tests::T,
        )
        .await
        .expect("deleted");
    assert_eq!(done.filters_removed, 2);
    let left: Vec<(String, String)> = c
        .list(None)
        .await
        .filters
        .into_iter()
        .map(|f| (f.group, f.topic))
        .collect();
    assert_eq!(left, [("H".to_owned(), "A".to_owned())]);
    // sql92's component and compiled code went; keep-all's stay for H.
    let components = env.filter_files("components");
    assert_eq!(components.len(), 1, "{components:?}");
    let kept = components.iter().next().expect("one").clone();
    let sha = kept.trim_end_matches(".wasm");
    let compiled = env.filter_files("compiled");
    assert!(
        compiled.iter().all(|f| f.starts_with(sha)),
        "compiled code of a removed component stayed: {compiled:?}"
    );
    // A group of the name starts unfiltered, also after a restart.
    assert!(c.filter_info("G", "B").await.is_none());
    let mut env = env;
    env.restart().await;
    let c = env.client().await;
    assert!(c.filter_info("G", "A").await.is_none());
    assert!(c.filter_info("H", "A").await.is_some());
}
