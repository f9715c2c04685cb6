//! The one error locator of both files: a byte span of the TOML text becomes file, line,
//! column and dotted field (`cluster.replication`, `nodes[2].portal`, `receive.trust`).
//!
//! These files are edited by hand, and a message without a line number sends the reader
//! hunting; every error of either parser (and of `dqe milter`'s file) carries a [`Location`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where in a file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field at fault, dotted, e.g. `nodes[1].portal`.
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: field `{}`",
            self.path.display(),
            self.line,
            self.column,
            self.field
        )
    }
}

/// The field reported for a syntax error outside every table and key.
pub const TOP_LEVEL: &str = "(top level)";

/// The text of one TOML file and where it came from: the maker of [`Location`]s.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The file (only used in messages).
    pub path: &'a Path,
    /// Its text.
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// `text`, read from `path`.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text }
    }

    /// The location of the value at `span`, which is the value of `field`.
    pub fn at(&self, span: Range<usize>, field: &str) -> Location {
        self.locate(span.start, field.to_string())
    }

    /// The 1-based line of `span`'s start.
    pub fn line_of(&self, span: Range<usize>) -> usize {
        self.locate(span.start, String::new()).line
    }

    /// Locate a toml/serde error and return it with serde's message. toml does not expose
    /// the key path of an error, so the field is the table in force at the error and the key
    /// on its line, or the field a `missing field`/`unknown field` message names.
    pub fn syntax(&self, e: &toml::de::Error) -> (Location, String) {
        let start = e.span().map(|s| s.start).unwrap_or(0);
        let mut field = field_at(self.text, start);
        if let Some(named) = quoted_after(e.message(), "missing field")
            .or_else(|| quoted_after(e.message(), "unknown field"))
        {
            field = join_field(&field, &named);
        }
        (self.locate(start, field), e.message().trim().to_string())
    }

    fn locate(&self, offset: usize, field: String) -> Location {
        let text = self.text;
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = text[line_start..offset].chars().count() + 1;
        Location {
            path: self.path.to_path_buf(),
            line,
            column,
            field,
        }
    }
}

/// The dotted field path at byte `offset`: the table header in force there (with the index of
/// an array-of-tables entry) and the key on that line, if any.
fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let mut table = String::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for l in text[..line_start].lines().chain(std::iter::once(line)) {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let idx = match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => {
                    *c += 1;
                    *c - 1
                }
                None => {
                    counts.push((name.clone(), 1));
                    0
                }
            };
            table = format!("{name}[{idx}]");
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(k) => join_field(&table, &k),
        None if table.is_empty() => TOP_LEVEL.to_string(),
        None => table,
    }
}

fn join_field(table: &str, key: &str) -> String {
    if table.is_empty() || table == TOP_LEVEL {
        key.to_string()
    } else if table.ends_with(&format!(".{key}")) || table == key {
        table.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The text between backquotes after `marker` in a serde message (`missing field `portal``).
fn quoted_after(message: &str, marker: &str) -> Option<String> {
    let rest = &message[message.find(marker)? + marker.len()..];
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(rest[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_names_line_column_and_dotted_field() {
        let text = "a = 1\n[t]\nk = 2\n[[arr]]\nx = 1\n[[arr]]\nx = 2\n";
        let src = Source::new(Path::new("f.toml"), text);
        let at = text.rfind("2\n").unwrap();
        let loc = src.at(at..at + 1, "arr[1].x");
        assert_eq!((loc.line, loc.column), (7, 5));
        assert_eq!(loc.to_string(), "f.toml:7:5: field `arr[1].x`");
        assert_eq!(field_at(text, at), "arr[1].x");
        assert_eq!(field_at(text, text.find("k =").unwrap()), "t.k");
        assert_eq!(field_at("", 0), TOP_LEVEL);
    }

    #[test]
    fn a_serde_error_is_located_at_its_table_and_key() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            t: Inner,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            k: u8,
        }
        let text = "[t]\nk = 1\nj = 2\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        let (loc, msg) = Source::new(Path::new("f.toml"), text).syntax(&e);
        assert_eq!((loc.line, loc.field.as_str()), (3, "t.j"), "{msg}");
        let text = "[t]\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        let (loc, _) = Source::new(Path::new("f.toml"), text).syntax(&e);
        assert_eq!(loc.field, "t.k");
    }
}
