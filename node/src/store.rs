//! The only module that knows the embedded engine (redb): a small facade of named byte tables,
//! transactions and durable commits that the Raft log store and state machine are built on.
//!
//! Invariant: nothing outside this file imports `redb`. Swapping the engine touches only here.
//! Keys and values are byte strings; callers encode them (big-endian integers for ordered keys,
//! protobuf for values).

use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Errors from the embedded store, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("storage: {op}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub message: String,
}

impl StoreError {
    fn new(op: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError {
            op,
            message: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A named table of byte keys to byte values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table(pub &'static str);

impl Table {
    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// One database file. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Opens (or creates) the database at `path` and makes sure every table in `tables` exists.
    pub fn open(path: &Path, tables: &'static [Table]) -> Result<Store> {
        let db = redb::Database::create(path)
            .map_err(|e| StoreError::new("open", format!("{}: {e}", path.display())))?;
        let store = Store { db: Arc::new(db) };
        let txn = store.write()?;
        for t in tables {
            txn.txn
                .open_table(t.def())
                .map_err(|e| StoreError::new("create table", e))?;
        }
        txn.commit()?;
        Ok(store)
    }

    /// Starts a write transaction. Only one runs at a time per store; it commits durably.
    pub fn write(&self) -> Result<WriteTxn> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::new("begin write", e))?;
        Ok(WriteTxn { txn })
    }

    /// A consistent read-only view as of now; later writes are not visible through it.
    pub fn read(&self) -> Result<ReadTxn> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::new("begin read", e))?;
        Ok(ReadTxn { txn })
    }
}

/// A read-only, point-in-time view.
pub struct ReadTxn {
    txn: redb::ReadTransaction,
}

impl ReadTxn {
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        let v = t.get(key).map_err(|e| StoreError::new("get", e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// Rows with keys in `range`, in key order, at most `limit` of them.
    pub fn range<'a, R>(
        &self,
        table: Table,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
    where
        R: RangeBounds<&'a [u8]> + 'a,
    {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        range_of(&t, range, limit)
    }

    /// The last row of the table, if any.
    pub fn last(&self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        let last = t.last().map_err(|e| StoreError::new("last", e))?;
        Ok(last.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }

    pub fn len(&self, table: Table) -> Result<u64> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        t.len().map_err(|e| StoreError::new("len", e))
    }

    /// Calls `f` for every row of `table` in key order without collecting them, so a large
    /// table can be streamed (snapshots).
    pub fn for_each(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        for row in t.iter().map_err(|e| StoreError::new("iterate", e))? {
            let (k, v) = row.map_err(|e| StoreError::new("iterate", e))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}

impl ReadTxn {
    /// Calls `f` for every row of `table` with a key in `range`, in key order, without
    /// collecting them (ledger queries over many aggregate rows).
    pub fn for_each_in<'a, R>(
        &self,
        table: Table,
        range: R,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()>
    where
        R: RangeBounds<&'a [u8]> + 'a,
    {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        for row in t
            .range::<&[u8]>(range)
            .map_err(|e| StoreError::new("range", e))?
        {
            let (k, v) = row.map_err(|e| StoreError::new("range", e))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}

/// Rows of `table` with keys in `range`, in key order, at most `limit`.
fn range_of<'a, T, R>(table: &T, range: R, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
    R: RangeBounds<&'a [u8]> + 'a,
{
    let mut out = Vec::new();
    for row in table
        .range::<&[u8]>(range)
        .map_err(|e| StoreError::new("range", e))?
        .take(limit)
    {
        let (k, v) = row.map_err(|e| StoreError::new("range", e))?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// A write transaction: all of its changes become visible and durable at `commit`, or none do.
pub struct WriteTxn {
    txn: redb::WriteTransaction,
}

impl WriteTxn {
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        let v = t.get(key).map_err(|e| StoreError::new("get", e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        t.insert(key, value)
            .map_err(|e| StoreError::new("insert", e))?;
        Ok(())
    }

    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<()> {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        t.remove(key).map_err(|e| StoreError::new("remove", e))?;
        Ok(())
    }

    /// Rows with keys in `range`, in key order, at most `limit` of them.
    pub fn range<'a, R>(
        &self,
        table: Table,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>
    where
        R: RangeBounds<&'a [u8]> + 'a,
    {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        range_of(&t, range, limit)
    }

    /// Deletes every row with a key in `range`.
    pub fn delete_range<'a, R>(&mut self, table: Table, range: R) -> Result<()>
    where
        R: RangeBounds<&'a [u8]> + 'a,
    {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        t.retain_in::<&[u8], _>(range, |_, _| false)
            .map_err(|e| StoreError::new("delete range", e))?;
        Ok(())
    }

    /// Empties a table.
    pub fn clear(&mut self, table: Table) -> Result<()> {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(|e| StoreError::new("open table", e))?;
        t.retain(|_, _| false)
            .map_err(|e| StoreError::new("clear", e))?;
        Ok(())
    }

    /// Makes every change durable (fsync) and visible, atomically.
    pub fn commit(self) -> Result<()> {
        // redb's default durability is Immediate: commit returns only after fsync.
        self.txn.commit().map_err(|e| StoreError::new("commit", e))
    }

    /// Makes every change visible atomically without waiting for the disk. A crash may lose
    /// it, together with every other lazy commit since the last durable one (never part of
    /// one): callers use this only for state they can rebuild, e.g. by replaying the log.
    pub fn commit_lazy(mut self) -> Result<()> {
        self.txn
            .set_durability(redb::Durability::None)
            .map_err(|e| StoreError::new("set durability", e))?;
        self.txn.commit().map_err(|e| StoreError::new("commit", e))
    }
}

/// Encodes a u64 as a big-endian key, so byte order is numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Decodes a key written by [`u64_key`].
pub fn key_u64(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StoreError::new("decode key", format!("expected 8 bytes, got {}", key.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table("t");

    #[test]
    fn committed_writes_are_visible_and_aborted_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), &[T]).unwrap();
        let mut w = store.write().unwrap();
        w.put(T, &u64_key(1), b"one").unwrap();
        w.put(T, &u64_key(2), b"two").unwrap();
        w.commit().unwrap();
        {
            let mut w = store.write().unwrap();
            w.put(T, &u64_key(3), b"three").unwrap();
            // dropped without commit
        }
        let r = store.read().unwrap();
        assert_eq!(r.len(T).unwrap(), 2);
        let rows = r.range(T, &u64_key(2)[..].., 10).unwrap();
        assert_eq!(rows, vec![(u64_key(2).to_vec(), b"two".to_vec())]);
        assert_eq!(key_u64(&r.last(T).unwrap().unwrap().0).unwrap(), 2);
    }

    #[test]
    fn delete_range_removes_only_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), &[T]).unwrap();
        let mut w = store.write().unwrap();
        for i in 1..=5 {
            w.put(T, &u64_key(i), b"x").unwrap();
        }
        w.delete_range(T, &u64_key(2)[..]..&u64_key(4)[..]).unwrap();
        w.commit().unwrap();
        let keys: Vec<u64> = store
            .read()
            .unwrap()
            .range(T, .., 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| key_u64(&k).unwrap())
            .collect();
        assert_eq!(keys, vec![1, 4, 5]);
    }
}
