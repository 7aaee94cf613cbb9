//! `cram check`: a run folder's databases pass SQLite's integrity check
//! and hold each cell once, and, given the configuration, the whole grid
//! and the rows of its other experiments that do not depend on the model
//! ([`crate::ablations::expected_keys`]).

use std::collections::HashSet;
use std::path::Path;

use super::runner::Plan;
use crate::error::{CramError, Result};
use crate::store::{self, Store};

/// What a check found (it fails with an error otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSummary {
    /// Databases in the folder.
    pub databases: usize,
    /// Distinct cells in the run.
    pub cells: usize,
    /// With a configuration: its grid's cell count (all present).
    pub grid_cells: Option<usize>,
    /// Cells whose optimisation diverged (a NaN or infinite loss).
    pub diverged: usize,
    /// Cells whose text has fewer tokens than the length it was cut to.
    pub short: usize,
}

/// Checks `run_dir`: integrity of every database, no duplicate cells, and
/// with `config` that the run was made with it and holds its whole grid
/// and nothing else.
pub fn check(run_dir: &Path, config: Option<&Path>) -> Result<CheckSummary> {
    let dbs = store::run_databases(run_dir)?;
    if dbs.is_empty() {
        return Err(CramError::bad_file(
            run_dir,
            "no result database in this folder",
        ));
    }
    let mut started = false;
    for db in &dbs {
        let st = Store::open_read(db)?;
        let ic = st.integrity_check()?;
        if ic != "ok" {
            return Err(CramError::bad_file(
                db,
                format!("integrity check failed: {ic}"),
            ));
        }
        let recs = st.records()?;
        let keys: HashSet<_> = recs.iter().map(|r| r.key()).collect();
        if keys.len() != recs.len() {
            return Err(CramError::bad_file(
                db,
                format!("{} rows but {} distinct cells", recs.len(), keys.len()),
            ));
        }
        started |= st.meta()?.is_some();
    }
    let (cells, config_hash) = if started {
        let run = store::load_run(run_dir)?;
        (run.cells, Some(run.config_hash))
    } else {
        (Vec::new(), None)
    };
    let mut grid_cells = None;
    if let Some(config) = config {
        let p = Plan::load(config)?;
        if config_hash.as_deref().is_some_and(|h| h != p.cfg.hash()) {
            return Err(CramError::bad_file(
                run_dir,
                format!(
                    "the run was made with another configuration than {}",
                    config.display()
                ),
            ));
        }
        let want: HashSet<_> = p.grid.keys(&p.grid.chunks).into_iter().collect();
        let have: HashSet<_> = cells.iter().map(|c| c.key()).collect();
        let missing = want.difference(&have).count();
        let extra = have.difference(&want).count();
        if missing > 0 || extra > 0 {
            return Err(CramError::bad_file(
                run_dir,
                format!(
                    "incomplete: {missing} of the grid's {} cells missing, {extra} cells not in the grid",
                    want.len()
                ),
            ));
        }
        grid_cells = Some(want.len());
        let want = crate::ablations::expected_keys(&p, &cells);
        if !want.is_empty() {
            let have: HashSet<_> = store::load_ablations(run_dir)?
                .rows
                .into_iter()
                .map(|r| r.key)
                .collect();
            let missing: Vec<_> = want.difference(&have).collect();
            if let Some(first) = missing.first() {
                return Err(CramError::bad_file(
                    run_dir,
                    format!(
                        "incomplete: {} of the {} expected rows of the other experiments ([ablations]) missing, e.g. {} of `{}`, text `{}`; run the sweep again to add them",
                        missing.len(),
                        want.len(),
                        first.kind.as_str(),
                        first.dataset,
                        first.sample_id
                    ),
                ));
            }
        }
    }
    Ok(CheckSummary {
        databases: dbs.len(),
        cells: cells.len(),
        grid_cells,
        diverged: cells
            .iter()
            .filter(|c| c.stop_reason == crate::engine::StopReason::Diverged)
            .count(),
        short: cells
            .iter()
            .filter(|c| c.cell.length < c.grid_length)
            .count(),
    })
}
