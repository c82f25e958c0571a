//! The AI cost ledger workload; for now its check (`ledger/check.rs`): every node's ledger
//! against the AI calls the clients saw complete.

pub mod check;
