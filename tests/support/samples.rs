//! The responses real Consul 1.4.5 and 1.10.9 agents gave, as captured with `curl -i`.
//!
//! The 1.10.9 captures start with the request, each line prefixed `> `; the 1.4.5 ones hold the
//! response only, and their requests are those of the same-named 1.10.9 captures.
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
    /// The request line's method and target (`GET`, `/v1/connect/ca/roots?pem=true`), where the
    /// capture holds it.
    pub request: Option<(String, String)>,
    /// The request's headers as (name, value), where the capture holds them.
    pub request_headers: Vec<(String, String)>,
    /// The request's body (empty when none was sent).
    pub request_body: String,
}

/// The folder of the 1.10.9 captures.
pub fn dir_1_10_9() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/consul-1.10.9")
}

impl Sample {
    /// The folder holding the captures.
    pub fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/consul-1.4.5")
    }

    /// Loads `tests/data/consul-1.4.5/<name>`.
    pub fn load(name: &str) -> Sample {
        Self::load_path(&Self::dir().join(name))
    }

    /// Loads a capture of either set by path.
    pub fn load_path(path: &std::path::Path) -> Sample {
        let name = path.display();
        let raw =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let raw = raw.replace("\r\n", "\n");
        let mut request = None;
        let mut request_headers = Vec::new();
        let mut body_lines: Vec<&str> = Vec::new();
        let mut in_body = false;
        let mut response = raw.as_str();
        while let Some((line, rest)) = response.split_once('\n') {
            let Some(line) = line.strip_prefix('>') else {
                break;
            };
            let line = line.strip_prefix(' ').unwrap_or(line);
            if request.is_none() {
                let mut words = line.split_whitespace();
                if let (Some(method), Some(target)) = (words.next(), words.next()) {
                    request = Some((method.to_owned(), target.to_owned()));
                }
            } else if in_body {
                body_lines.push(line);
            } else if line.is_empty() {
                in_body = true;
            } else if let Some((k, v)) = line.split_once(": ") {
                request_headers.push((k.to_owned(), v.to_owned()));
            }
            response = rest;
        }
        let request_body = body_lines.join("\n");
        let (head, body) = response.split_once("\n\n").unwrap_or((response, ""));
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
            request,
            request_headers,
            request_body,
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
