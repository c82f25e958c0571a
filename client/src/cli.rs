//! The `konnectctl` commands: `cluster` (membership), `resources` (apply, get, delete,
//! watch), `secrets` (rekey) and `output` (tables, JSON and YAML views of the proto types).

pub mod access;
pub mod cluster;
pub mod output;
pub mod resources;
pub mod secrets;
pub mod spend;

use konnect_client::{Client, ClientError, TrustRoots};

use output::OutputFormat;

/// What every command needs from the global options.
pub struct Context {
    /// Admin endpoints, already normalised (`http://host:port`, `https://host:port`).
    pub endpoints: Vec<String>,
    /// The admin token; never printed.
    pub token: Option<String>,
    /// The CAs `https://` endpoints are verified against (`--ca`, or the system's).
    pub trust: TrustRoots,
    pub output: OutputFormat,
}

impl Context {
    /// Connects to the first reachable endpoint.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with_trust(
            self.endpoints.clone(),
            self.token.clone(),
            self.trust.clone(),
        )
        .await
    }
}
