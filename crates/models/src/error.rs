//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in cram's library code.
///
/// Each variant carries enough context (a file, a field, a tensor name) for a
/// one-line message that tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CramError {
    /// A file or folder that should exist does not.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read or parsed.
    #[error("{path}: {msg}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A configuration value is missing or invalid.
    #[error("{source_name}: field `{field}`: {msg}")]
    BadConfig {
        /// Where the configuration came from (a file name or "GGUF metadata").
        source_name: String,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A weight tensor is missing or has the wrong shape.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    BadTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The model's architecture is not one cram implements.
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The file that names the architecture.
        path: PathBuf,
        /// The architecture it names.
        arch: String,
        /// The architectures cram supports.
        supported: String,
    },
    /// Invalid user input (an empty text, a text longer than the context, ...).
    #[error("{0}")]
    Input(String),
    /// A model could not be resolved or fetched.
    #[error("{0}")]
    Model(String),
    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// An error from the tokenizer library.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// An I/O error with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl CramError {
    /// An I/O error on `path`; a missing file becomes [`CramError::NotFound`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            CramError::NotFound { path }
        } else {
            CramError::Io { path, source }
        }
    }

    /// A malformed or unreadable file.
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        CramError::BadFile {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// A missing or invalid configuration field.
    pub fn bad_config(
        source_name: impl std::fmt::Display,
        field: impl std::fmt::Display,
        msg: impl std::fmt::Display,
    ) -> Self {
        CramError::BadConfig {
            source_name: source_name.to_string(),
            field: field.to_string(),
            msg: msg.to_string(),
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, CramError>;
