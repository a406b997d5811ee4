//! Config errors: every one names the file, and where it can, the line and the key.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot list drop-ins: {source}", dir.display())]
    DropInDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, message: String },
    #[error("{}:{line}: {key}: {message}", file.display())]
    Invalid { file: PathBuf, line: usize, key: String, message: String },
}

impl ConfigError {
    pub fn file(&self) -> &std::path::Path {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => {
                file
            }
            ConfigError::DropInDir { dir, .. } => dir,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl ConfigError {
    /// `key` is wrong where `origin` set it.
    pub fn at(origin: &crate::config::source::Origin, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: origin.file.to_path_buf(),
            line: origin.line,
            key: key.to_string(),
            message: message.into(),
        }
    }
}
