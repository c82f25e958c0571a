//! The `konnect` binary: command-line parsing only; `konnect::node::run` does the work.

use clap::{Parser, Subcommand};
use konnect::config::ServeArgs;

/// konnect: API gateway, AI gateway and API platform in one binary, with its configuration
/// replicated by Raft across the nodes of a cluster.
#[derive(Parser)]
#[command(name = "konnect", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node (see `konnect serve --help`; `konnect serve --dev` for a first look).
    Serve(ServeArgs),
    /// Make TLS certificates for the admin and peer ports (`konnect certs init --help`).
    #[command(subcommand)]
    Certs(konnect::certs::CertsCommand),
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
        Command::Serve(args) => {
            let settings = match args.resolve() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            konnect::telemetry::init_logging(&settings.log, settings.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
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
