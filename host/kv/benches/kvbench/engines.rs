//! The engines kvbench compares, behind one interface: ledge-kv (Snapshot or Serializable),
//! redb and fjall, each opened with "relaxed" or "fsync" durability (see `main.rs`), and the
//! operations a benchmark transaction needs ([`Ops`]), retried on the engine's conflicts.

use std::path::Path;
use std::time::Duration;

use fjall::{KeyspaceCreateOptions, OptimisticTxDatabase, OptimisticTxKeyspace, PersistMode, Readable};
use ledge_kv::{Db, Durability, Isolation, Options};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Dur {
    Relaxed,
    Fsync,
}

/// How a transaction body stops early.
pub(crate) enum Step {
    /// The engine refused an operation: retry the transaction.
    Retry,
    /// The transaction decided not to commit (SmallBank insufficient funds).
    User,
}

/// The operations a benchmark transaction body needs.
pub(crate) trait Ops {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step>;
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Step>;
}

struct LedgeOps(ledge_kv::Tx);

impl Ops for LedgeOps {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        self.0.get(k).map_err(|_| Step::Retry)
    }
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Step> {
        self.0.put(k, v).map_err(|_| Step::Retry)
    }
}

struct RedbOps<'a>(redb::Table<'a, &'static [u8], &'static [u8]>);

impl Ops for RedbOps<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        let g = self.0.get(k).map_err(|_| Step::Retry)?;
        Ok(g.map(|v| v.value().to_vec()))
    }
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Step> {
        self.0.insert(k, v).map_err(|_| Step::Retry)?;
        Ok(())
    }
}

struct FjallOps<'a>(&'a mut fjall::OptimisticWriteTx, &'a OptimisticTxKeyspace);

impl Ops for FjallOps<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        let value = self.0.get(self.1, k).map_err(|_| Step::Retry)?;
        Ok(value.map(|v| v.to_vec()))
    }
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Step> {
        self.0.insert(self.1, k, v);
        Ok(())
    }
}

struct FjallRead<'a>(fjall::Snapshot, &'a OptimisticTxKeyspace);

impl Ops for FjallRead<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        let value = self.0.get(self.1, k).map_err(|_| Step::Retry)?;
        Ok(value.map(|v| v.to_vec()))
    }
    fn put(&mut self, _: &[u8], _: &[u8]) -> Result<(), Step> {
        Err(Step::User)
    }
}

struct RedbRead<'a>(redb::ReadOnlyTable<&'static [u8], &'static [u8]>, std::marker::PhantomData<&'a ()>);

impl Ops for RedbRead<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        let g = self.0.get(k).map_err(|_| Step::Retry)?;
        Ok(g.map(|v| v.value().to_vec()))
    }
    fn put(&mut self, _: &[u8], _: &[u8]) -> Result<(), Step> {
        Err(Step::User)
    }
}

pub(crate) enum Engine {
    Ledge(Db, Isolation),
    Redb(redb::Database, Dur),
    Fjall(OptimisticTxDatabase, OptimisticTxKeyspace, Dur),
}

impl Engine {
    pub(crate) fn ssn_aborts(&self) -> u64 {
        match self {
            Engine::Ledge(db, _) => db.stats().aborted_ssn,
            Engine::Redb(..) | Engine::Fjall(..) => 0,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Engine::Ledge(_, Isolation::Snapshot) => "ledge-kv SI",
            Engine::Ledge(_, Isolation::Serializable) => "ledge-kv SSN",
            Engine::Redb(..) => "redb 3.1",
            Engine::Fjall(..) => "fjall 3.1",
        }
    }

    /// Runs `body` until it commits or aborts by choice; returns the number of retryable aborts.
    pub(crate) fn exec(&self, read_only: bool, body: &mut dyn FnMut(&mut dyn Ops) -> Result<(), Step>) -> u64 {
        let mut aborts = 0;
        loop {
            match self {
                Engine::Ledge(db, iso) => {
                    let mut ops = LedgeOps(db.begin(*iso));
                    match body(&mut ops) {
                        Ok(()) => match ops.0.commit() {
                            Ok(_) => return aborts,
                            Err(e) if e.is_retryable() => aborts += 1,
                            Err(e) => panic!("commit failed: {e}"),
                        },
                        Err(Step::User) => return aborts,
                        Err(Step::Retry) => aborts += 1,
                    }
                }
                Engine::Fjall(db, keyspace, dur) => {
                    if read_only {
                        let _ = body(&mut FjallRead(db.read_tx(), keyspace));
                        return aborts;
                    }
                    let mode = match dur {
                        Dur::Relaxed => PersistMode::Buffer,
                        Dur::Fsync => PersistMode::SyncData,
                    };
                    let mut tx = db.write_tx().expect("fjall write").durability(Some(mode));
                    match body(&mut FjallOps(&mut tx, keyspace)) {
                        Ok(()) => match tx.commit().expect("fjall commit") {
                            Ok(()) => return aborts,
                            Err(_conflict) => aborts += 1,
                        },
                        Err(Step::User) => return aborts,
                        Err(Step::Retry) => aborts += 1,
                    }
                }
                Engine::Redb(db, dur) => {
                    if read_only {
                        let r = db.begin_read().expect("redb read");
                        let t = r.open_table(TABLE).expect("redb table");
                        let _ = body(&mut RedbRead(t, std::marker::PhantomData));
                        return aborts;
                    }
                    let mut w = db.begin_write().expect("redb write");
                    let d = match dur {
                        Dur::Relaxed => redb::Durability::None,
                        Dur::Fsync => redb::Durability::Immediate,
                    };
                    w.set_durability(d).expect("durability");
                    let res = {
                        let t = w.open_table(TABLE).expect("redb table");
                        body(&mut RedbOps(t))
                    };
                    match res {
                        Ok(()) => {
                            w.commit().expect("redb commit");
                            return aborts;
                        }
                        Err(_) => {
                            w.abort().expect("redb abort");
                            return aborts;
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn load(&self, mut kvs: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) {
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            batch.clear();
            batch.extend(kvs.by_ref().take(1000));
            if batch.is_empty() {
                break;
            }
            self.exec(false, &mut |ops| {
                for (k, v) in &batch {
                    ops.put(k, v)?;
                }
                Ok(())
            });
        }
    }
}

pub(crate) fn engine_wanted(kind: usize) -> bool {
    let only = std::env::var("KVBENCH_ENGINES").unwrap_or_default();
    let name = ["si", "ssn", "redb", "fjall"][kind];
    only.is_empty() || only.split(',').any(|p| p == name)
}

pub(crate) fn open_engine(kind: usize, dir: &Path, dur: Dur) -> Engine {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    let ledge_dur = match dur {
        Dur::Relaxed => Durability::Periodic(Duration::from_millis(10)),
        Dur::Fsync => Durability::Fsync,
    };
    let mut opts = Options::default().durability(ledge_dur);
    if let Ok(bytes) = std::env::var("KVBENCH_WAL_PREALLOCATE") {
        opts = opts.wal_preallocate(bytes.parse().expect("KVBENCH_WAL_PREALLOCATE is a number of bytes"));
    }
    match kind {
        0 => Engine::Ledge(Db::open_with(dir, opts).expect("open"), Isolation::Snapshot),
        1 => Engine::Ledge(Db::open_with(dir, opts).expect("open"), Isolation::Serializable),
        2 => Engine::Redb(redb::Database::create(dir.join("redb")).expect("redb"), dur),
        _ => {
            let db = OptimisticTxDatabase::builder(dir.join("fjall")).open().expect("fjall");
            let keyspace = db.keyspace("kv", KeyspaceCreateOptions::default).expect("fjall keyspace");
            Engine::Fjall(db, keyspace, dur)
        }
    }
}
