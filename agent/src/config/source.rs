//! Where each config value came from, so a merged value still names its file and line.
//!
//! Values are read as [`Sourced<T>`]: toml hands us the byte span, and the file
//! being parsed is held in a thread-local for the length of one `parse_file`
//! call, which turns the span into a line. Parsing is synchronous and
//! single-threaded, so the thread-local never leaks between files.

use serde::{Deserialize, Deserializer};
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
}

impl Origin {
    pub fn new(file: &Path, line: usize) -> Self {
        Self { file: Arc::from(file), line }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// One file's text, indexed by line start.
pub struct LineIndex {
    file: Arc<Path>,
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        Self { file: Arc::from(file), line_starts }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(exact) => exact + 1,
            Err(next) => next,
        }
    }

    pub fn origin_of(&self, offset: usize) -> Origin {
        Origin { file: self.file.clone(), line: self.line_of(offset) }
    }
}

thread_local! {
    static PARSING: RefCell<Option<Arc<LineIndex>>> = const { RefCell::new(None) };
}

/// Runs `parse` with `index` as the file being read.
pub fn with_file<R>(index: Arc<LineIndex>, parse: impl FnOnce() -> R) -> R {
    PARSING.with(|slot| *slot.borrow_mut() = Some(index));
    let result = parse();
    PARSING.with(|slot| *slot.borrow_mut() = None);
    result
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sourced<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<T>::deserialize(deserializer)?;
        let start = spanned.span().start;
        let origin = PARSING.with(|slot| {
            slot.borrow()
                .as_ref()
                .map(|index| index.origin_of(start))
                .unwrap_or_else(|| Origin::new(Path::new("<memory>"), 0))
        });
        Ok(Sourced { value: spanned.into_inner(), origin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines() {
        let index = LineIndex::new(Path::new("c.toml"), "a = 1\nb = 2\n\nc = 3");
        assert_eq!(index.line_of(0), 1);
        assert_eq!(index.line_of(4), 1);
        assert_eq!(index.line_of(6), 2);
        assert_eq!(index.line_of(12), 3);
        assert_eq!(index.line_of(13), 4);
    }
}
