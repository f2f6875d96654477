//! The audit log under attack by a key it knows: a user flooding refused requests cannot
//! fill the log or its database's write lock; what was not recorded is counted in the next
//! event that is.

use axum::http::StatusCode;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

#[tokio::test]
async fn a_flood_of_refused_requests_is_recorded_in_part_and_counted() {
    let api = Api::new(ServiceConfig::default()).await;
    let before = api.audit_events().await.len();
    // A viewer asks for a host that does not exist, 400 times at once.
    let ghost = paths::host("ghost");
    let flood = (0..400).map(|_| api.call("GET", &ghost, b"", Sign::By(&api.viewer)));
    for (s, _) in futures_util::future::join_all(flood).await {
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let recorded = api.audit_events().await.len() - before;
    assert!(
        (1..=110).contains(&recorded),
        "{recorded} refusals recorded of a flood of 400"
    );
    // Once the bucket refills, the next refusal is recorded with the count of those that
    // were not.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, _) = api
        .call("GET", &paths::host("ghost"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let events = api.audit_events().await;
    let last = events.last().unwrap();
    assert_eq!(last.outcome, "unknown_host");
    assert_eq!(
        last.details["unrecorded_before"].as_u64(),
        Some(400 - recorded as u64),
        "{last:?}"
    );
}
