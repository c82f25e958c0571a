//! konnect node library: everything the `konnect` binary runs. See docs/ARCHITECTURE.md.

pub mod raft;
pub mod resources;
pub mod store;
