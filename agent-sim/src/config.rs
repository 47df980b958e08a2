//! agent-sim's `--config-file`, in either of Consul's config formats: HCL for a name ending in
//! `.hcl`, JSON otherwise. Both read as one JSON value, which the binary takes its settings
//! from.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("agent-sim-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("acl.hcl");
//! std::fs::write(&path, "acl { enabled = true\n tokens { master = \"root\" } }\n")?;
//! let config = agent_sim::config::read_file(&path)?;
//! assert_eq!(config["acl"]["tokens"]["master"], "root");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

/// Why a config file could not be used. `Display` names the file, and for syntax errors says
/// where, as Consul's `Error parsing <file>: At <line>:<column>: …` does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("Error parsing {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        source: serde_json::Error,
    },
    /// The file is not valid HCL.
    #[error("Error parsing {}: At {line}:{column}: {message}", path.display())]
    Hcl {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, in hcl's words.
        message: String,
    },
}

/// Reads the config file at `path`: HCL when its name ends in `.hcl`, JSON otherwise.
pub fn read_file(path: &Path) -> Result<serde_json::Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if path.extension().is_some_and(|e| e == "hcl") {
        crate::hcl::hcl_to_json(&text).map_err(|e| ConfigError::Hcl {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })
    } else {
        serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })
    }
}
