//! The redb-backed log store and state machine pass openraft's own storage test suite.

use konnect::raft::log_store::LogStore;
use konnect::raft::state_machine::StateMachine;
use konnect::raft::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("open log");
        let (sm, _reader, _applied) = StateMachine::open(dir.path()).expect("open state");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() {
    // The suite's error, when there is one, is the failure's message.
    if let Err(e) = Suite::test_all(RedbBuilder) {
        panic!("openraft's storage suite failed: {e}");
    }
}
