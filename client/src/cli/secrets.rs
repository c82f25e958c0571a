//! `konnectctl secrets ...`: secrets at rest; `rekey` re-encrypts stored secrets under the
//! cluster's new primary key during a key rotation (docs/security.md).

use clap::Subcommand;
use serde::Serialize;

use super::output::{print_stdout, print_structured, OutputFormat};
use super::Context;

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Re-encrypt every stored secret (TLS private keys, upstream client keys) with the
    /// primary key of the answering node. Run it after every node restarted with the new key
    /// first in its --secret-key-file and the old one still listed; then remove the old key.
    Rekey,
}

#[derive(Serialize)]
struct RekeyView {
    rewritten_fields: u32,
    primary_key_id: String,
    revision: u64,
}

pub async fn run(context: &Context, command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Rekey => {
            let client = context.connect().await?;
            let response = client.rekey().await?;
            let view = RekeyView {
                rewritten_fields: response.rewritten_fields,
                primary_key_id: response.primary_key_id,
                revision: response.revision,
            };
            match context.output {
                OutputFormat::Table => print_stdout(&format!(
                    "{} secret field(s) re-encrypted; all are now encrypted with key {:?}",
                    view.rewritten_fields, view.primary_key_id
                )),
                format => print_structured(format, &view),
            }
        }
    }
}
