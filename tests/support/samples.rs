//! The responses a real Consul 1.4.5 agent gave, as captured with `curl -i`.
#![allow(dead_code)]

use std::path::PathBuf;

/// One captured response.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Status code.
    pub status: u16,
    /// Headers as (name, value), names as captured.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Sample {
    /// The folder holding the captures.
    pub fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/consul-1.4.5")
    }

    /// Loads `tests/data/consul-1.4.5/<name>`.
    pub fn load(name: &str) -> Sample {
        let path = Self::dir().join(name);
        let raw =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Sample {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
