//! Tests for `Client` against in-process mock admin servers on real sockets: failover
//! between endpoints, the bearer token, paging, Apply error metadata and watch streams.

mod mock;

use futures::StreamExt;
use konnect_client::admin::{ResourceInput, WatchEvent};
use konnect_client::state::EventType;
use konnect_client::{Client, ClientError};
use tonic::Code;

use mock::{dead_endpoint, serve, Behaviour, MockNode, LISTED_NAMES, LIST_REVISION};

#[tokio::test]
async fn call_skips_an_unreachable_endpoint_and_uses_the_next() {
    let dead = dead_endpoint().await;
    let live = serve(MockNode::new(2, Behaviour::Serve)).await;
    let client = Client::new(vec![dead, live.clone()], None).expect("valid endpoints");

    let status = client.status().await.expect("second endpoint answers");

    assert_eq!(status.node_id, 2);
    assert_eq!(client.current_endpoint(), live);
}

#[tokio::test]
async fn connect_fails_over_to_the_first_reachable_endpoint() {
    let dead = dead_endpoint().await;
    let live = serve(MockNode::new(2, Behaviour::Serve)).await;

    let client = Client::connect(vec![dead, live.clone()], None)
        .await
        .expect("one endpoint is reachable");

    assert_eq!(client.current_endpoint(), live);
}

#[tokio::test]
async fn call_skips_an_endpoint_answering_unavailable() {
    let leaderless = MockNode::new(1, Behaviour::Unavailable);
    let first = serve(leaderless.clone()).await;
    let second = serve(MockNode::new(2, Behaviour::Serve)).await;
    let client = Client::new(vec![first, second], None).expect("valid endpoints");

    let status = client.status().await.expect("second endpoint answers");

    assert_eq!(status.node_id, 2);
    assert_eq!(leaderless.calls(), 1);
}

#[tokio::test]
async fn application_error_is_final_and_the_next_endpoint_is_not_tried() {
    let rejecting = serve(MockNode::new(1, Behaviour::Reject)).await;
    let untouched = MockNode::new(2, Behaviour::Serve);
    let second = serve(untouched.clone()).await;
    let client = Client::new(vec![rejecting.clone(), second], None).expect("valid endpoints");

    let error = client.status().await.expect_err("first endpoint rejects");

    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(error.endpoint(), Some(rejecting.as_str()));
    assert_eq!(untouched.calls(), 0);
}

#[tokio::test]
async fn next_call_starts_at_the_endpoint_that_answered_last() {
    let dead = dead_endpoint().await;
    let live_node = MockNode::new(2, Behaviour::Serve);
    let live = serve(live_node.clone()).await;
    let client = Client::new(vec![dead, live], None).expect("valid endpoints");

    client.status().await.expect("first call");
    client.status().await.expect("second call");

    assert_eq!(live_node.calls(), 2);
}

#[tokio::test]
async fn every_endpoint_down_reports_each_endpoint_tried() {
    let first = dead_endpoint().await;
    let second = serve(MockNode::new(2, Behaviour::Unavailable)).await;
    let client = Client::new(vec![first.clone(), second.clone()], None).expect("valid endpoints");

    let error = client.status().await.expect_err("nothing can answer");

    assert_eq!(error.code(), Code::Unavailable);
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "no endpoint reachable (tried {first}, {second}): "
        )),
        "{text}"
    );
    assert!(text.contains("no leader elected yet"), "{text}");
}

#[tokio::test]
async fn connect_with_no_reachable_endpoint_fails() {
    let dead = dead_endpoint().await;
    let error = Client::connect(vec![dead.clone()], None)
        .await
        .err()
        .expect("nothing listens");
    assert!(
        error
            .to_string()
            .starts_with(&format!("no endpoint reachable (tried {dead}): ")),
        "{error}"
    );
}

#[tokio::test]
async fn every_call_carries_the_bearer_token() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;
    let client = Client::new(vec![endpoint], Some("s3cret\n".into())).expect("valid token");

    client.status().await.expect("status");
    client.get("Route", "a", false).await.expect("get");

    assert_eq!(
        node.authorization_seen(),
        vec![
            Some("Bearer s3cret".to_string()),
            Some("Bearer s3cret".to_string())
        ]
    );
}

#[tokio::test]
async fn without_a_token_no_authorization_header_is_sent() {
    let node = MockNode::new(1, Behaviour::Serve);
    let endpoint = serve(node.clone()).await;
    let client = Client::new(vec![endpoint], None).expect("valid endpoints");

    client.init().await.expect("init");

    assert_eq!(node.authorization_seen(), vec![None]);
}

#[test]
fn token_that_cannot_be_a_header_is_rejected_without_echoing_it() {
    let error = Client::new(vec!["http://a:1".into()], Some("bad\u{7f}token".into()))
        .err()
        .expect("control characters are not allowed");
    assert!(matches!(error, ClientError::InvalidToken));
    assert!(!error.to_string().contains("bad"));
}

#[test]
fn endpoint_that_is_not_a_url_is_rejected() {
    let error = Client::new(vec!["http://bad host:1".into()], None)
        .err()
        .expect("spaces are not allowed");
    assert!(
        error
            .to_string()
            .starts_with("invalid endpoint \"http://bad host:1\""),
        "{error}"
    );
}

#[tokio::test]
async fn list_follows_page_tokens_and_reports_the_first_page_revision() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;
    let client = Client::new(vec![endpoint], None).expect("valid endpoints");

    let list = client.list("Route", "", false).await.expect("list");

    let names: Vec<&str> = list.items.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(names, LISTED_NAMES);
    assert_eq!(list.revision, LIST_REVISION);
}

#[tokio::test]
async fn apply_rejection_keeps_the_write_index_from_metadata() {
    let endpoint = serve(MockNode::new(1, Behaviour::Reject)).await;
    let client = Client::new(vec![endpoint], None).expect("valid endpoints");

    let error = client
        .apply(
            vec![ResourceInput::default(), ResourceInput::default()],
            vec![],
        )
        .await
        .expect_err("rejected");

    assert_eq!(error.write_index(), Some(1));
    assert_eq!(error.message(), "spec.service: unknown service \"bill\"");
}

#[tokio::test]
async fn watch_yields_events_in_order_then_the_stream_error() {
    let endpoint = serve(MockNode::new(1, Behaviour::Serve)).await;
    let client = Client::new(vec![endpoint], None).expect("valid endpoints");

    let items: Vec<Result<WatchEvent, ClientError>> = client
        .watch("Route", 40)
        .await
        .expect("watch opens")
        .collect()
        .await;

    assert_eq!(items.len(), 3);
    let first = items[0].as_ref().expect("first event");
    assert_eq!((first.revision, first.r#type), (41, EventType::Put as i32));
    let second = items[1].as_ref().expect("second event");
    assert_eq!(
        (second.revision, second.r#type),
        (42, EventType::Delete as i32)
    );
    let error = items[2].as_ref().expect_err("stream error");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.to_string().contains("history compacted"), "{error}");
}
