//! `cram merge`: combine result databases of one configuration (shards,
//! or runs continued elsewhere) into one run folder, idempotently.

use std::path::{Path, PathBuf};

use crate::error::{CramError, Result};
use crate::store::{self, RunMeta, Store};

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    /// The database merged into.
    pub out: PathBuf,
    /// Cells it holds now.
    pub cells: usize,
    /// Cells added by this merge.
    pub added: usize,
    /// Databases read.
    pub databases: usize,
}

/// The result databases an input names: a database file, or every one in a
/// run folder.
fn input_databases(p: &Path) -> Result<Vec<PathBuf>> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let dbs = store::run_databases(p)?;
    if dbs.is_empty() {
        return Err(CramError::bad_file(p, "no result database in this folder"));
    }
    Ok(dbs)
}

/// Merges the databases `inputs` name into `output/results.sqlite`. Every
/// configuration is checked (all the same, and the output's too) before
/// anything is written; a cell already in the output is kept as it is.
pub fn merge(inputs: &[PathBuf], output: &Path) -> Result<MergeSummary> {
    let mut dbs = Vec::new();
    for p in inputs {
        dbs.extend(input_databases(p)?);
    }
    let mut metas: Vec<(PathBuf, RunMeta)> = Vec::new();
    let mut started = Vec::new();
    for db in &dbs {
        let st = Store::open_read(db)?;
        let Some(m) = st.meta()? else {
            // Created by a run killed before it recorded its configuration.
            if st.count()? > 0 {
                return Err(CramError::bad_file(db, "holds cells but no configuration"));
            }
            continue;
        };
        started.push(db.clone());
        if let Some((first, m0)) = metas.first() {
            if m0.config_hash != m.config_hash {
                return Err(CramError::Input(format!(
                    "{} and {} were made with different configurations (differing keys: {})",
                    first.display(),
                    db.display(),
                    super::differing_keys(&m0.config_json, &m.config_json).join(", ")
                )));
            }
        }
        metas.push((db.clone(), m));
    }
    let (_, meta) = metas
        .first()
        .ok_or_else(|| CramError::Input("nothing to merge".into()))?
        .clone();
    std::fs::create_dir_all(output)
        .map_err(|e| CramError::bad_file(output, format!("cannot create folder: {e}")))?;
    let out = output.join(store::DB_NAME);
    let _lock = store::RunLock::acquire(&out, false)?;
    if out.exists() {
        if let Some(m) = Store::open_read(&out)?.meta()? {
            if m.config_hash != meta.config_hash {
                return Err(CramError::bad_file(
                    &out,
                    format!(
                        "made with another configuration (differing keys: {})",
                        super::differing_keys(&m.config_json, &meta.config_json).join(", ")
                    ),
                ));
            }
        }
    }
    let mut st = Store::open(&out)?;
    if st.meta()?.is_none() {
        st.init_meta(&meta)?;
    }
    let out_canon = std::fs::canonicalize(&out).ok();
    let mut added = 0;
    for db in &started {
        if std::fs::canonicalize(db).ok() == out_canon {
            continue;
        }
        added += st.merge_from(db)?;
    }
    Ok(MergeSummary {
        cells: st.count()?,
        out,
        added,
        databases: dbs.len(),
    })
}
