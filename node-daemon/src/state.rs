//! What the daemon keeps in its state directory: SID allocations (so SIDs never change under
//! running traffic, across restarts) and the last programming it applied.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use srv6::node_api::{Attachment, NodeProgram};
use srv6::sid::Sid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub attachment: Attachment,
    pub sid: Sid,
    pub funct: u16,
    /// Node-side ifindex End.AD delivers into.
    pub ifindex: u32,
    /// Node-side ifindex the VNF returns traffic on (the End.AD cache key): `ifindex` unless
    /// the attachment is a pair.
    pub return_ifindex: u32,
}

impl Registration {
    pub fn return_host_ifname(&self) -> &str {
        self.attachment.out.as_ref().map_or(&self.attachment.host_ifname, |o| &o.host_ifname)
    }
}

/// A headend policy: one per chain, replicas per hop, inner family (the SRH's next header) and
/// whether it drops (failurePolicy Closed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub chain: String,
    /// "" for a headend rule's policy; "End.AS <sid>" for a static proxy's return.
    #[serde(default)]
    pub role: String,
    pub replicas: Vec<Vec<Sid>>,
    pub inner: u8,
    pub drop: bool,
    /// H.Insert (End.AM chains) instead of H.Encaps.
    #[serde(default)]
    pub insert: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub registrations: Vec<Registration>,
    pub program: Option<NodeProgram>,
    /// Policy ids stay with their policy across programs and restarts (counters are per id).
    #[serde(default)]
    pub policies: Vec<(PolicyKey, u32)>,
    /// SRv6 pipes: each stream SID's listener port in its proxy's netns (stable while the SID
    /// is in use: the proxy keeps its listener, connections are never cut by a renumbering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_ports: Vec<(Sid, u16)>,
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create state dir {}", dir.display()))?;
        Ok(Self { path: dir.join("node-state.json") })
    }

    pub fn load(&self) -> anyhow::Result<Persisted> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parse {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    /// Forgets everything (uninstall); the directory itself belongs to whoever made it.
    pub fn remove(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", self.path.display())),
            _ => Ok(()),
        }
    }

    /// Write-then-rename, so a crash never leaves a torn file.
    pub fn save(&self, p: &Persisted) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(p)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("rename to {}", self.path.display()))
    }
}
