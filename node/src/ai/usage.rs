//! Usage records: one per AI call (failed ones and streams cut midway included), with the
//! tokens the provider reported (or, for a stream cut before its usage arrived, an estimate)
//! and the cost in integer micro-USD. Each goes into the node's usage WAL (`ledger.rs`), which
//! the call waits for, and, for people and log shippers, as a JSON line written by a background
//! thread (`--ai-usage-log`).

use std::io::Write;
use std::path::PathBuf;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::ledger::{Ledger, LedgerError};

use crate::resources::model::Price;

#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageRecord {
    /// When the call started (RFC 3339, this node's clock).
    pub ts: String,
    /// The same instant in unix ms (decides the ledger day the call is counted in).
    #[serde(skip)]
    pub started_unix_ms: u64,
    pub request_id: String,
    pub consumer: Option<String>,
    pub team: Option<String>,
    /// How the caller was identified: `key:<id>` (the key's public prefix), `jwt:<provider>`...
    pub credential: Option<String>,
    /// The model name the caller asked for.
    pub model: String,
    /// The Provider resource that served (the last one tried when none did).
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    pub zone: String,
    pub node: u64,
    /// `chat` (OpenAI or Anthropic format), `embeddings`.
    pub endpoint: &'static str,
    /// The PromptTemplate called, for `prompts/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub stream: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache (part of `input_tokens`).
    pub cached_tokens: u64,
    /// `provider` (from the provider's usage) or `estimated` (a stream cut before its usage
    /// arrived, or no usage reported: counted with OpenAI's tokenizer for OpenAI-type
    /// providers, about 4 characters a token for the others).
    pub tokens_from: &'static str,
    pub cost_micros: u64,
    /// HTTP status the caller got.
    pub status: u16,
    /// `ok`, `error` (no provider answered, or the provider refused), or `cut` (the stream
    /// ended early: the caller left or the provider broke off).
    pub outcome: &'static str,
    pub attempts: u32,
    pub latency_ms: u64,
    /// Time to the first byte of the answer (streams: the first event).
    pub ttft_ms: Option<u64>,
    /// Models with `cache`: `hit` (answered from the node's cache: no provider call, cost 0)
    /// or `miss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
}

/// Cost of a call in micro-USD: every token at its price per million, summed, then divided
/// once and rounded up (so a call is never billed less than it cost; at most 1 micro-USD
/// more). Cached input tokens use the cached price (the input price when none is set).
pub fn cost_micros(price: &Price, input: u64, cached: u64, output: u64) -> u64 {
    let cached = cached.min(input);
    let cached_price = price
        .cached_input_per_mtok_micros
        .unwrap_or(price.input_per_mtok_micros);
    let total = (input - cached) as u128 * price.input_per_mtok_micros as u128
        + cached as u128 * cached_price as u128
        + output as u128 * price.output_per_mtok_micros as u128;
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// How tokens are counted when the provider did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    /// OpenAI's o200k_base (tiktoken), for OpenAI-type providers.
    O200k,
    /// About 4 characters a token: Anthropic and Gemini publish no tokenizer to run locally.
    CharsPer4,
}

impl Tokenizer {
    pub fn count(self, text: &str) -> u64 {
        match self {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton()
                .encode_ordinary(text)
                .len() as u64,
            Tokenizer::CharsPer4 => estimate_tokens(text),
        }
    }
}

/// Rough token count of text: 4 characters a token.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Where usage records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageLogTarget {
    Off,
    File(PathBuf),
}

/// Where each call's record goes: the ledger's WAL (durable, awaited) and the JSON-lines log.
/// Unlike the access log the JSON-lines writer never drops a record: its queue is unbounded
/// (records are small and the writer batches them).
#[derive(Clone)]
pub struct UsageLog {
    tx: Option<mpsc::UnboundedSender<UsageRecord>>,
    ledger: Option<Arc<Ledger>>,
}

impl UsageLog {
    pub fn start(
        target: &UsageLogTarget,
        ledger: Option<Arc<Ledger>>,
    ) -> std::io::Result<UsageLog> {
        let path = match target {
            UsageLogTarget::Off => return Ok(UsageLog { tx: None, ledger }),
            UsageLogTarget::File(p) => p,
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<UsageRecord>();
        std::thread::Builder::new()
            .name("ai-usage-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Some(first) = rx.blocking_recv() {
                    buf.clear();
                    let mut next = Some(first);
                    while let Some(r) = next {
                        if serde_json::to_writer(&mut buf, &r).is_ok() {
                            buf.push(b'\n');
                        }
                        next = rx.try_recv().ok();
                    }
                    if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                        metrics::counter!("konnect_ai_usage_log_errors_total").increment(1);
                    }
                }
            })?;
        Ok(UsageLog {
            tx: Some(tx),
            ledger,
        })
    }

    pub fn off() -> UsageLog {
        UsageLog {
            tx: None,
            ledger: None,
        }
    }

    /// Counts the call in the metrics, appends its record to the ledger's WAL and returns once
    /// it is durable (an error: it is not, and the caller must not get the answer as if it
    /// were counted), and queues it for the JSON-lines log.
    pub async fn record(&self, r: UsageRecord) -> Result<(), LedgerError> {
        // Queued for the WAL and counted before waiting: a caller that leaves during the
        // fsync drops this future, and the call must still be counted everywhere.
        let request_id = r.request_id.clone();
        let durable = self.ledger.as_ref().map(|ledger| ledger.append(&r));
        self.count_and_log(r);
        let Some(durable) = durable else {
            return Ok(());
        };
        let result = durable.await;
        if let Err(e) = &result {
            metrics::counter!("konnect_usage_wal_errors_total").increment(1);
            tracing::error!(error = %e, request_id = %request_id, "usage record not durable");
        }
        result
    }

    fn count_and_log(&self, r: UsageRecord) {
        // Labels stay bounded: models, providers and teams are resources an admin writes
        // (never a consumer or key, which can number in the millions).
        let provider = r.provider.clone().unwrap_or_else(|| "none".into());
        let team = r.team.clone().unwrap_or_else(|| "-".into());
        metrics::counter!("konnect_ai_requests_total", "model" => r.model.clone(),
            "provider" => provider.clone(), "team" => team.clone(), "outcome" => r.outcome)
        .increment(1);
        metrics::counter!("konnect_ai_tokens_total", "model" => r.model.clone(),
            "provider" => provider.clone(), "team" => team.clone(), "kind" => "input")
        .increment(r.input_tokens);
        metrics::counter!("konnect_ai_tokens_total", "model" => r.model.clone(),
            "provider" => provider.clone(), "team" => team.clone(), "kind" => "output")
        .increment(r.output_tokens);
        metrics::counter!("konnect_ai_cost_micros_total", "model" => r.model.clone(),
            "provider" => provider, "team" => team)
        .increment(r.cost_micros);
        if let Some(tx) = &self.tx {
            let _ = tx.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_integer_micro_usd_rounded_up_once() {
        let p = Price {
            input_per_mtok_micros: 3_000_000,
            output_per_mtok_micros: 15_000_000,
            cached_input_per_mtok_micros: Some(300_000),
        };
        // 1,000 input (200 cached) and 500 output tokens of a $3/$15 model:
        // 800 x 3 + 200 x 0.3 + 500 x 15 = 2,400 + 60 + 7,500 = 9,960 micro-USD.
        assert_eq!(cost_micros(&p, 1_000, 200, 500), 9_960);
        // One input token costs 3 micro-USD; one token of a $0.15 model rounds up to 1.
        assert_eq!(cost_micros(&p, 1, 0, 0), 3);
        let cheap = Price {
            input_per_mtok_micros: 150_000,
            output_per_mtok_micros: 600_000,
            cached_input_per_mtok_micros: None,
        };
        assert_eq!(cost_micros(&cheap, 1, 0, 0), 1);
        assert_eq!(cost_micros(&cheap, 0, 0, 0), 0);
        // No overflow at absurd counts.
        assert!(cost_micros(&p, u64::MAX, 0, u64::MAX) > 0);
        assert_eq!(estimate_tokens("abcdefghi"), 3);
        // o200k_base: "Hello world" is two tokens.
        assert_eq!(Tokenizer::O200k.count("Hello world"), 2);
        assert_eq!(Tokenizer::CharsPer4.count("Hello world"), 3);
    }
}
