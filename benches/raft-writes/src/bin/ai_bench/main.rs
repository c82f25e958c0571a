//! `ai-bench`: the two programs of benches/ai, which compares konnect's AI gateway with
//! LiteLLM's proxy in front of the same mock provider. Each subcommand is one process that
//! `run.sh` starts; benches/README.md says what the figures mean.
//!
//! Code map:
//! - `mock`: an OpenAI-compatible provider (`POST /v1/chat/completions`, JSON or SSE) answering
//!   after a fixed delay, so the gateways in front of it are measured, not a model.
//! - `load`: the load generator: C HTTP/1.1 keep-alive connections each posting the same chat
//!   request back to back for a fixed time; exact latency percentiles (and, for streams, the time
//!   to the first body bytes), every answer checked.
//!
//! Architecture Invariant: this binary only listens on or connects to the addresses it is given;
//! it starts no process and writes no file.

mod load;
mod mock;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "A mock OpenAI-compatible provider and a chat-completions load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves `POST /v1/chat/completions` (OpenAI's shape, JSON or SSE) after a fixed delay.
    Mock {
        #[arg(long)]
        addr: SocketAddr,
        /// Milliseconds between the end of the request and the first byte of the answer.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Content chunks of a streamed answer (each a `chat.completion.chunk` event).
        #[arg(long, default_value_t = 8)]
        chunks: usize,
        /// Milliseconds between two events of a streamed answer (0: all at once after the delay).
        #[arg(long, default_value_t = 1)]
        chunk_gap_ms: u64,
    },
    /// C connections post one chat request back to back for a fixed time; prints one
    /// `key=value` line (requests/s, latency percentiles, errors).
    Load {
        /// `http://HOST:PORT/PATH` of the chat completions endpoint.
        #[arg(long)]
        url: String,
        /// Sent as `authorization: Bearer <key>`.
        #[arg(long, default_value = "none")]
        key: String,
        /// The `model` field of the request.
        #[arg(long)]
        model: String,
        /// Ask for a streamed answer (`stream: true`, `stream_options.include_usage`).
        #[arg(long)]
        stream: bool,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Seconds of the measured part.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Seconds of load before the measured part (not counted).
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
        /// One request taking longer than this counts as an error.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread each: the script pins the mock and the load generator to the load core, and a
    // single-threaded runtime does the most per core there.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mock {
            addr,
            delay_ms,
            chunks,
            chunk_gap_ms,
        } => runtime.block_on(mock::serve(mock::Settings {
            addr,
            delay: Duration::from_millis(delay_ms),
            chunks,
            chunk_gap: Duration::from_millis(chunk_gap_ms),
        })),
        Command::Load {
            url,
            key,
            model,
            stream,
            connections,
            duration_secs,
            warmup_secs,
            timeout_secs,
        } => {
            let settings = load::Settings::new(
                &url,
                &key,
                &model,
                stream,
                connections,
                Duration::from_secs(duration_secs),
                Duration::from_secs(warmup_secs),
                Duration::from_secs(timeout_secs),
            )?;
            let report = runtime.block_on(load::run(settings))?;
            println!("{}", report.fields());
            Ok(())
        }
    }
}
