//! A route's metric handles (`konnect_proxy_requests_total`, `..._request_duration_seconds`,
//! `..._bytes_sent_total`), looked up in the registry on the route's first request and reused
//! after that: the request path builds no label strings, hashes no keys and takes no registry
//! lock per request.
//!
//! Registered lazily, not when the snapshot is built, so a config with 10,000 routes does not
//! put 70,000 zero-valued series on `/metrics`; only routes that saw traffic appear, with the
//! same bounded labels as before (route, service, status class).

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

/// Status classes, in the order of `RouteMetrics::requests`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct RouteMetrics {
    route: String,
    /// The Service's name, `none` for an AI route (its own metrics are per model).
    service: String,
    requests: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
    bytes_sent: OnceLock<Counter>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    pub fn new(route: &str, service: Option<&str>) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            service: service.unwrap_or("none").to_string(),
            requests: Default::default(),
            duration: OnceLock::new(),
            bytes_sent: OnceLock::new(),
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    /// The status class of `status`: index into `CLASSES` (anything past 4xx counts as 5xx).
    pub fn class(status: u16) -> &'static str {
        CLASSES[class_index(status)]
    }

    pub fn requests(&self, status: u16) -> &Counter {
        let i = class_index(status);
        self.requests[i].get_or_init(|| {
            metrics::counter!("konnect_proxy_requests_total",
                "route" => self.route.clone(), "service" => self.service.clone(), "status" => CLASSES[i])
        })
    }

    pub fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| {
            metrics::histogram!("konnect_proxy_request_duration_seconds", "route" => self.route.clone())
        })
    }

    pub fn bytes_sent(&self) -> &Counter {
        self.bytes_sent.get_or_init(
            || metrics::counter!("konnect_proxy_bytes_sent_total", "route" => self.route.clone()),
        )
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_fall_in_their_class() {
        let classes: Vec<&str> = [101, 200, 204, 304, 404, 429, 500, 503, 0, 999]
            .into_iter()
            .map(RouteMetrics::class)
            .collect();
        assert_eq!(
            classes,
            ["1xx", "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx", "5xx", "5xx"]
        );
    }
}
