//! Text sources: one text file, JSONL with a text field, or CSV with a text
//! column.

use std::path::Path;

use crate::error::{CramError, Result};

/// Reads texts from `path`: a `.jsonl` file (field `field` of each line), a
/// `.csv` file (column `field`), or any other file as one text.
pub fn read_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let texts = match ext.as_str() {
        "jsonl" => read_jsonl(path, field)?,
        "csv" => read_csv(path, field)?,
        _ => vec![std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?],
    };
    if texts.is_empty() {
        return Err(CramError::bad_file(path, "no texts found"));
    }
    Ok(texts)
}

fn read_jsonl(path: &Path, field: &str) -> Result<Vec<String>> {
    let data = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| CramError::bad_file(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        let text = v.get(field).and_then(|t| t.as_str()).ok_or_else(|| {
            CramError::bad_file(path, format!("line {}: no string field `{field}`", i + 1))
        })?;
        out.push(text.to_string());
    }
    Ok(out)
}

fn read_csv(path: &Path, field: &str) -> Result<Vec<String>> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| CramError::bad_file(path, e))?;
    let headers = rdr
        .headers()
        .map_err(|e| CramError::bad_file(path, e))?
        .clone();
    let col = headers.iter().position(|h| h == field).ok_or_else(|| {
        CramError::bad_file(
            path,
            format!(
                "no column `{field}` (columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| CramError::bad_file(path, format!("row {}: {e}", i + 2)))?;
        out.push(rec.get(col).unwrap_or("").to_string());
    }
    Ok(out)
}
