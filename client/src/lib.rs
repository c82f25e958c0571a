//! Rust client for konnect's gRPC admin API, and the parsing that `konnectctl` shares with it.
//!
//! Code map:
//! - `client`: `Client`, typed admin calls with endpoint failover and the bearer token.
//! - `error`: `ClientError`, the gRPC code, message and endpoint of a failed call.
//! - `manifest`: multi-document YAML manifests and JSON <-> `google.protobuf.Struct`.
//! - `kind`: canonical resource kind names (`services` -> `Service`).
//! - `endpoint`: the `--endpoint` list (`host:port,http://host:port`).
//! - `tls`: `TrustRoots` for `https://` endpoints (system CAs or `--ca`), and what a failed
//!   handshake means.
//!
//! The `konnectctl` binary is `main.rs` plus `cli.rs` and `cli/`; the library does not use
//! them.
//!
//! Architecture Invariant: the library prints nothing and never exposes the admin token (it
//! is sent as sensitive metadata and never appears in errors).

mod client;
pub mod endpoint;
mod error;
pub mod kind;
pub mod manifest;
mod tls;

pub use client::{Client, ResourceList, WatchStream, CONNECT_TIMEOUT};
pub use endpoint::{parse_endpoint_list, parse_endpoint_list_with_default_scheme};
pub use error::{ClientError, EndpointFailure, FIELD_METADATA_KEY, WRITE_INDEX_METADATA_KEY};
pub use kind::canonical_kind;
pub use manifest::{
    explain_apply_error, json_to_struct, parse_manifest, struct_to_json, ManifestDoc,
    ManifestError, ManifestErrors,
};
pub use tls::TrustRoots;

/// The protobuf types the client's calls take and return.
pub use konnect_proto::admin::v1 as admin;
pub use konnect_proto::admin::v1::ResourceInput;
pub use konnect_proto::state::v1 as state;
