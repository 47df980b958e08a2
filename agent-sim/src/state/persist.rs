//! `--data-dir`: the state that must survive a restart (CA key and roots, intentions,
//! services, ACL tokens and policies), written before a write is acknowledged.
//!
//! Every acknowledged write replaces `state.json` atomically: the new state goes to a
//! temporary file, which is fsynced, renamed over the old one, and the directory fsynced. A
//! crash at any point leaves either the previous or the new state, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use consul_connect_types::api::{
    AclPolicy, AclToken, CaConfiguration, CaRoot, Intention, PreparedQuery, ServiceRegistration,
};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[error("data dir {path}: {what}: {source}")]
pub struct PersistError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// The I/O or format error.
    pub source: io::Error,
}

/// Everything persisted, as one document.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// The store index, so indexes keep increasing across restarts.
    pub index: u64,
    /// The cluster ID (the trust domain follows from it).
    pub cluster_id: String,
    /// The CA.
    pub ca: CaSnapshot,
    /// Registered services.
    pub services: Vec<ServiceSnapshot>,
    /// Intentions.
    pub intentions: Vec<Intention>,
    /// Config entries (1.9+ profiles); the intentions above are derived from them.
    #[serde(default)]
    pub config_entries: Vec<consul_connect_types::api::ConfigEntry>,
    /// ACL state.
    pub acl: AclSnapshot,
    /// Prepared queries.
    #[serde(default)]
    pub queries: Vec<PreparedQuery>,
}

/// The CA's persisted state. Holds the CA private key: the file is created owner-only.
#[derive(Serialize, Deserialize)]
pub struct CaSnapshot {
    /// The active provider's key, PEM.
    pub private_key_pem: String,
    /// All roots as listed.
    pub roots: Vec<CaRoot>,
    /// The configuration as stored.
    pub config: CaConfiguration,
    /// When inactive roots were rotated out, by root ID.
    #[serde(default, with = "rotated_out")]
    pub rotated_out_at: std::collections::BTreeMap<String, time::OffsetDateTime>,
}

/// RFC 3339 times in a map.
mod rotated_out {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<&String, String> = map
            .iter()
            .map(|(k, v)| (k, v.format(&Rfc3339).unwrap_or_default()))
            .collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, OffsetDateTime>, D::Error> {
        let text = BTreeMap::<String, String>::deserialize(d)?;
        text.into_iter()
            .map(|(k, v)| {
                OffsetDateTime::parse(&v, &Rfc3339)
                    .map(|t| (k, t))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// A registered service.
#[derive(Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// The registration with defaults filled in.
    pub registration: ServiceRegistration,
    /// Index of creation.
    pub create_index: u64,
    /// Index of last change.
    pub modify_index: u64,
    /// Its TTL checks' last states (absent in files written before they were kept).
    #[serde(default)]
    pub checks: Vec<CheckSnapshot>,
}

/// A TTL check's last state. As Consul's agent does with its persisted check state, a restart
/// restores it if its TTL had not run out, and then gives the check a whole TTL again.
#[derive(Serialize, Deserialize)]
pub struct CheckSnapshot {
    /// Check ID.
    pub id: String,
    /// Status as last set (`passing`, `warning`, `critical`).
    pub status: String,
    /// Output as last set.
    pub output: String,
    /// When the TTL runs out unless updated.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
}

/// ACL tokens (with secrets) and policies.
#[derive(Serialize, Deserialize)]
pub struct AclSnapshot {
    /// Policies.
    pub policies: Vec<AclPolicy>,
    /// Tokens.
    pub tokens: Vec<AclToken>,
    /// Index of the bootstrap, once done.
    pub bootstrap_index: Option<u64>,
}

/// A data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    dir: PathBuf,
}

impl DataDir {
    /// Opens (creating it if needed) `dir`, returning the saved snapshot if there is one.
    pub fn open(dir: &Path) -> Result<(DataDir, Option<Snapshot>), PersistError> {
        let err = |what, source| PersistError {
            path: dir.to_owned(),
            what,
            source,
        };
        fs::create_dir_all(dir).map_err(|e| err("create", e))?;
        let data = DataDir {
            dir: dir.to_owned(),
        };
        let path = data.dir.join(STATE_FILE);
        let snapshot = match fs::read(&path) {
            Ok(bytes) => {
                let snapshot: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|e| PersistError {
                        path: path.clone(),
                        what: "parse",
                        source: io::Error::new(io::ErrorKind::InvalidData, e),
                    })?;
                if snapshot.version != FORMAT_VERSION {
                    return Err(PersistError {
                        path,
                        what: "read",
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unsupported format version {}", snapshot.version),
                        ),
                    });
                }
                Some(snapshot)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err("read", e)),
        };
        Ok((data, snapshot))
    }

    /// Replaces the saved state with `snapshot`, durably.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), PersistError> {
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let err = |path: &Path, what, source| PersistError {
            path: path.to_owned(),
            what,
            source,
        };
        let bytes = serde_json::to_vec(snapshot).map_err(|e| {
            err(
                &tmp,
                "encode",
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        // A temp file left by a crash (or planted: a symlink, a 0644 file) is never reused:
        // it is removed, and the new one created exclusively, owner-only. A symlink planted
        // between the two makes the exclusive create fail rather than be followed.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&tmp, "remove stale", e)),
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| err(&tmp, "create", e))?;
        file.write_all(&bytes).map_err(|e| err(&tmp, "write", e))?;
        file.sync_all().map_err(|e| err(&tmp, "fsync", e))?;
        let target = self.dir.join(STATE_FILE);
        fs::rename(&tmp, &target).map_err(|e| err(&target, "rename", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.dir, "fsync", e))?;
        Ok(())
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn snapshot(dir: &Path) -> Snapshot {
        // The smallest real snapshot: a fresh store's.
        let settings = crate::state::StoreSettings {
            datacenter: "dc1".into(),
            node_name: "node1".into(),
            node_id: "00000000-0000-0000-0000-000000000002".into(),
            node_address: "127.0.0.1".into(),
            ca: Default::default(),
            acl: Default::default(),
            version: Default::default(),
        };
        let clock = std::sync::Arc::new(crate::clock::SystemClock::new());
        crate::state::Store::open(settings, clock, Some(dir)).expect("store");
        let bytes = fs::read(dir.join(STATE_FILE)).expect("saved");
        serde_json::from_slice(&bytes).expect("parse")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_stale_world_readable_temp_file_does_not_leak_the_state() {
        let dir = std::env::temp_dir().join(format!("agent-sim-persist-{}", uuid::Uuid::new_v4()));
        let snap = snapshot(&dir);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, b"stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        DataDir { dir: dir.clone() }.save(&snap).unwrap();
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("agent-sim-persist-{}", uuid::Uuid::new_v4()));
        let snap = snapshot(&dir);
        let victim = dir.join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!("{STATE_FILE}.tmp"))).unwrap();
        DataDir { dir: dir.clone() }.save(&snap).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(!fs::symlink_metadata(dir.join(STATE_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
