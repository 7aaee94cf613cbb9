//! The texts of `cram compress --input FILE`: one text file, JSONL with a
//! text field, or CSV with a text column, read by the one reader of
//! [`crate::datasets`] (so a file is read, and checked, the same way for
//! `compress` and for a sweep).

use std::path::Path;

use crate::datasets::{load_texts, TextSource};
use crate::error::Result;

/// The source `path` names: a `.jsonl` file (field `field` of each line), a
/// `.csv` file (column `field`), or any other file as one text.
pub fn source_of(path: &Path, field: &str) -> TextSource {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" => TextSource::Jsonl {
            path: path.to_path_buf(),
            field: field.to_string(),
        },
        "csv" => TextSource::Csv {
            path: path.to_path_buf(),
            column: field.to_string(),
        },
        _ => TextSource::TextFile {
            path: path.to_path_buf(),
        },
    }
}

/// Reads the texts of `path` (see [`source_of`]), in order.
///
/// # Errors
/// Those of [`load_texts`]: the file and line of a malformed record, a
/// missing field or column, an empty text or no texts at all.
pub fn read_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    Ok(load_texts(&source_of(path, field))?
        .into_iter()
        .map(|s| s.text)
        .collect())
}
