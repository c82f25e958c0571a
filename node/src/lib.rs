//! konnect node library: everything the `konnect` binary runs. See docs/ARCHITECTURE.md for
//! the code map and the invariants each module keeps.

pub mod admin;
pub mod ai;
pub mod bootstrap;
pub mod certs;
pub mod clock;
pub mod config;
pub mod control_tls;
pub mod failpoints;
pub mod gateway;
pub mod grants;
pub mod ledger;
pub mod node;
pub mod raft;
pub mod resources;
pub mod secrets;
pub mod state;
pub mod status;
pub mod store;
pub mod telemetry;
