//! Errors and warnings of the config loader. Both carry the file, the 1-based line and column
//! in the *original* file (comments included) and the key path (`Nodes[1].NodeID`).

use std::fmt;
use std::path::PathBuf;

/// Why a config file could not be loaded. Always the operator's fault (class: config).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or an `Include`d file) could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not (comment-tolerant) JSON.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value is present but wrong (type, range, unknown enum value, failed validation).
    #[error("{}:{line}:{column}: {path}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }

    /// `(line, column)`, 1-based, when the error points into the file.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, column, .. } | ConfigError::Invalid { line, column, .. } => {
                Some((*line, *column))
            }
        }
    }

    /// The key path (`Nodes[0].CertConfig.CertMode`), when the error is about a value.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Something in the file that is accepted but probably not what the operator meant
/// (unknown key, duplicate key, unknown log level, …). Never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Key path of the offending key, e.g. `Nodes[0].TCPFastOpen`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.path,
            self.message
        )
    }
}
