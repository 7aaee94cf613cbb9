//! The results store of a sweep: an SQLite database in the run folder.
//!
//! A run folder holds `results.sqlite` (an unsharded run) and/or one
//! `results-shard-I-of-N.sqlite` per shard. Each database has a `meta` table
//! (the configuration as written and in canonical form, its hash, cram's
//! version) and a `cells` table with one row per finished cell: its key
//! (model, dataset, sample id, `n_mem`, grid length; `UNIQUE`), the text's
//! hash and tokens, every metric of the engine, the loss and accuracy
//! curves, the decoded tokens, the vectors (little-endian f32 BLOB,
//! `[n_mem, input_size]`), timings, and the configuration hash and cram
//! version that made it.
//!
//! The database runs in WAL mode with `synchronous = FULL`; the cells of an
//! engine batch are inserted in one transaction, so after a crash
//! (`kill -9`, power loss) a cell's row is either complete or absent.
//!
//! [`load_run`] reads a run folder back for the report stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ablations::{AblationKey, AblationRow, Kind};
use crate::engine::StopReason;
use crate::error::{CramError, Result};
use crate::metrics::Cell;
use crate::sweep::{CellKey, Shard};

/// File name of an unsharded run's database.
pub const DB_NAME: &str = "results.sqlite";

/// Version of the database layout, stored in `meta`.
pub const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    id                   INTEGER PRIMARY KEY,
    model                TEXT NOT NULL,
    dataset              TEXT NOT NULL,
    sample_id            TEXT NOT NULL,
    n_mem                INTEGER NOT NULL,
    length               INTEGER NOT NULL,
    sample_index         INTEGER NOT NULL,
    text_hash            TEXT NOT NULL,
    token_ids            BLOB NOT NULL,
    n_tokens             INTEGER NOT NULL,
    hidden_size          INTEGER NOT NULL,
    vocab_size           INTEGER NOT NULL,
    original_loss        REAL NOT NULL,
    original_accuracy    REAL NOT NULL,
    original_n_predicted INTEGER NOT NULL,
    best_loss            REAL NOT NULL,
    best_accuracy        REAL NOT NULL,
    n_predicted          INTEGER NOT NULL,
    steps                INTEGER NOT NULL,
    best_step            INTEGER NOT NULL,
    stop_reason          TEXT NOT NULL,
    exact                INTEGER NOT NULL,
    first_mismatch       INTEGER,
    decoded_ids          BLOB NOT NULL,
    loss_curve           BLOB NOT NULL,
    accuracy_curve       BLOB NOT NULL,
    vectors              BLOB NOT NULL,
    seconds              REAL NOT NULL,
    batch_seconds        REAL NOT NULL,
    finished_at          INTEGER NOT NULL,
    model_sha256         TEXT NOT NULL,
    config_hash          TEXT NOT NULL,
    cram_version         TEXT NOT NULL,
    shard                TEXT,
    backend              TEXT,
    layout               TEXT,
    UNIQUE (model, dataset, sample_id, n_mem, length)
);
CREATE TABLE IF NOT EXISTS ablations (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    model        TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    sample_id    TEXT NOT NULL,
    length       INTEGER NOT NULL,
    n_mem        INTEGER NOT NULL,
    param        INTEGER NOT NULL,
    record       TEXT NOT NULL,
    vectors      BLOB NOT NULL,
    finished_at  INTEGER NOT NULL,
    cram_version TEXT NOT NULL,
    UNIQUE (kind, model, dataset, sample_id, length, n_mem, param)
);
";

/// The columns of the `ablations` table (added after the first schema: a
/// database made before it gets it when opened for writing, and reads as
/// having no rows when not).
const ABLATION_COLUMNS: &str =
    "kind, model, dataset, sample_id, length, n_mem, param, record, vectors, finished_at, cram_version";

const COLUMNS: &str = "model, dataset, sample_id, n_mem, length, sample_index, text_hash, \
    token_ids, n_tokens, hidden_size, vocab_size, original_loss, original_accuracy, \
    original_n_predicted, best_loss, best_accuracy, n_predicted, steps, best_step, stop_reason, \
    exact, first_mismatch, decoded_ids, loss_curve, accuracy_curve, vectors, seconds, \
    batch_seconds, finished_at, model_sha256, config_hash, cram_version, shard, backend, layout";

/// Columns added after the first schema: older databases get them (NULL
/// in their cells) when opened for writing, and read as NULL when not.
const LATE_COLUMNS: [&str; 2] = ["backend", "layout"];

/// One finished cell, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CellRecord {
    /// The per-cell metrics. `cell.length` is the text's token count (the
    /// engine's `n_tokens`), which is below [`CellRecord::grid_length`] for
    /// a text shorter than the grid length and for random texts with
    /// variable length; `cell.hidden_size` is the model's input width.
    pub cell: Cell,
    /// The grid length the text was truncated to (part of the key).
    pub grid_length: usize,
    /// Position of the sample in its data set.
    pub sample_index: usize,
    /// SHA-256 of the text's token ids (little-endian u32), as
    /// [`crate::memfile::tokens_sha256`].
    pub text_hash: String,
    /// The text's token ids.
    pub token_ids: Vec<u32>,
    /// Optimisation steps taken.
    pub steps: usize,
    /// Step at which the kept vectors were seen (0-based).
    pub best_step: usize,
    /// Why optimisation stopped.
    pub stop_reason: StopReason,
    /// Whether greedy decoding from the vectors reproduced the text.
    pub exact: bool,
    /// First position (index into the text's tokens) where the decoding
    /// differs.
    pub first_mismatch: Option<usize>,
    /// The greedy decoding.
    pub decoded_ids: Vec<u32>,
    /// Loss at every step.
    pub loss_curve: Vec<f32>,
    /// Accuracy at every step.
    pub accuracy_curve: Vec<f32>,
    /// Seconds from the start of the cell's batch to the cell's stop.
    pub seconds: f64,
    /// Seconds the whole batch took (optimisation and decoding).
    pub batch_seconds: f64,
    /// When the cell was committed, Unix seconds.
    pub finished_at: i64,
    /// SHA-256 of the model's weights.
    pub model_sha256: String,
    /// Hash of the configuration the cell was made with.
    pub config_hash: String,
    /// cram's version that made the cell.
    pub cram_version: String,
    /// The shard (`I/N`) that made the cell, if the run was sharded.
    pub shard: Option<String>,
    /// Device, dtype and kernels the cell was computed with (JSON of
    /// [`cram_models::Backend`]); `None` for cells stored before cram
    /// recorded it.
    pub backend: Option<String>,
    /// What stood in front of the vectors (JSON of
    /// [`crate::layout::Layout`]); `None` for cells stored before cram
    /// recorded it (they had nothing there).
    pub layout: Option<String>,
}

impl CellRecord {
    /// The cell's key.
    pub fn key(&self) -> CellKey {
        CellKey {
            model: self.cell.model.clone(),
            dataset: self.cell.dataset.clone(),
            sample_id: self.cell.sample_id.clone(),
            n_mem: self.cell.n_mem,
            length: self.grid_length,
        }
    }
}

/// What a run was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMeta {
    /// The configuration file as written.
    pub config_toml: String,
    /// Its canonical form ([`crate::sweep::SweepConfig::canonical_json`]).
    pub config_json: String,
    /// Hash of the canonical form.
    pub config_hash: String,
    /// cram's version that started the run.
    pub cram_version: String,
}

/// A run folder's cells, for the report stage.
#[derive(Debug, Clone)]
pub struct RunRecords {
    /// The configuration file the run was started with.
    pub config_toml: String,
    /// Hash of its canonical form.
    pub config_hash: String,
    /// Every finished cell, ordered by model, dataset, length, `n_mem`,
    /// sample index.
    pub cells: Vec<CellRecord>,
}

pub(crate) fn sql_err(path: &Path, e: rusqlite::Error) -> CramError {
    CramError::bad_file(path, format!("SQLite: {e}"))
}

pub(crate) fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn u32_blob(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn blob_f32(path: &Path, b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(CramError::bad_file(
            path,
            "a float array's size is not a multiple of 4",
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub(crate) fn blob_u32(path: &Path, b: &[u8]) -> Result<Vec<u32>> {
    if !b.len().is_multiple_of(4) {
        return Err(CramError::bad_file(
            path,
            "a token array's size is not a multiple of 4",
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A REAL value SQLite can hold: NaN (which SQLite would store as NULL,
/// breaking `NOT NULL`) is stored as +inf; a diverged cell's losses are.
pub(crate) fn real(x: f64) -> f64 {
    if x.is_nan() {
        f64::INFINITY
    } else {
        x
    }
}

fn stop_reason_str(r: StopReason) -> &'static str {
    match r {
        StopReason::Converged => "converged",
        StopReason::MaxSteps => "max_steps",
        StopReason::Patience => "patience",
        StopReason::Diverged => "diverged",
    }
}

fn parse_stop_reason(path: &Path, s: &str) -> Result<StopReason> {
    match s {
        "converged" => Ok(StopReason::Converged),
        "max_steps" => Ok(StopReason::MaxSteps),
        "patience" => Ok(StopReason::Patience),
        "diverged" => Ok(StopReason::Diverged),
        other => Err(CramError::bad_file(
            path,
            format!("unknown stop reason `{other}`"),
        )),
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Moves the database `db` (after folding its log in) to `run_dir/old/`;
/// `None` when there is no database.
pub fn move_aside(db: &Path, run_dir: &Path) -> Result<Option<PathBuf>> {
    if !db.exists() {
        return Ok(None);
    }
    // A database SQLite cannot read (corrupt, or not a database) moves
    // aside as it is, with its log.
    let readable = Store::open_existing(db).and_then(Store::checkpoint_and_close);
    let old = run_dir.join("old");
    std::fs::create_dir_all(&old)
        .map_err(|e| CramError::bad_file(&old, format!("cannot create: {e}")))?;
    let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("results");
    let now = unix_now();
    // Never over an earlier one: a second move in the same second gets -1, -2, ...
    let to = (0..)
        .map(|k| match k {
            0 => old.join(format!("{stem}-{now}.sqlite")),
            k => old.join(format!("{stem}-{now}-{k}.sqlite")),
        })
        .find(|p| !p.exists() && !side_file(p, "-wal").exists())
        .expect("some name is free");
    std::fs::rename(db, &to)
        .map_err(|e| CramError::bad_file(db, format!("cannot move to {}: {e}", to.display())))?;
    for ext in ["-wal", "-shm"] {
        let side = side_file(db, ext);
        if !side.exists() {
            continue;
        }
        let res = if readable.is_ok() {
            std::fs::remove_file(&side)
        } else {
            std::fs::rename(&side, side_file(&to, ext))
        };
        res.map_err(|e| CramError::bad_file(&side, format!("cannot move or remove: {e}")))?;
    }
    Ok(Some(to))
}

/// The exclusive right to write one results database, held by one process
/// at a time: an advisory lock on `DB.lock` (which holds the holder's
/// PID), released when the value is dropped or the process ends, however
/// it ends.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of database `db`; when another process holds it, waits
    /// for it with `wait`, else fails at once naming the holder's PID.
    pub fn acquire(db: &Path, wait: bool) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        let path = side_file(db, ".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CramError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) if wait => {
                file.lock().map_err(|e| CramError::io(&path, e))?;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if pid.is_empty() { "unknown" } else { pid };
                return Err(CramError::Input(format!(
                    "{}: another cram process (PID {holder}) is writing this run; wait for it to finish, or pass --wait",
                    db.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CramError::io(&path, e)),
        }
        let write_pid = (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.flush()
        })();
        write_pid.map_err(|e| CramError::io(&path, e))?;
        Ok(Self { _file: file })
    }
}

/// `db` with `ext` (`-wal`, `-shm`) appended: SQLite's side files.
pub fn side_file(db: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}{ext}", db.display()))
}

/// The database file of `shard` (or of an unsharded run) in `run_dir`.
pub fn db_path(run_dir: &Path, shard: Option<Shard>) -> PathBuf {
    match shard {
        Some(s) if s.count > 1 => run_dir.join(s.file_name()),
        _ => run_dir.join(DB_NAME),
    }
}

/// The result databases in `run_dir`: `results.sqlite` and
/// `results-shard-*.sqlite`, sorted by name.
pub fn run_databases(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(run_dir).map_err(|e| CramError::io(run_dir, e))?;
    let mut out = Vec::new();
    for e in entries {
        let p = e.map_err(|e| CramError::io(run_dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == DB_NAME || (name.starts_with("results-shard-") && name.ends_with(".sqlite")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Opens (creating if needed) the database at `path` for crash-safe
/// writing: WAL mode, `synchronous = FULL`, a 30 s busy timeout, and
/// `schema` (idempotent statements) applied.
pub(crate) fn open_durable(path: &Path, schema: &str) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| sql_err(path, e))?;
    let err = |e| sql_err(path, e);
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CramError::bad_file(
            path,
            format!("SQLite: cannot switch to WAL mode (journal mode is {mode}); is the folder on a network file system?"),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.execute_batch(schema).map_err(err)?;
    Ok(conn)
}

/// SQLite's integrity check of the database `path` open on `conn`: `ok`,
/// or what is wrong.
pub(crate) fn integrity(conn: &Connection, path: &Path) -> Result<String> {
    let err = |e| sql_err(path, e);
    let mut st = conn.prepare("PRAGMA integrity_check").map_err(err)?;
    let lines: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
    Ok(lines.join("; "))
}

/// An open results database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`: WAL mode,
    /// `synchronous = FULL`, the schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open_durable(path, SCHEMA)?;
        let err = |e| sql_err(path, e);
        add_late_columns(&conn).map_err(err)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database for reading only: nothing is written to
    /// it (no schema, no migration), and a file that is not a cram results
    /// database (empty, corrupt, another program's) is an error.
    pub fn open_read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(CramError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sql_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| sql_err(path, e))?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| sql_err(path, e))?;
        if !["meta", "cells"]
            .iter()
            .all(|t| tables.iter().any(|n| n == t))
        {
            return Err(CramError::bad_file(
                path,
                "not a cram results database (no `meta` and `cells` tables)",
            ));
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The columns to select from `cells` of schema `db` (`main`, or an
    /// attached one): a database made before one of [`LATE_COLUMNS`] has
    /// NULL there.
    fn select_columns(&self, db: &str) -> Result<String> {
        let mut cols = COLUMNS.to_string();
        for c in LATE_COLUMNS {
            let has = self
                .conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('cells', '{db}') WHERE name = '{c}'"
                ))
                .and_then(|mut st| st.exists([]))
                .map_err(|e| sql_err(&self.path, e))?;
            if !has {
                cols = cols.replace(&format!(", {c}"), ", NULL");
            }
        }
        Ok(cols)
    }

    /// Opens an existing database for writing (never creates one).
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(CramError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Self::open(path)
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| sql_err(&self.path, e))
    }

    /// What the run was started with; `None` for a new database.
    pub fn meta(&self) -> Result<Option<RunMeta>> {
        let Some(config_hash) = self.get_meta("config_hash")? else {
            return Ok(None);
        };
        let get = |k: &str| -> Result<String> {
            self.get_meta(k)?
                .ok_or_else(|| CramError::bad_file(&self.path, format!("meta table lacks `{k}`")))
        };
        Ok(Some(RunMeta {
            config_toml: get("config_toml")?,
            config_json: get("config_json")?,
            config_hash,
            cram_version: get("cram_version")?,
        }))
    }

    /// Records what the run is started with (one transaction).
    pub fn init_meta(&mut self, m: &RunMeta) -> Result<()> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        for (k, v) in [
            ("schema_version", SCHEMA_VERSION),
            ("config_toml", m.config_toml.as_str()),
            ("config_json", m.config_json.as_str()),
            ("config_hash", m.config_hash.as_str()),
            ("cram_version", m.cram_version.as_str()),
        ] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// The keys of the finished cells and their text hashes.
    pub fn done(&self) -> Result<HashMap<CellKey, String>> {
        let err = |e| sql_err(&self.path, e);
        let mut st = self
            .conn
            .prepare("SELECT model, dataset, sample_id, n_mem, length, text_hash FROM cells")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    CellKey {
                        model: r.get(0)?,
                        dataset: r.get(1)?,
                        sample_id: r.get(2)?,
                        n_mem: r.get::<_, i64>(3)? as usize,
                        length: r.get::<_, i64>(4)? as usize,
                    },
                    r.get(5)?,
                ))
            })
            .map_err(err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(err)
    }

    /// Number of rows in `cells`.
    pub fn count(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM cells", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| sql_err(&self.path, e))
    }

    /// Inserts the cells of one batch with their vectors in one
    /// transaction: all are stored or none. A cell already present is an
    /// error (the `UNIQUE` key).
    pub fn insert_batch(&mut self, cells: &[(CellRecord, Vec<f32>)]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx.prepare_cached(&insert_sql("INSERT")).map_err(err)?;
            for (c, vectors) in cells {
                insert_row(&mut st, c, vectors).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Every finished cell (without vectors), in grid order.
    pub fn records(&self) -> Result<Vec<CellRecord>> {
        let err = |e| sql_err(&self.path, e);
        let columns = self.select_columns("main")?;
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {columns} FROM cells ORDER BY model, dataset, length, n_mem, sample_index"
            ))
            .map_err(err)?;
        let path = self.path.clone();
        let rows = st.query_map([], read_row).map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(err)?.finish(&path)?);
        }
        Ok(out)
    }

    /// The vectors of one cell, `[n_mem, input_size]` row-major; `None` if
    /// the cell is not in the database.
    pub fn vectors(&self, key: &CellKey) -> Result<Option<Vec<f32>>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT vectors FROM cells WHERE model = ?1 AND dataset = ?2 AND sample_id = ?3 AND n_mem = ?4 AND length = ?5",
                params![key.model, key.dataset, key.sample_id, key.n_mem as i64, key.length as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_err(&self.path, e))?;
        blob.map(|b| blob_f32(&self.path, &b)).transpose()
    }

    /// Whether schema `db` (`main`, or an attached one) has the
    /// `ablations` table.
    fn has_ablations(&self, db: &str) -> Result<bool> {
        self.conn
            .prepare(&format!(
                "SELECT 1 FROM {db}.sqlite_master WHERE type = 'table' AND name = 'ablations'"
            ))
            .and_then(|mut st| st.exists([]))
            .map_err(|e| sql_err(&self.path, e))
    }

    /// Inserts rows of the paper's other experiments in one transaction.
    pub fn insert_ablations(&mut self, rows: &[AblationRow]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let now = unix_now();
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(&format!(
                    "INSERT INTO ablations ({ABLATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .map_err(err)?;
            for r in rows {
                let k = &r.key;
                st.execute(params![
                    k.kind.as_str(),
                    k.model,
                    k.dataset,
                    k.sample_id,
                    k.length as i64,
                    k.n_mem as i64,
                    k.param as i64,
                    r.values_json(),
                    f32_blob(&r.vectors),
                    now,
                    env!("CARGO_PKG_VERSION"),
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Every stored row of the paper's other experiments (with vectors),
    /// ordered by key; none for a database made before they existed.
    pub fn ablations(&self) -> Result<Vec<AblationRow>> {
        if !self.has_ablations("main")? {
            return Ok(Vec::new());
        }
        let err = |e| sql_err(&self.path, e);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {ABLATION_COLUMNS} FROM ablations ORDER BY kind, model, dataset, length, n_mem, sample_id, param"
            ))
            .map_err(err)?;
        type Raw = (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            String,
            Vec<u8>,
        );
        let rows: Vec<Raw> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?;
        rows.into_iter()
            .map(
                |(kind, model, dataset, sample_id, length, n_mem, param, rec, vec)| {
                    let kind = Kind::parse(&kind).ok_or_else(|| {
                        CramError::bad_file(&self.path, format!("ablations: unknown kind `{kind}`"))
                    })?;
                    let values = AblationRow::parse_values(&rec).map_err(|e| {
                        CramError::bad_file(&self.path, format!("ablations: bad record: {e}"))
                    })?;
                    Ok(AblationRow {
                        key: AblationKey {
                            kind,
                            model,
                            dataset,
                            sample_id,
                            length: length as usize,
                            n_mem: n_mem as usize,
                            param: param as usize,
                        },
                        values,
                        vectors: blob_f32(&self.path, &vec)?,
                    })
                },
            )
            .collect()
    }

    /// The keys of the stored rows of the paper's other experiments.
    pub fn ablation_keys(&self) -> Result<std::collections::HashSet<AblationKey>> {
        Ok(self.ablations()?.into_iter().map(|r| r.key).collect())
    }

    /// The vectors of every cell of (`model`, `dataset`, `length`,
    /// `n_mem`), by sample id.
    pub fn group_vectors(
        &self,
        model: &str,
        dataset: &str,
        length: usize,
        n_mem: usize,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let err = |e| sql_err(&self.path, e);
        let mut st = self
            .conn
            .prepare(
                "SELECT sample_id, vectors FROM cells WHERE model = ?1 AND dataset = ?2 AND length = ?3 AND n_mem = ?4 ORDER BY sample_index",
            )
            .map_err(err)?;
        let rows: Vec<(String, Vec<u8>)> = st
            .query_map(params![model, dataset, length as i64, n_mem as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?;
        rows.into_iter()
            .map(|(id, b)| Ok((id, blob_f32(&self.path, &b)?)))
            .collect()
    }

    /// SQLite's `PRAGMA integrity_check`: `ok`, or the problems found.
    pub fn integrity_check(&self) -> Result<String> {
        integrity(&self.conn, &self.path)
    }

    /// Copies every cell (with vectors) of the database at `other` that this
    /// one lacks, in one transaction; returns how many were added. Cells
    /// already present are left as they are, so merging twice changes
    /// nothing. The caller checks that both runs have the same
    /// configuration.
    pub fn merge_from(&mut self, other: &Path) -> Result<usize> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let other_str = other
            .to_str()
            .ok_or_else(|| CramError::bad_file(other, "the path is not valid UTF-8"))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS other", [other_str])
            .map_err(|e| sql_err(other, e))?;
        let columns = match self.select_columns("other") {
            Ok(c) => c,
            Err(e) => {
                let _ = self.conn.execute("DETACH DATABASE other", []);
                return Err(e);
            }
        };
        let other_ablations = match self.has_ablations("other") {
            Ok(h) => h,
            Err(e) => {
                let _ = self.conn.execute("DETACH DATABASE other", []);
                return Err(e);
            }
        };
        let result = (|| -> rusqlite::Result<usize> {
            let tx = self.conn.transaction()?;
            let n = tx.execute(
                &format!("INSERT OR IGNORE INTO main.cells ({COLUMNS}) SELECT {columns} FROM other.cells"),
                [],
            )?;
            if other_ablations {
                tx.execute(
                    &format!("INSERT OR IGNORE INTO main.ablations ({ABLATION_COLUMNS}) SELECT {ABLATION_COLUMNS} FROM other.ablations"),
                    [],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })();
        let detach = self.conn.execute("DETACH DATABASE other", []);
        let n = result.map_err(err)?;
        detach.map_err(err)?;
        Ok(n)
    }

    /// Folds the write-ahead log into the database file and closes it, so
    /// the file alone holds everything (before moving or copying it).
    pub fn checkpoint_and_close(self) -> Result<()> {
        let path = self.path.clone();
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| sql_err(&path, e))?;
        self.conn.close().map_err(|(_, e)| sql_err(&path, e))
    }
}

fn insert_sql(verb: &str) -> String {
    let n = COLUMNS.split(',').count();
    let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
    format!(
        "{verb} INTO cells ({COLUMNS}) VALUES ({})",
        marks.join(", ")
    )
}

fn insert_row(
    st: &mut rusqlite::CachedStatement<'_>,
    c: &CellRecord,
    vectors: &[f32],
) -> rusqlite::Result<usize> {
    let m = &c.cell;
    st.execute(params![
        m.model,
        m.dataset,
        m.sample_id,
        m.n_mem as i64,
        c.grid_length as i64,
        c.sample_index as i64,
        c.text_hash,
        u32_blob(&c.token_ids),
        m.length as i64,
        m.hidden_size as i64,
        m.vocab_size as i64,
        real(m.original_loss),
        real(m.original_accuracy),
        m.original_n_predicted as i64,
        real(m.best_loss),
        real(m.best_accuracy),
        m.n_predicted as i64,
        c.steps as i64,
        c.best_step as i64,
        stop_reason_str(c.stop_reason),
        c.exact,
        c.first_mismatch.map(|x| x as i64),
        u32_blob(&c.decoded_ids),
        f32_blob(&c.loss_curve),
        f32_blob(&c.accuracy_curve),
        f32_blob(vectors),
        real(c.seconds),
        real(c.batch_seconds),
        c.finished_at,
        c.model_sha256,
        c.config_hash,
        c.cram_version,
        c.shard,
        c.backend,
        c.layout,
    ])
}

/// A row as read, before its blobs are decoded.
struct RawRow {
    rec: CellRecord,
    stop_reason: String,
    blobs: [Vec<u8>; 4],
}

impl RawRow {
    fn finish(mut self, path: &Path) -> Result<CellRecord> {
        let [tokens, decoded, loss, acc] = std::mem::take(&mut self.blobs);
        self.rec.token_ids = blob_u32(path, &tokens)?;
        self.rec.decoded_ids = blob_u32(path, &decoded)?;
        self.rec.loss_curve = blob_f32(path, &loss)?;
        self.rec.accuracy_curve = blob_f32(path, &acc)?;
        self.rec.stop_reason = parse_stop_reason(path, &self.stop_reason)?;
        Ok(self.rec)
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    let u = |i: usize| -> rusqlite::Result<usize> { Ok(r.get::<_, i64>(i)? as usize) };
    let cell = Cell {
        model: r.get(0)?,
        dataset: r.get(1)?,
        sample_id: r.get(2)?,
        n_mem: u(3)?,
        length: u(8)?,
        hidden_size: u(9)?,
        vocab_size: u(10)?,
        original_loss: r.get(11)?,
        original_accuracy: r.get(12)?,
        original_n_predicted: u(13)?,
        best_loss: r.get(14)?,
        best_accuracy: r.get(15)?,
        n_predicted: u(16)?,
    };
    Ok(RawRow {
        rec: CellRecord {
            cell,
            grid_length: u(4)?,
            sample_index: u(5)?,
            text_hash: r.get(6)?,
            token_ids: Vec::new(),
            steps: u(17)?,
            best_step: u(18)?,
            stop_reason: StopReason::MaxSteps,
            exact: r.get(20)?,
            first_mismatch: r.get::<_, Option<i64>>(21)?.map(|x| x as usize),
            decoded_ids: Vec::new(),
            loss_curve: Vec::new(),
            accuracy_curve: Vec::new(),
            seconds: r.get(26)?,
            batch_seconds: r.get(27)?,
            finished_at: r.get(28)?,
            model_sha256: r.get(29)?,
            config_hash: r.get(30)?,
            cram_version: r.get(31)?,
            shard: r.get(32)?,
            backend: r.get(33)?,
            layout: r.get(34)?,
        },
        stop_reason: r.get(19)?,
        blobs: [r.get(7)?, r.get(22)?, r.get(23)?, r.get(24)?],
    })
}

/// Adds the [`LATE_COLUMNS`] to a database made before they existed (its
/// cells get NULL).
fn add_late_columns(conn: &Connection) -> rusqlite::Result<()> {
    for c in LATE_COLUMNS {
        let has = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('cells') WHERE name = '{c}'"
            ))?
            .exists([])?;
        if !has {
            conn.execute(&format!("ALTER TABLE cells ADD COLUMN {c} TEXT"), [])?;
        }
    }
    Ok(())
}

/// Reads a run folder: every result database in it (an unsharded run, or
/// the shards of one), which must all have the same configuration. A cell
/// found in several databases is kept once.
///
/// # Errors
///
/// [`CramError::NotFound`] when the folder has no result database;
/// [`CramError::BadFile`] for an unreadable database or databases of
/// different configurations.
pub fn load_run(run_dir: &Path) -> Result<RunRecords> {
    let dbs = run_databases(run_dir)?;
    if dbs.is_empty() {
        return Err(CramError::NotFound {
            path: run_dir.join(DB_NAME),
        });
    }
    let mut meta: Option<(PathBuf, RunMeta)> = None;
    let mut cells = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for db in &dbs {
        let store = Store::open_read(db)?;
        let Some(m) = store.meta()? else {
            // A database created but never started (nothing in it).
            continue;
        };
        match &meta {
            None => meta = Some((db.clone(), m)),
            Some((first, m0)) if m0.config_hash != m.config_hash => {
                return Err(CramError::bad_file(
                    db,
                    format!(
                        "made with another configuration than {} (differing keys: {})",
                        first.display(),
                        crate::sweep::differing_keys(&m0.config_json, &m.config_json).join(", ")
                    ),
                ))
            }
            Some(_) => {}
        }
        for rec in store.records()? {
            if seen.insert(rec.key()) {
                cells.push(rec);
            }
        }
    }
    let (_, m) = meta
        .ok_or_else(|| CramError::bad_file(run_dir, "the run's databases hold no configuration"))?;
    cells.sort_by(|a, b| {
        (
            &a.cell.model,
            &a.cell.dataset,
            a.grid_length,
            a.cell.n_mem,
            a.sample_index,
        )
            .cmp(&(
                &b.cell.model,
                &b.cell.dataset,
                b.grid_length,
                b.cell.n_mem,
                b.sample_index,
            ))
    });
    Ok(RunRecords {
        config_toml: m.config_toml,
        config_hash: m.config_hash,
        cells,
    })
}

/// A run folder's rows of the paper's other experiments (every database,
/// a row found in several kept once), and for each solution-geometry group
/// the vectors of the sweep's own cells there (one run per text).
///
/// # Errors
///
/// Those of [`load_run`].
pub fn load_ablations(run_dir: &Path) -> Result<RunAblations> {
    let dbs = run_databases(run_dir)?;
    let mut rows: Vec<AblationRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for db in &dbs {
        for r in Store::open_read(db)?.ablations()? {
            if seen.insert(r.key.clone()) {
                rows.push(r);
            }
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    // The solution-geometry groups of any database, and every database's
    // cells there (a shard's cells may sit beside another shard's runs).
    let groups: std::collections::BTreeSet<(&str, &str, usize, usize)> = rows
        .iter()
        .filter(|r| r.key.kind == Kind::Pca)
        .map(|r| {
            (
                r.key.model.as_str(),
                r.key.dataset.as_str(),
                r.key.length,
                r.key.n_mem,
            )
        })
        .collect();
    let mut pca_cells = Vec::new();
    let mut cell_seen = std::collections::HashSet::new();
    for db in &dbs {
        let store = Store::open_read(db)?;
        for &(model, dataset, length, n_mem) in &groups {
            for (sample_id, v) in store.group_vectors(model, dataset, length, n_mem)? {
                let key = CellKey {
                    model: model.to_string(),
                    dataset: dataset.to_string(),
                    sample_id,
                    n_mem,
                    length,
                };
                if cell_seen.insert(key.clone()) {
                    pca_cells.push((key, v));
                }
            }
        }
    }
    Ok(RunAblations { rows, pca_cells })
}

/// What [`load_ablations`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunAblations {
    /// Every row, ordered by key.
    pub rows: Vec<AblationRow>,
    /// The sweep's cells in the solution-geometry groups, with vectors.
    pub pca_cells: Vec<(CellKey, Vec<f32>)>,
}
