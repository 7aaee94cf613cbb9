//! Capacity runs (`cram capacity`) in the report: the mean and median
//! horizon per model and setting, every text's horizon against its
//! cross-entropy, the steps of each stage, and, where a sweep of the report
//! holds the same texts, the horizon beside the fixed grid's longest exact
//! length.

use std::path::Path;

use cram::capacity::store::CAPACITY_DB;
use cram::capacity::{CapacityStore, StageRecord, TextProgress};
use cram::error::Result;
use cram::metrics::Cell;

use crate::figures::capacity::{Scatter, Series};
use crate::figures::{register_font, Figure};
use crate::tables::Table;

/// One capacity run as the report reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityRun {
    /// Name shown in the report (the run folder's name).
    pub name: String,
    /// The model's name as given to `cram capacity`.
    pub model: String,
    /// The settings recorded with the run (model identity, backend, engine,
    /// layout, search).
    pub settings: serde_json::Value,
    /// Every text with at least one finished stage.
    pub texts: Vec<TextProgress>,
    /// Every finished stage.
    pub stages: Vec<StageRecord>,
}

impl CapacityRun {
    /// The setting in one line: search, protocol, vectors (and their
    /// low-dimensional basis), learning rate.
    pub fn setting(&self) -> String {
        let s = &self.settings;
        let str_at = |p: &str| s.pointer(p).and_then(|v| v.as_str()).unwrap_or("?");
        let n = s
            .pointer("/engine/n_mem")
            .and_then(|v| v.as_u64())
            .unwrap_or(1);
        let low = s
            .pointer("/engine/low_dim")
            .filter(|l| !l.is_null())
            .map_or(String::new(), |l| {
                format!(
                    " · low-dim {} ({})",
                    l["k"],
                    l["basis"].as_str().unwrap_or("?")
                )
            });
        format!(
            "{} · {} · {n} vector{}{low} · lr {}",
            str_at("/capacity/search"),
            str_at("/engine/protocol"),
            if n == 1 { "" } else { "s" },
            s.pointer("/engine/lr")
                .map_or("?".into(), |v| v.to_string())
        )
    }

    /// The texts whose search is over.
    pub fn done(&self) -> impl Iterator<Item = &TextProgress> {
        self.texts.iter().filter(|p| p.search.done)
    }
}

/// Reads the capacity runs of the folder `path`: the run of `cram
/// capacity` (`capacity.sqlite`), or each unit of a capacity sweep (its
/// shards' databases merged); none when it holds neither.
pub fn read(path: &Path) -> Result<Vec<CapacityRun>> {
    if !path.is_dir() {
        return Ok(Vec::new());
    }
    let db = path.join(CAPACITY_DB);
    let mut groups: Vec<(String, Vec<std::path::PathBuf>)> = Vec::new();
    if db.is_file() {
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| path.display().to_string());
        groups.push((name, vec![db]));
    }
    groups.extend(cram::sweep::capacity::units(path)?);
    let mut runs = Vec::new();
    for (name, dbs) in groups {
        let mut run = CapacityRun {
            name,
            model: "?".into(),
            settings: serde_json::Value::Null,
            texts: Vec::new(),
            stages: Vec::new(),
        };
        for db in dbs {
            let store = CapacityStore::open_read(&db)?;
            if let Some(s) = store.settings()? {
                run.settings = s;
            }
            if let Some(m) = store.get_meta("model_name")? {
                run.model = m;
            }
            run.texts.extend(store.load()?);
            run.stages.extend(store.stages()?);
        }
        run.texts.sort_by_key(|t| t.index);
        runs.push(run);
    }
    Ok(runs)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Per run: texts, finished texts, mean and median horizon, texts whose
/// horizon is the whole searched text, mean steps per text, median steps
/// per stage.
pub fn summary(runs: &[CapacityRun]) -> Table {
    let mut t = Table {
        header: [
            "run",
            "model",
            "setting",
            "texts",
            "done",
            "mean horizon",
            "median horizon",
            "whole text",
            "mean steps",
            "median steps per stage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: Vec::new(),
    };
    for r in runs {
        let h: Vec<f64> = r.done().map(|p| p.horizon() as f64).collect();
        let steps: Vec<f64> = r.done().map(|p| p.steps as f64).collect();
        let mut per_stage: Vec<f64> = r.stages.iter().map(|s| s.steps as f64).collect();
        t.rows.push(vec![
            r.name.clone(),
            r.model.clone(),
            r.setting(),
            r.texts.len().to_string(),
            h.len().to_string(),
            fmt(mean(&h), 1),
            fmt(median(&mut h.clone()), 1),
            r.done().filter(|p| p.saturated()).count().to_string(),
            fmt(mean(&steps), 0),
            fmt(median(&mut per_stage), 0),
        ]);
    }
    t
}

/// Per finished text: its horizon, tokens searched, stages, steps, mean
/// cross-entropy per token without vectors, and the longest length of the
/// report's sweep cells of the same model, text and vector count that the
/// vectors reproduce exactly (accuracy 1), with the grid's lengths.
pub fn texts(runs: &[CapacityRun], cells: &[Cell]) -> Table {
    let mut t = Table {
        header: [
            "run",
            "text",
            "horizon",
            "tokens searched",
            "stages",
            "steps",
            "CE/token without vectors",
            "grid: longest exact",
            "grid lengths",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: Vec::new(),
    };
    for r in runs {
        let n_mem = r
            .settings
            .pointer("/engine/n_mem")
            .and_then(|v| v.as_u64())
            .unwrap_or(1) as usize;
        for p in r.done() {
            let grid: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.model == r.model && c.sample_id == p.id && c.n_mem == n_mem)
                .collect();
            let exact = grid
                .iter()
                .filter(|c| c.best_accuracy >= 1.0)
                .map(|c| c.length)
                .max();
            let mut lengths: Vec<usize> = grid.iter().map(|c| c.length).collect();
            lengths.sort_unstable();
            lengths.dedup();
            t.rows.push(vec![
                r.name.clone(),
                p.id.clone(),
                p.horizon().to_string(),
                p.n_tokens.to_string(),
                p.stages.to_string(),
                p.steps.to_string(),
                fmt(p.result.as_ref().map(|x| x.text_loss), 3),
                if grid.is_empty() {
                    "–".into()
                } else {
                    exact.map_or("none".into(), |l| l.to_string())
                },
                lengths
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        }
    }
    t
}

/// Draws the capacity figures of `runs` into `dir` (PNG and SVG each) and
/// returns them; none without a finished text.
pub fn draw(dir: &Path, runs: &[CapacityRun]) -> Result<Vec<Figure>> {
    let n_done: usize = runs.iter().map(|r| r.done().count()).sum();
    if n_done == 0 {
        return Ok(Vec::new());
    }
    register_font()?;
    // A model given as a path is named by its last component.
    let label = |r: &CapacityRun| {
        let m = Path::new(&r.model)
            .file_name()
            .map_or(r.model.clone(), |n| n.to_string_lossy().into_owned());
        format!("{m} · {}", r.setting())
    };
    let horizons = Scatter {
        x_desc: "Cross-entropy without vectors, nats/token",
        y_desc: "Horizon, tokens",
        filled: "horizon inside the text",
        hollow: "the whole searched text (horizon at least this)",
        series: runs
            .iter()
            .map(|r| Series {
                label: label(r),
                points: r
                    .done()
                    .filter_map(|p| {
                        let ce = p.result.as_ref()?.text_loss;
                        Some((ce, p.horizon() as f64, !p.saturated()))
                    })
                    .collect(),
            })
            .collect(),
    };
    horizons.render(dir, "capacity_horizon")?;
    let stages = Scatter {
        x_desc: "Stage target, tokens",
        y_desc: "Steps of the stage",
        filled: "stage reached its target",
        hollow: "stage failed",
        series: runs
            .iter()
            .map(|r| Series {
                label: label(r),
                points: r
                    .stages
                    .iter()
                    .map(|s| (s.target as f64, s.steps as f64, s.exact))
                    .collect(),
            })
            .collect(),
    };
    stages.render(dir, "capacity_stages")?;
    let n_stages: usize = runs.iter().map(|r| r.stages.len()).sum();
    let models: Vec<&str> = runs.iter().map(|r| r.model.as_str()).collect();
    Ok(vec![
        Figure {
            stem: "capacity_horizon".into(),
            title: "Capacity search: horizon against cross-entropy".into(),
            caption: format!(
                "Each finished text of {} capacity run(s) ({}; {n_done} texts): the longest prefix greedy decoding reproduces exactly from the vectors alone, against the text's mean cross-entropy per token under the model without vectors. Rings: the whole searched text decoded (the horizon is at least that).",
                runs.len(),
                models.join(", ")
            ),
        },
        Figure {
            stem: "capacity_stages".into(),
            title: "Capacity search: steps per stage".into(),
            caption: format!(
                "Optimisation steps of each of the {n_stages} finished stages against the stage's target length; rings: stages that ended without reaching their target (their best vectors' decoded prefix still counts)."
            ),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cram::capacity::{Horizon, SearchState};

    fn text(id: &str, lo: usize, n_tokens: usize) -> TextProgress {
        TextProgress {
            index: 0,
            id: id.into(),
            tokens_sha256: String::new(),
            n_tokens,
            search: SearchState {
                lo,
                hi: Some(lo + 1),
                target: lo + 1,
                done: true,
                climb: 0,
            },
            stages: 4,
            steps: 100,
            seconds: 1.0,
            checkpoint: Default::default(),
            result: Some(Horizon {
                loss: Some(0.5),
                accuracy: Some(1.0),
                original_loss: 4.0,
                original_accuracy: 0.2,
                text_loss: 4.5,
            }),
        }
    }

    fn cell(id: &str, length: usize, acc: f64) -> Cell {
        Cell {
            model: "m".into(),
            dataset: "d".into(),
            sample_id: id.into(),
            n_mem: 1,
            length,
            hidden_size: 8,
            vocab_size: 10,
            original_loss: 1.0,
            original_accuracy: 0.1,
            original_n_predicted: length,
            best_loss: 0.1,
            best_accuracy: acc,
            n_predicted: length,
        }
    }

    #[test]
    fn the_tables_summarise_horizons_and_set_them_beside_the_grid() {
        let run = CapacityRun {
            name: "run".into(),
            model: "m".into(),
            settings: serde_json::json!({"capacity": {"search": "gallop"}, "engine": {"protocol": "cram", "n_mem": 1, "lr": 0.3}}),
            texts: vec![text("a", 40, 128), text("b", 21, 128), text("c", 64, 64)],
            stages: Vec::new(),
        };
        assert_eq!(run.setting(), "gallop · cram · 1 vector · lr 0.3");
        let s = summary(std::slice::from_ref(&run));
        // Mean (40 + 21 + 64) / 3, median 40, one text decoded whole.
        assert_eq!(s.rows[0][5..8], ["41.7", "40.0", "1"]);
        let cells = [
            cell("a", 16, 1.0),
            cell("a", 32, 1.0),
            cell("a", 48, 0.97),
            cell("b", 16, 0.9),
            cell("zz", 16, 1.0),
        ];
        let t = texts(std::slice::from_ref(&run), &cells);
        let col = |r: usize| (t.rows[r][7].as_str(), t.rows[r][8].as_str());
        assert_eq!(col(0), ("32", "16 32 48"));
        assert_eq!(col(1), ("none", "16"));
        assert_eq!(col(2), ("–", ""));
    }
}
