//! The exact-match answer cache of Models with `cache`: a non-streamed answer is kept for the
//! Model's TTL under the request as sent (model, endpoint and the whole JSON body, which
//! serde_json writes with its keys sorted, so key order and whitespace do not matter), on each
//! node. A hit costs nothing and is recorded as such.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Largest request (its normalised JSON) that is cached; bigger ones are always forwarded.
pub const MAX_KEY_BYTES: usize = 256 * 1024;

struct Cached {
    answer: Bytes,
    expires: Instant,
    stored: Instant,
}

#[derive(Default)]
pub struct AnswerCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl AnswerCache {
    /// The cache key of a request, or `None` when it is too big to cache.
    pub fn key(model: &str, endpoint: &str, body: &serde_json::Value) -> Option<String> {
        let text = body.to_string();
        (text.len() <= MAX_KEY_BYTES).then(|| format!("{model}\0{endpoint}\0{text}"))
    }

    /// A fresh answer and its age.
    pub fn get(&self, key: &str, now: Instant) -> Option<(Bytes, Duration)> {
        let entries = self.entries.lock().ok()?;
        let c = entries.get(key)?;
        (c.expires > now).then(|| (c.answer.clone(), now.duration_since(c.stored)))
    }

    /// Keeps `answer` for `ttl`; at most `max_entries` answers, the expired and then the
    /// oldest going first.
    pub fn put(&self, key: String, answer: Bytes, ttl: Duration, max_entries: usize, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= max_entries && !entries.contains_key(&key) {
            entries.retain(|_, c| c.expires > now);
            while entries.len() >= max_entries.max(1) {
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.stored)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Cached {
                answer,
                expires: now + ttl,
                stored: now,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_request_in_any_key_order_hits_until_it_expires_and_size_is_bounded() {
        let c = AnswerCache::default();
        let now = Instant::now();
        let a = AnswerCache::key(
            "m",
            "chat",
            &json!({"model": "m", "messages": [], "temperature": 0}),
        )
        .unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "temperature": 0, "messages": [], "model": "m" }"#).unwrap();
        assert_eq!(AnswerCache::key("m", "chat", &b).unwrap(), a);
        c.put(
            a.clone(),
            Bytes::from_static(b"answer"),
            Duration::from_secs(10),
            2,
            now,
        );
        let (answer, age) = c.get(&a, now + Duration::from_secs(3)).unwrap();
        assert_eq!((&answer[..], age.as_secs()), (&b"answer"[..], 3));
        assert!(
            c.get(&a, now + Duration::from_secs(11)).is_none(),
            "expired"
        );
        for i in 0..5 {
            c.put(
                format!("k{i}"),
                Bytes::new(),
                Duration::from_secs(10),
                2,
                now + Duration::from_secs(i),
            );
        }
        assert_eq!(c.len(), 2);
        assert!(
            c.get("k4", now).is_some() && c.get("k0", now).is_none(),
            "oldest went first"
        );
        let huge = json!({"messages": "x".repeat(MAX_KEY_BYTES)});
        assert!(AnswerCache::key("m", "chat", &huge).is_none());
    }
}
