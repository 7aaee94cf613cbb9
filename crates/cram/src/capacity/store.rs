//! The store of a capacity run: `capacity.sqlite` in the run folder.
//!
//! `meta` holds the run's settings (model identity, engine and search
//! settings, as JSON); `texts` one row per text whose search has finished
//! at least one stage: where the search stands (JSON), its checkpoint (the
//! vectors that reproduce the horizon and AdamW's moments, little-endian
//! f32 BLOBs) and, once the search is over, the horizon's metrics;
//! `stages` one row per finished stage. WAL mode, `synchronous = FULL`, and
//! the stages that finish in one step are committed with their texts' rows
//! in one transaction: after `kill -9` a stage is either stored with its
//! checkpoint or absent.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::{StageRecord, TextProgress};
use crate::engine::OptState;
use crate::error::{CramError, Result};
use crate::store::{blob_f32, f32_blob, integrity, open_durable, real, sql_err, unix_now};

/// File name of a capacity run's database.
pub const CAPACITY_DB: &str = "capacity.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS texts (
    text_index INTEGER PRIMARY KEY NOT NULL,
    sample_id  TEXT NOT NULL,
    horizon    INTEGER NOT NULL,
    done       INTEGER NOT NULL,
    progress   TEXT NOT NULL,
    params     BLOB NOT NULL,
    m          BLOB NOT NULL,
    v          BLOB NOT NULL,
    t          INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    text_index INTEGER NOT NULL,
    stage      INTEGER NOT NULL,
    target     INTEGER NOT NULL,
    prefix     INTEGER NOT NULL,
    exact      INTEGER NOT NULL,
    steps      INTEGER NOT NULL,
    loss       REAL NOT NULL,
    accuracy   REAL NOT NULL,
    lo         INTEGER NOT NULL,
    hi         INTEGER,
    PRIMARY KEY (text_index, stage)
);
";

/// What a capacity database holds (see [`CapacityStore::summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacitySummary {
    /// Texts with at least one finished stage.
    pub texts: usize,
    /// Texts whose search is over.
    pub done: usize,
    /// Finished stages.
    pub stages: usize,
}

/// An open capacity database.
pub struct CapacityStore {
    conn: Connection,
    path: PathBuf,
    /// A database without tables yet (created by a run killed at once).
    empty: bool,
}

impl CapacityStore {
    /// Opens (creating if needed) the database at `path` for writing.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            conn: open_durable(path, SCHEMA)?,
            path: path.to_path_buf(),
            empty: false,
        })
    }

    /// Opens an existing database for reading only; a file that is not a
    /// capacity database is an error.
    pub fn open_read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(CramError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| sql_err(path, e))?;
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'texts', 'stages')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_err(path, e))?;
        let any: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| sql_err(path, e))?;
        if tables != 3 && any > 0 {
            return Err(CramError::bad_file(
                path,
                "not a cram capacity database (no `meta`, `texts` and `stages` tables)",
            ));
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            empty: any == 0,
        })
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SQLite's integrity check: `ok`, or what is wrong.
    pub fn integrity_check(&self) -> Result<String> {
        integrity(&self.conn, &self.path)
    }

    /// Checks the database (integrity, every stage belongs to a stored
    /// text, stage numbers without gaps, the basis of low-dimensional runs
    /// beside it) and counts what it holds.
    pub fn summary(&self) -> Result<CapacitySummary> {
        let ic = self.integrity_check()?;
        if ic != "ok" {
            return Err(CramError::bad_file(
                &self.path,
                format!("integrity check failed: {ic}"),
            ));
        }
        let texts = self.load()?;
        let stages = self.stages()?;
        for p in &texts {
            let n = stages.iter().filter(|s| s.index == p.index).count();
            let numbered = stages
                .iter()
                .filter(|s| s.index == p.index)
                .enumerate()
                .all(|(i, s)| s.stage == i);
            if n != p.stages || !numbered {
                return Err(CramError::bad_file(
                    &self.path,
                    format!(
                        "text {} records {} stages but the stages table holds {n}{}",
                        p.index,
                        p.stages,
                        if numbered { "" } else { " with gaps" }
                    ),
                ));
            }
        }
        if let Some(s) = stages
            .iter()
            .find(|s| !texts.iter().any(|p| p.index == s.index))
        {
            return Err(CramError::bad_file(
                &self.path,
                format!("stage {} of text {} has no text row", s.stage, s.index),
            ));
        }
        // Low-dimensional checkpoints mean nothing without their basis.
        if let Some(sha) = self
            .settings()?
            .and_then(|v| v["basis_sha256"].as_str().map(String::from))
        {
            let file = crate::lowdim::basis_file(&self.path);
            if !file.is_file() {
                return Err(CramError::bad_file(
                    &self.path,
                    format!("its basis {} is missing", file.display()),
                ));
            }
            let (basis, _, _) = crate::lowdim::Basis::read(&file)?;
            if basis.sha256() != sha {
                return Err(CramError::bad_file(
                    &file,
                    format!(
                        "is not this run's basis (sha256 {}, the run's {sha})",
                        basis.sha256()
                    ),
                ));
            }
        }
        Ok(CapacitySummary {
            texts: texts.len(),
            done: texts.iter().filter(|p| p.search.done).count(),
            stages: stages.len(),
        })
    }

    /// The run's settings, if recorded.
    pub fn settings(&self) -> Result<Option<serde_json::Value>> {
        if self.empty {
            return Ok(None);
        }
        self.get_meta("settings")?
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| CramError::bad_file(&self.path, format!("meta `settings`: {e}")))
            })
            .transpose()
    }

    /// Records `settings` in a new run, or checks that an existing run was
    /// started with the same ones (the error names the first setting that
    /// differs).
    pub fn adopt_settings(&mut self, settings: &serde_json::Value) -> Result<()> {
        match self.settings()? {
            None => self
                .conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('settings', ?1)",
                    [settings.to_string()],
                )
                .map(|_| ())
                .map_err(|e| sql_err(&self.path, e)),
            Some(old) if old == *settings => Ok(()),
            Some(old) => {
                let keys = crate::sweep::differing_keys(&old.to_string(), &settings.to_string());
                let key = keys.first().cloned().unwrap_or_default();
                Err(CramError::bad_file(
                    &self.path,
                    format!(
                        "this run was started with other settings (`{key}`: {} here, {} now); resume it with the same settings or use another --out",
                        value_at(&old, &key),
                        value_at(settings, &key)
                    ),
                ))
            }
        }
    }

    /// Records a descriptive `key` (the model's name as typed, ...) that,
    /// unlike the settings, may change between runs.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .map(|_| ())
            .map_err(|e| sql_err(&self.path, e))
    }

    /// A value recorded by [`CapacityStore::set_meta`].
    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        if self.empty {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| sql_err(&self.path, e))
    }

    /// Every stored text's progress with its checkpoint, by input position.
    pub fn load(&self) -> Result<Vec<TextProgress>> {
        if self.empty {
            return Ok(Vec::new());
        }
        let err = |e| sql_err(&self.path, e);
        let mut st = self
            .conn
            .prepare("SELECT progress, params, m, v, t FROM texts ORDER BY text_index")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (json, params, m, v, t) = row.map_err(err)?;
            let mut p: TextProgress = serde_json::from_str(&json)
                .map_err(|e| CramError::bad_file(&self.path, format!("a text's progress: {e}")))?;
            p.checkpoint = OptState {
                params: blob_f32(&self.path, &params)?,
                m: blob_f32(&self.path, &m)?,
                v: blob_f32(&self.path, &v)?,
                t: t as usize,
            };
            out.push(p);
        }
        Ok(out)
    }

    /// Every finished stage, by text and stage.
    pub fn stages(&self) -> Result<Vec<StageRecord>> {
        if self.empty {
            return Ok(Vec::new());
        }
        let err = |e| sql_err(&self.path, e);
        let mut st = self
            .conn
            .prepare(
                "SELECT text_index, stage, target, prefix, exact, steps, loss, accuracy, lo, hi FROM stages ORDER BY text_index, stage",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(StageRecord {
                    index: r.get::<_, i64>(0)? as usize,
                    stage: r.get::<_, i64>(1)? as usize,
                    target: r.get::<_, i64>(2)? as usize,
                    prefix: r.get::<_, i64>(3)? as usize,
                    exact: r.get(4)?,
                    steps: r.get::<_, i64>(5)? as usize,
                    loss: r.get(6)?,
                    accuracy: r.get(7)?,
                    lo: r.get::<_, i64>(8)? as usize,
                    hi: r.get::<_, Option<i64>>(9)?.map(|h| h as usize),
                })
            })
            .map_err(err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(err)
    }

    /// Stores finished stages and the rows of their texts in one
    /// transaction.
    pub fn commit(&mut self, texts: &[&TextProgress], stages: &[StageRecord]) -> Result<()> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        for p in texts {
            let json = serde_json::to_string(p)
                .map_err(|e| CramError::Input(format!("internal: progress to JSON: {e}")))?;
            let c = &p.checkpoint;
            tx.execute(
                "INSERT OR REPLACE INTO texts (text_index, sample_id, horizon, done, progress, params, m, v, t, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    p.index as i64,
                    p.id,
                    p.horizon() as i64,
                    p.search.done,
                    json,
                    f32_blob(&c.params),
                    f32_blob(&c.m),
                    f32_blob(&c.v),
                    c.t as i64,
                    unix_now()
                ],
            )
            .map_err(err)?;
        }
        for s in stages {
            tx.execute(
                "INSERT OR REPLACE INTO stages (text_index, stage, target, prefix, exact, steps, loss, accuracy, lo, hi) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    s.index as i64,
                    s.stage as i64,
                    s.target as i64,
                    s.prefix as i64,
                    s.exact,
                    s.steps as i64,
                    real(s.loss),
                    real(s.accuracy),
                    s.lo as i64,
                    s.hi.map(|h| h as i64)
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

/// The value at the dotted `key` (`capacity.search`) in `v`, as JSON
/// (`absent` when there is none).
fn value_at(v: &serde_json::Value, key: &str) -> String {
    v.pointer(&format!("/{}", key.replace('.', "/")))
        .map_or_else(|| "absent".into(), |x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::SearchState;

    fn progress(index: usize, lo: usize) -> TextProgress {
        TextProgress {
            index,
            id: format!("t{index}"),
            tokens_sha256: "abc".into(),
            n_tokens: 64,
            search: SearchState {
                lo,
                hi: Some(40),
                target: 33,
                done: false,
                climb: 2,
            },
            stages: 3,
            steps: 120,
            seconds: 1.5,
            checkpoint: OptState {
                params: vec![1.0, -2.0],
                m: vec![0.5, 0.25],
                v: vec![0.125, 1e-9],
                t: 120,
            },
            result: None,
        }
    }

    #[test]
    fn progress_and_stages_round_trip_and_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CAPACITY_DB);
        let mut s = CapacityStore::open(&path).unwrap();
        let settings =
            serde_json::json!({"search": {"search": "gallop", "start": 8}, "model": "x"});
        s.adopt_settings(&settings).unwrap();
        s.adopt_settings(&settings).unwrap();
        let other = serde_json::json!({"search": {"search": "step:1", "start": 8}, "model": "x"});
        let e = s.adopt_settings(&other).unwrap_err().to_string();
        assert!(
            e.contains("`search.search`") && e.contains("\"gallop\""),
            "{e}"
        );
        let stage = StageRecord {
            index: 1,
            stage: 2,
            target: 40,
            prefix: 32,
            exact: false,
            steps: 100,
            loss: f64::NAN,
            accuracy: 0.8,
            lo: 32,
            hi: Some(40),
        };
        let (a, b) = (progress(1, 32), progress(0, 16));
        s.commit(&[&a, &b], std::slice::from_ref(&stage)).unwrap();
        drop(s);
        let r = CapacityStore::open_read(&path).unwrap();
        assert_eq!(r.load().unwrap(), vec![b, a]);
        let got = r.stages().unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].loss.is_infinite(), "NaN is stored as +inf");
        assert_eq!(got[0].hi, Some(40));
        assert!(CapacityStore::open_read(&dir.path().join("missing.sqlite")).is_err());
    }
}
