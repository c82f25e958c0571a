//! The exactly-once check: asks every node for its total spend (`Usage.QuerySpend`, read from
//! that node's own replica) until each reports the expected number of requests, and prints
//! how long each took to get there (how far its applied state was behind).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use konnect_client::Client;
use konnect_proto::admin::v1::QuerySpendRequest;

/// One node's totals (of one consumer's calls if `consumer` is not empty).
async fn totals(client: &Client, consumer: &str) -> Result<(u64, u64)> {
    let answer = client
        .query_spend(QuerySpendRequest {
            consumer: consumer.to_string(),
            ..Default::default()
        })
        .await
        .context("Usage.QuerySpend failed")?;
    let total = answer.total.unwrap_or_default();
    Ok((total.requests, total.cost_micros))
}

/// Without `expect`, prints each node's totals once. With it, waits (up to `wait`) until every
/// node counts exactly `expect` requests; prints one line per node and fails if a node counts
/// more (a record counted twice) or has not got there in time.
pub async fn run(
    endpoints: &[String],
    token: Option<String>,
    consumer: &str,
    expect: Option<u64>,
    wait: Duration,
) -> Result<Vec<String>> {
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for endpoint in endpoints {
        let client = Client::new(vec![endpoint.clone()], token.clone())?;
        let (requests, cost) = loop {
            let (requests, cost) = totals(&client, consumer)
                .await
                .with_context(|| format!("at {endpoint}"))?;
            let settled = match expect {
                None => true,
                Some(n) => requests >= n || start.elapsed() >= wait,
            };
            if settled {
                break (requests, cost);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let verdict = match expect {
            None => "",
            Some(n) if requests == n => " exact=1",
            Some(n) => {
                failures.push(format!(
                    "{endpoint} counts {requests} requests, expected {n}"
                ));
                " exact=0"
            }
        };
        lines.push(format!(
            "endpoint={endpoint} requests={requests} cost_micros={cost} waited_ms={}{verdict}",
            start.elapsed().as_millis()
        ));
    }
    if !failures.is_empty() {
        for line in &lines {
            println!("{line}");
        }
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(lines)
}
