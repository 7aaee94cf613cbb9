//! Export a run's cells as a table: CSV, JSON Lines or Parquet, one row
//! per cell, readable directly by `pandas.read_csv` / `read_json(lines=True)`
//! / `read_parquet`.
//!
//! The columns ([`COLUMNS`]) are the cell's key, its metrics, the derived
//! per-cell quantities of [`cram::metrics`] (information gain, token gain,
//! capacity), the run's bookkeeping, and the loss and accuracy curves (JSON
//! arrays in CSV and JSONL, `list<float>` in Parquet). The vectors stay in
//! the database.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use cram::ablations::AblationRow;
use cram::error::{CramError, Result};
use cram::metrics::DEFAULT_BITS;
use cram::store::{side_file, CellRecord};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (uncompressed, one row group).
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::Jsonl),
            "parquet" => Ok(Self::Parquet),
            other => Err(CramError::Input(format!(
                "unknown export format `{other}` (expected csv, jsonl or parquet)"
            ))),
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Integer or missing.
    OptInt(Option<i64>),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// List of floats.
    Floats(Vec<f32>),
}

/// The kind of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Str,
    /// Integer.
    Int,
    /// Integer or missing.
    OptInt,
    /// Float.
    Float,
    /// Boolean.
    Bool,
    /// List of floats.
    Floats,
}

/// A column of rows of type `T`: name, kind, value of a row.
pub type Column<T> = (&'static str, Kind, fn(&T) -> Value);

/// The exported columns: name, kind, value of a cell.
pub const COLUMNS: &[Column<CellRecord>] = &[
    ("model", Kind::Str, |c| Value::Str(c.cell.model.clone())),
    ("dataset", Kind::Str, |c| Value::Str(c.cell.dataset.clone())),
    ("sample_id", Kind::Str, |c| {
        Value::Str(c.cell.sample_id.clone())
    }),
    ("sample_index", Kind::Int, |c| {
        Value::Int(c.sample_index as i64)
    }),
    ("n_mem", Kind::Int, |c| Value::Int(c.cell.n_mem as i64)),
    ("length", Kind::Int, |c| Value::Int(c.grid_length as i64)),
    ("n_tokens", Kind::Int, |c| Value::Int(c.cell.length as i64)),
    ("text_hash", Kind::Str, |c| Value::Str(c.text_hash.clone())),
    ("hidden_size", Kind::Int, |c| {
        Value::Int(c.cell.hidden_size as i64)
    }),
    ("vocab_size", Kind::Int, |c| {
        Value::Int(c.cell.vocab_size as i64)
    }),
    ("original_loss", Kind::Float, |c| {
        Value::Float(c.cell.original_loss)
    }),
    ("original_accuracy", Kind::Float, |c| {
        Value::Float(c.cell.original_accuracy)
    }),
    ("original_n_predicted", Kind::Int, |c| {
        Value::Int(c.cell.original_n_predicted as i64)
    }),
    ("best_loss", Kind::Float, |c| Value::Float(c.cell.best_loss)),
    ("best_accuracy", Kind::Float, |c| {
        Value::Float(c.cell.best_accuracy)
    }),
    ("n_predicted", Kind::Int, |c| {
        Value::Int(c.cell.n_predicted as i64)
    }),
    ("original_ce_nats", Kind::Float, |c| {
        Value::Float(c.cell.original_ce())
    }),
    ("compressed_ce_nats", Kind::Float, |c| {
        Value::Float(c.cell.compressed_ce())
    }),
    ("info_gain_bits", Kind::Float, |c| {
        Value::Float(c.cell.info_gain_bits())
    }),
    ("token_gain", Kind::Float, |c| {
        Value::Float(c.cell.token_gain())
    }),
    ("capacity_tokens", Kind::Float, |c| {
        Value::Float(c.cell.capacity_tokens(DEFAULT_BITS))
    }),
    ("steps", Kind::Int, |c| Value::Int(c.steps as i64)),
    ("best_step", Kind::Int, |c| Value::Int(c.best_step as i64)),
    ("stop_reason", Kind::Str, |c| {
        Value::Str(
            serde_json::to_value(c.stop_reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        )
    }),
    ("exact", Kind::Bool, |c| Value::Bool(c.exact)),
    ("first_mismatch", Kind::OptInt, |c| {
        Value::OptInt(c.first_mismatch.map(|x| x as i64))
    }),
    ("seconds", Kind::Float, |c| Value::Float(c.seconds)),
    ("batch_seconds", Kind::Float, |c| {
        Value::Float(c.batch_seconds)
    }),
    ("finished_at", Kind::Int, |c| Value::Int(c.finished_at)),
    ("model_sha256", Kind::Str, |c| {
        Value::Str(c.model_sha256.clone())
    }),
    ("config_hash", Kind::Str, |c| {
        Value::Str(c.config_hash.clone())
    }),
    ("cram_version", Kind::Str, |c| {
        Value::Str(c.cram_version.clone())
    }),
    ("loss_curve", Kind::Floats, |c| {
        Value::Floats(c.loss_curve.clone())
    }),
    ("accuracy_curve", Kind::Floats, |c| {
        Value::Floats(c.accuracy_curve.clone())
    }),
];

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Str(s) => s.clone().into(),
        Value::Int(i) => (*i).into(),
        Value::OptInt(o) => o.map_or(serde_json::Value::Null, Into::into),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Bool(b) => (*b).into(),
        Value::Floats(xs) => xs
            .iter()
            .map(|&x| {
                serde_json::Number::from_f64(x as f64).map_or(serde_json::Value::Null, Into::into)
            })
            .collect(),
    }
}

/// Writes `cells` to `path` in `format`.
///
/// # Errors
///
/// [`CramError::Io`] / [`CramError::BadFile`] when the file cannot be
/// written.
pub fn export(cells: &[CellRecord], format: Format, path: &Path) -> Result<()> {
    write_rows(cells, COLUMNS, format, path)
}

/// The exported columns of the paper's other experiments: one row per
/// value of a row of [`cram::ablations`] (long format: the row's key, the
/// value's name, the value; the vectors of the `pca` runs stay in the
/// database).
pub const ABLATION_COLUMNS: &[Column<(AblationRow, String)>] = &[
    ("kind", Kind::Str, |r| {
        Value::Str(r.0.key.kind.as_str().into())
    }),
    ("model", Kind::Str, |r| Value::Str(r.0.key.model.clone())),
    ("dataset", Kind::Str, |r| {
        Value::Str(r.0.key.dataset.clone())
    }),
    ("sample_id", Kind::Str, |r| {
        Value::Str(r.0.key.sample_id.clone())
    }),
    ("length", Kind::Int, |r| Value::Int(r.0.key.length as i64)),
    ("n_mem", Kind::Int, |r| Value::Int(r.0.key.n_mem as i64)),
    ("param", Kind::Int, |r| Value::Int(r.0.key.param as i64)),
    ("name", Kind::Str, |r| Value::Str(r.1.clone())),
    ("value", Kind::Float, |r| Value::Float(r.0.get(&r.1))),
];

/// Writes the rows of the paper's other experiments of the run in
/// `run_dir` to `path` in `format` ([`ABLATION_COLUMNS`]); returns the
/// number of rows of the experiments written (each gives one line per value).
pub fn export_ablations(run_dir: &Path, format: Format, path: &Path) -> Result<usize> {
    refuse_inputs(run_dir, path)?;
    let ab = cram::store::load_ablations(run_dir)?;
    let long: Vec<(AblationRow, String)> = ab
        .rows
        .iter()
        .flat_map(|r| {
            let bare = AblationRow {
                vectors: Vec::new(),
                ..r.clone()
            };
            r.values.keys().map(move |k| (bare.clone(), k.clone()))
        })
        .collect();
    write_rows(&long, ABLATION_COLUMNS, format, path)?;
    Ok(ab.rows.len())
}

/// Writes `cells` (rows of any type) with `columns` to `path` in `format`.
fn write_rows<T>(cells: &[T], columns: &[Column<T>], format: Format, path: &Path) -> Result<()> {
    let io = |e: std::io::Error| CramError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
            let bad = |e: csv::Error| CramError::bad_file(path, e);
            w.write_record(columns.iter().map(|c| c.0)).map_err(bad)?;
            for cell in cells {
                let row: Vec<String> = columns
                    .iter()
                    .map(|(_, _, get)| match get(cell) {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::OptInt(o) => o.map(|i| i.to_string()).unwrap_or_default(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                        v @ Value::Floats(_) => json(&v).to_string(),
                    })
                    .collect();
                w.write_record(&row).map_err(bad)?;
            }
            w.flush().map_err(io)?;
        }
        Format::Jsonl => {
            let mut w = std::io::BufWriter::new(file);
            for cell in cells {
                let obj: serde_json::Map<String, serde_json::Value> = columns
                    .iter()
                    .map(|(name, _, get)| (name.to_string(), json(&get(cell))))
                    .collect();
                writeln!(w, "{}", serde_json::Value::Object(obj)).map_err(io)?;
            }
            w.flush().map_err(io)?;
        }
        Format::Parquet => write_parquet(cells, columns, file)
            .map_err(|e| CramError::bad_file(path, format!("Parquet: {e}")))?,
    }
    Ok(())
}

/// Exports the run in the folder `run_dir` to `path`,
/// refusing to write over any file the run is read from (its databases and
/// their SQLite side files). Returns the number of cells written.
pub fn export_run(run_dir: &Path, format: Format, path: &Path) -> Result<usize> {
    refuse_inputs(run_dir, path)?;
    let run = cram::store::load_run(run_dir)?;
    export(&run.cells, format, path)?;
    Ok(run.cells.len())
}

/// Refuses an output `path` that is one of the files the run in `run_dir`
/// is read from (its databases and their SQLite side files).
fn refuse_inputs(run_dir: &Path, path: &Path) -> Result<()> {
    let inputs = cram::store::run_databases(run_dir)?;
    let out = std::fs::canonicalize(path).ok();
    for db in &inputs {
        for f in [db.clone(), side_file(db, "-wal"), side_file(db, "-shm")] {
            if out.is_some() && std::fs::canonicalize(&f).ok() == out {
                return Err(CramError::bad_file(
                    path,
                    "is an input of the export (a results database of the run); refusing to overwrite it",
                ));
            }
        }
    }
    Ok(())
}

/// The Parquet schema of `columns`.
fn parquet_schema<T>(columns: &[Column<T>]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, kind, _)| match kind {
            Kind::Str => format!("required binary {name} (UTF8);"),
            Kind::Int => format!("required int64 {name};"),
            Kind::OptInt => format!("optional int64 {name};"),
            Kind::Float => format!("required double {name};"),
            Kind::Bool => format!("required boolean {name};"),
            Kind::Floats => format!(
                "required group {name} (LIST) {{ repeated group list {{ required float element; }} }}"
            ),
        })
        .collect();
    format!("message cram_cells {{ {} }}", fields.join(" "))
}

fn write_parquet<T>(
    cells: &[T],
    columns: &[Column<T>],
    file: std::fs::File,
) -> parquet::errors::Result<()> {
    use parquet::data_type::{
        BoolType, ByteArray, ByteArrayType, DoubleType, FloatType, Int64Type,
    };
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(parse_message_type(&parquet_schema(columns))?);
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let mut rg = writer.next_row_group()?;
    let mut col_index = 0;
    while let Some(mut col) = rg.next_column()? {
        let (_, kind, get) = columns[col_index];
        let values: Vec<Value> = cells.iter().map(get).collect();
        match kind {
            Kind::Str => {
                let v: Vec<ByteArray> = values
                    .iter()
                    .map(|x| match x {
                        Value::Str(s) => ByteArray::from(s.as_str()),
                        _ => unreachable!("a Str column yields strings"),
                    })
                    .collect();
                col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
            }
            Kind::Int => {
                let v: Vec<i64> = values
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => *i,
                        _ => unreachable!("an Int column yields integers"),
                    })
                    .collect();
                col.typed::<Int64Type>().write_batch(&v, None, None)?;
            }
            Kind::OptInt => {
                let opts: Vec<Option<i64>> = values
                    .iter()
                    .map(|x| match x {
                        Value::OptInt(o) => *o,
                        _ => unreachable!("an OptInt column yields options"),
                    })
                    .collect();
                let v: Vec<i64> = opts.iter().flatten().copied().collect();
                let def: Vec<i16> = opts.iter().map(|o| o.is_some() as i16).collect();
                col.typed::<Int64Type>().write_batch(&v, Some(&def), None)?;
            }
            Kind::Float => {
                let v: Vec<f64> = values
                    .iter()
                    .map(|x| match x {
                        Value::Float(f) => *f,
                        _ => unreachable!("a Float column yields floats"),
                    })
                    .collect();
                col.typed::<DoubleType>().write_batch(&v, None, None)?;
            }
            Kind::Bool => {
                let v: Vec<bool> = values
                    .iter()
                    .map(|x| match x {
                        Value::Bool(b) => *b,
                        _ => unreachable!("a Bool column yields booleans"),
                    })
                    .collect();
                col.typed::<BoolType>().write_batch(&v, None, None)?;
            }
            Kind::Floats => {
                // A required list: definition level 1 for an element, 0 for
                // an empty list; repetition level 0 starts a row's list.
                let (mut v, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for x in &values {
                    let Value::Floats(xs) = x else {
                        unreachable!("a Floats column yields lists")
                    };
                    if xs.is_empty() {
                        def.push(0);
                        rep.push(0);
                    }
                    for (j, &f) in xs.iter().enumerate() {
                        v.push(f);
                        def.push(1);
                        rep.push((j > 0) as i16);
                    }
                }
                col.typed::<FloatType>()
                    .write_batch(&v, Some(&def), Some(&rep))?;
            }
        }
        col.close()?;
        col_index += 1;
    }
    rg.close()?;
    writer.close()?;
    Ok(())
}
