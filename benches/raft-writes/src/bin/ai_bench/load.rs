//! The load generator: `connections` HTTP/1.1 keep-alive connections, each posting the same
//! chat request back to back (the next one when the previous answer has been read to its end)
//! for the warm-up and then the measured time. Every answer is checked: status 2xx and a body
//! that is a chat completion (`"choices"`) or, streamed, ends its events with `data: [DONE]`;
//! anything else, a broken connection or a request over the timeout is an error, counted and
//! reported with the first one's text. The answers that end inside the measured window are the
//! figures: their count over the window is the rate, and their latencies are all kept, so the
//! percentiles are exact: to the end of the answer and, for streams, to its first body bytes.
//! Requests still running at the window's end are awaited (and checked), not counted.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Settings {
    authority: String,
    path: String,
    authorization: String,
    body: Bytes,
    stream: bool,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
}

impl Settings {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        key: &str,
        model: &str,
        stream: bool,
        connections: usize,
        duration: Duration,
        warmup: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("bad --url {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url must be http://HOST:PORT/PATH, not {url}");
        }
        let Some(authority) = uri.authority() else {
            bail!("--url {url} has no host");
        };
        if authority.port().is_none() {
            bail!("--url {url} has no port");
        }
        if connections == 0 || duration.is_zero() {
            bail!("--connections and --duration-secs must be at least 1");
        }
        let mut chat = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Say hello in eight words."},
            ],
            "max_tokens": 16,
        });
        if stream {
            chat["stream"] = true.into();
            chat["stream_options"] = serde_json::json!({"include_usage": true});
        }
        Ok(Settings {
            authority: authority.to_string(),
            path: uri.path().to_owned(),
            authorization: format!("Bearer {key}"),
            body: Bytes::from(chat.to_string()),
            stream,
            connections,
            duration,
            warmup,
            timeout,
        })
    }
}

/// What one connection saw in the measured part (and its errors, warm-up included).
#[derive(Default)]
struct Outcome {
    total_us: Vec<u32>,
    first_byte_us: Vec<u32>,
    with_usage: u64,
    /// Good answers, warm-up included (what the gateway's ledger should count).
    answered: u64,
    errors: u64,
    first_error: Option<String>,
}

pub struct Report {
    connections: usize,
    stream: bool,
    elapsed: Duration,
    total_us: Vec<u32>,
    first_byte_us: Vec<u32>,
    with_usage: u64,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(settings: Settings) -> Result<Report> {
    let settings = std::sync::Arc::new(settings);
    // A first request on its own: a gateway that is not ready fails the run here, clearly.
    let mut probe = connect(&settings.authority).await?;
    let answer = tokio::time::timeout(settings.timeout, post(&settings, &mut probe)).await;
    match answer {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => bail!(
            "the first request to {} failed: {error}",
            settings.authority
        ),
        Err(_) => bail!(
            "the first request to {} was not answered in time",
            settings.authority
        ),
    }
    drop(probe);
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let deadline = measure_from + settings.duration;
    let tasks: Vec<_> = (0..settings.connections)
        .map(|_| tokio::spawn(connection_loop(settings.clone(), measure_from, deadline)))
        .collect();
    let mut report = Report {
        connections: settings.connections,
        stream: settings.stream,
        elapsed: Duration::ZERO,
        total_us: Vec::new(),
        first_byte_us: Vec::new(),
        with_usage: 0,
        // The first request, made before the connections start.
        answered: 1,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let outcome = task.await.context("a connection task panicked")?;
        report.total_us.extend(outcome.total_us);
        report.first_byte_us.extend(outcome.first_byte_us);
        report.with_usage += outcome.with_usage;
        report.answered += outcome.answered;
        report.errors += outcome.errors;
        report.first_error = report.first_error.or(outcome.first_error);
    }
    report.elapsed = settings.duration;
    report.total_us.sort_unstable();
    report.first_byte_us.sort_unstable();
    Ok(report)
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>> {
    let socket = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    socket.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the peer closes; the next request reports that.
        let _ = connection.await;
    });
    Ok(sender)
}

/// What one good answer took.
struct Timing {
    first_byte: Duration,
    total: Duration,
    with_usage: bool,
}

/// Posts the chat request once and reads the whole answer; an answer that is not a good one
/// is an error with a short description.
async fn post(
    settings: &Settings,
    sender: &mut SendRequest<Full<Bytes>>,
) -> Result<Timing, String> {
    let sent = Instant::now();
    sender
        .ready()
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    let request = Request::post(settings.path.as_str())
        .header("host", settings.authority.as_str())
        .header("authorization", settings.authorization.as_str())
        .header("content-type", "application/json")
        .body(Full::new(settings.body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut bytes = Vec::with_capacity(2048);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("answer cut: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if first_byte.is_none() && !data.is_empty() {
                first_byte = Some(sent.elapsed());
            }
            bytes.extend_from_slice(&data);
        }
    }
    let total = sent.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        let start: String = text.chars().take(200).collect();
        return Err(format!("status {status}: {start}"));
    }
    let complete = if settings.stream {
        text.trim_end().ends_with("data: [DONE]")
    } else {
        text.contains("\"choices\"")
    };
    if !complete {
        let start: String = text.chars().take(200).collect();
        return Err(format!(
            "status {status} but not a complete answer: {start}"
        ));
    }
    Ok(Timing {
        first_byte: first_byte.unwrap_or(total),
        total,
        with_usage: text.contains("\"usage\""),
    })
}

async fn connection_loop(
    settings: std::sync::Arc<Settings>,
    measure_from: Instant,
    deadline: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut sender = None;
    let note = |outcome: &mut Outcome, error: String| {
        outcome.errors += 1;
        outcome.first_error.get_or_insert(error);
    };
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if sender.is_none() {
            match connect(&settings.authority).await {
                Ok(connected) => sender = Some(connected),
                Err(error) => {
                    note(&mut outcome, format!("{error:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        match tokio::time::timeout(settings.timeout, post(&settings, connection)).await {
            Ok(Ok(timing)) => {
                outcome.answered += 1;
                // Counted when it ends inside the measured window, whenever it started: with
                // many connections on a slow gateway an answer can take longer than the window.
                let finished = Instant::now();
                if finished >= measure_from && finished <= deadline {
                    outcome.total_us.push(micros(timing.total));
                    outcome.first_byte_us.push(micros(timing.first_byte));
                    outcome.with_usage += u64::from(timing.with_usage);
                }
            }
            Ok(Err(error)) => {
                note(&mut outcome, error);
                // The connection may be in any state: start a new one.
                sender = None;
            }
            Err(_) => {
                note(
                    &mut outcome,
                    format!("no answer within {:?}", settings.timeout),
                );
                sender = None;
            }
        }
    }
    outcome
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

// === impl Report ===

impl Report {
    /// `connections=... requests=... rps=... p50_ms=... ... errors=... first_error="..."`.
    pub fn fields(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let requests = self.total_us.len();
        let rps = if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        };
        let first_error = self
            .first_error
            .as_deref()
            .map(|error| error.replace(char::is_whitespace, "_"))
            .unwrap_or_else(|| "none".into());
        format!(
            "connections={} stream={} elapsed_s={:.3} requests={} rps={:.1} p50_ms={} p90_ms={} \
             p99_ms={} max_ms={} ttfb_p50_ms={} ttfb_p99_ms={} with_usage={} answered={} errors={} first_error={}",
            self.connections,
            u8::from(self.stream),
            secs,
            requests,
            rps,
            percentile_ms(&self.total_us, 0.50),
            percentile_ms(&self.total_us, 0.90),
            percentile_ms(&self.total_us, 0.99),
            percentile_ms(&self.total_us, 1.0),
            percentile_ms(&self.first_byte_us, 0.50),
            percentile_ms(&self.first_byte_us, 0.99),
            self.with_usage,
            self.answered,
            self.errors,
            first_error,
        )
    }
}

/// The latency at or below which a fraction `q` of the requests finished (nearest rank).
fn percentile_ms(sorted_us: &[u32], q: f64) -> String {
    let n = sorted_us.len();
    if n == 0 {
        return "na".into();
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    format!("{:.3}", f64::from(sorted_us[rank - 1]) / 1000.0)
}
