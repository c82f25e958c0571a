//! The `konnect` binary: command-line parsing only; `konnect::node::run` does the work.

use clap::{Parser, Subcommand};
use konnect::config::ServeArgs;

// jemalloc instead of glibc malloc, in this binary only (test binaries linking the library keep
// the system allocator): 7% fewer instructions per proxied request and less resident memory with
// 10,000 routes (benches/README.md, "Allocator", 2026-11-26). Its defaults are kept: they
// already hold 10,000 routes under 100 MB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// konnect: API gateway, AI gateway and API platform in one binary, with its configuration
/// replicated by Raft across the nodes of a cluster.
#[derive(Parser)]
#[command(name = "konnect", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node (see `konnect serve --help`; `konnect serve --dev` for a first look).
    Serve(ServeArgs),
    /// Make TLS certificates for the admin and peer ports (`konnect certs init --help`).
    #[command(subcommand)]
    Certs(konnect::certs::CertsCommand),
    /// Cluster data keys for secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Print a new random key line (`<key-id>:<base64 of 32 bytes>`) for --secret-key-file:
    /// `konnect secrets new-key > konnect.key && chmod 600 konnect.key`.
    NewKey {
        /// The key's id (letters, digits, '.', '_', '-'). Default: `key-` and 8 random hex
        /// digits.
        #[arg(long)]
        id: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Certs(command) => match konnect::certs::run(&command) {
            Ok(report) => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Secrets(SecretsCommand::NewKey { id }) => {
            match konnect::secrets::new_key_line(id.as_deref()) {
                Ok(line) => {
                    println!("{line}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: --id: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        Command::Serve(args) => {
            let settings = match args.resolve() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let armed = match konnect::failpoints::arm_from_env() {
                Ok(armed) => armed,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            konnect::telemetry::init_logging(&settings.log, settings.log_format);
            if !armed.is_empty() {
                tracing::warn!(points = %armed.join(";"), "crash points armed (FAILPOINTS)");
            }
            // With one core to run on (a container's CPU limit, `taskset`), one thread does
            // everything, as the multi-thread scheduler would with its one worker, but without
            // its machinery for handing work between threads: the proxy's user time per
            // request fell from 4.9-5.2 to 3.6-4.2 us (benches/README.md, fourth session).
            let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
            let mut builder = match one_core {
                true => tokio::runtime::Builder::new_current_thread(),
                false => tokio::runtime::Builder::new_multi_thread(),
            };
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            if one_core {
                tracing::info!("one core available: the async runtime runs on one thread");
            }
            match runtime.block_on(konnect::node::run(settings)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
