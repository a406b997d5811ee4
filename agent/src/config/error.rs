//! Config errors: every one names the file, and where it can, the line and the key.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {}", file.display(), io_text(source))]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot list drop-ins: {}", dir.display(), io_text(source))]
    DropInDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, message: String },
    /// Line 0: no line to name (a built-in default).
    #[error("{}: {key}: {message}", place(file, *line))]
    Invalid { file: PathBuf, line: usize, key: String, message: String },
    /// More than one error, in file and line order; the first speaks for all
    /// where one is asked for (status's file, line and key).
    #[error("{}", join_all(first, rest))]
    Several { first: Box<ConfigError>, rest: Vec<ConfigError> },
}

/// An I/O error as an admin reads it: "No such file or directory", without
/// the "(os error 2)" the standard library adds.
pub fn io_text(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => err.to_string(),
    }
}

fn place(file: &std::path::Path, line: usize) -> String {
    match line {
        0 => file.display().to_string(),
        line => format!("{}:{line}", file.display()),
    }
}

fn join_all(first: &ConfigError, rest: &[ConfigError]) -> String {
    std::iter::once(first).chain(rest).map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl ConfigError {
    /// One error for a list of them (none is not an error: `None`).
    pub fn from_all(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        if errors.len() <= 1 {
            return errors.pop();
        }
        let first = errors.remove(0);
        Some(ConfigError::Several { first: Box::new(first), rest: errors })
    }

    /// Each error on its own, owned.
    pub fn into_each(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Several { first, mut rest } => {
                rest.insert(0, *first);
                rest
            }
            other => vec![other],
        }
    }

    /// Each error on its own, for a list an admin reads line by line.
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { first, rest } => std::iter::once(first.as_ref()).chain(rest).collect(),
            other => vec![other],
        }
    }

    pub fn file(&self) -> &std::path::Path {
        match self {
            ConfigError::Several { first, .. } => first.file(),
            ConfigError::Read { file, .. } | ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => {
                file
            }
            ConfigError::DropInDir { dir, .. } => dir,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Several { first, .. } => first.line(),
            _ => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Several { first, .. } => first.key(),
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
