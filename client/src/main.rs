//! `konnectctl`: command-line parsing, the global options and error reporting; each command
//! group lives in `cli/`.

mod cli;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use konnect_client::{
    parse_endpoint_list_with_default_scheme, ClientError, ManifestErrors, TrustRoots,
};

use cli::output::OutputFormat;
use cli::Context;

/// Manage a konnect cluster through its admin API.
#[derive(Parser)]
#[command(name = "konnectctl", version, max_term_width = 100)]
struct Cli {
    /// Admin API endpoints, comma-separated; a bare host:port means http://host:port, or
    /// https://host:port with --ca. Each call starts at the endpoint that answered last and
    /// moves to the next one when a node cannot be reached or is unavailable.
    #[arg(
        long,
        global = true,
        env = "KONNECT_ENDPOINT",
        default_value = "127.0.0.1:7201",
        value_name = "URL[,URL...]"
    )]
    endpoint: String,

    /// PEM file of the CA that signed the nodes' admin certificates (ca.pem of `konnect certs
    /// init`): the only CA trusted on https:// endpoints, and bare host:port endpoints then
    /// mean https://. Without it, https:// endpoints are verified against the system's CAs.
    #[arg(long, global = true, env = "KONNECT_CA", value_name = "FILE")]
    ca: Option<PathBuf>,

    /// Admin token, sent as `authorization: Bearer <token>`.
    #[arg(
        long,
        global = true,
        env = "KONNECT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// Read the admin token from this file (surrounding whitespace is ignored). Takes
    /// precedence over --token and KONNECT_TOKEN.
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    output: OutputFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Form the cluster, show its state, add or remove nodes.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Create or update the resources of a YAML manifest in one atomic write.
    Apply(cli::resources::ApplyArgs),
    /// Show one resource, or list resources of a kind.
    Get(cli::resources::GetArgs),
    /// Delete one resource.
    Delete(cli::resources::DeleteArgs),
    /// Print changes to resources as they happen, until interrupted.
    Watch(cli::resources::WatchArgs),
    /// Consumers' API keys: create, list, revoke, rotate.
    #[command(subcommand)]
    Keys(cli::access::KeysCommand),
    /// Admin tokens and their roles: create, list, revoke.
    #[command(subcommand)]
    Tokens(cli::access::TokensCommand),
    /// The audit log of admin changes: who, when (leader time), what, at which revision.
    Audit(cli::access::AuditArgs),
    /// What a RateLimit has used and has left in its current window, per key (the same
    /// answer from any node). USED counts units granted to nodes: requests admitted are at
    /// most that, and nodes give unused units back when a key goes idle.
    Usage(cli::access::UsageArgs),
    /// AI spend from the cost ledger: requests, tokens and cost (USD), grouped by day,
    /// month, team, consumer, model, provider or zone; every call counted exactly once, the
    /// same answer from any node.
    Spend(cli::spend::SpendArgs),
    /// Budgets in their current period: limit, spent (counted by the ledger), reserved (held
    /// by nodes for calls in flight and unshipped spend) and remaining.
    Budgets(cli::spend::BudgetsArgs),
    /// Secrets at rest: re-encrypt stored secrets after adding a new key.
    #[command(subcommand)]
    Secrets(cli::secrets::SecretsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = match &cli.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => cli.token.filter(|token| !token.trim().is_empty()),
    };
    let (trust, scheme) = match &cli.ca {
        Some(path) => (TrustRoots::ca_file(path)?, "https"),
        None => (TrustRoots::System, "http"),
    };
    let endpoints = parse_endpoint_list_with_default_scheme(&cli.endpoint, scheme)?;
    if let Some(path) = &cli.ca {
        if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
            bail!(
                "--ca {} is given, but endpoint {plain} is plain HTTP: write it as https://{} (or drop --ca)",
                path.display(),
                plain.trim_start_matches("http://")
            );
        }
    }
    let context = Context {
        endpoints,
        token,
        trust,
        output: cli.output,
    };
    if context.output == OutputFormat::Csv && !matches!(cli.command, Command::Spend(_)) {
        bail!("-o csv is only for `konnectctl spend`; use -o json or -o yaml here");
    }
    match cli.command {
        Command::Spend(args) => cli::spend::spend(&context, args).await,
        Command::Budgets(args) => cli::spend::budgets(&context, args).await,
        Command::Cluster(command) => cli::cluster::run(&context, command).await,
        Command::Apply(args) => cli::resources::apply(&context, args).await,
        Command::Get(args) => cli::resources::get(&context, args).await,
        Command::Delete(args) => cli::resources::delete(&context, args).await,
        Command::Watch(args) => cli::resources::watch(&context, args).await,
        Command::Keys(command) => cli::access::keys(&context, command).await,
        Command::Tokens(command) => cli::access::tokens(&context, command).await,
        Command::Audit(args) => cli::access::audit(&context, args).await,
        Command::Usage(args) => cli::access::usage(&context, args).await,
        Command::Secrets(command) => cli::secrets::run(&context, command).await,
    }
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let contents = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = contents.trim();
    if token.is_empty() {
        bail!(
            "token file {} is empty: write the admin token printed by `konnectctl cluster init` into it",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Prints `error: ...` lines to stderr: one per manifest problem, otherwise one for the
/// error and its causes, with a hint where the fix is known.
fn report(error: &anyhow::Error) {
    if let Some(ManifestErrors(problems)) = error.downcast_ref::<ManifestErrors>() {
        for problem in problems {
            eprintln!("error: {problem}");
        }
        return;
    }
    let mut text = format!("{error:#}");
    if let Some(client_error) = error.downcast_ref::<ClientError>() {
        match client_error.code() {
            tonic::Code::Unauthenticated => {
                text.push_str("; pass --token or --token-file, or set KONNECT_TOKEN")
            }
            tonic::Code::PermissionDenied => text.push_str("; use a token whose role allows this"),
            _ => {}
        }
        // A TLS server answers an h2c preface with a TLS alert record, which HTTP/2 reads as
        // a frame header with an impossible length.
        let plain = client_error
            .endpoint()
            .is_some_and(|e| e.starts_with("http://"));
        if plain && text.contains("frame with invalid size") {
            text.push_str(
                "; the node may require TLS (--admin-tls-cert): use an https:// endpoint and --ca",
            );
        }
    }
    eprintln!("error: {text}");
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
}
