//! What the daemon keeps in its state directory: SID allocations (so SIDs never change under
//! running traffic, across restarts) and the last programming it applied.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

/// The readable entries of the list `key`; the others are described in `skipped`.
fn entries<T: DeserializeOwned>(v: &mut Value, key: &str, skipped: &mut Vec<String>) -> Vec<T> {
    let Some(list) = v.get_mut(key).map(Value::take) else { return Vec::new() };
    let Value::Array(list) = list else {
        skipped.push(format!("{key}: not a list"));
        return Vec::new();
    };
    list.into_iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let shown: String = e.to_string().chars().take(200).collect();
            serde_json::from_value(e).map_err(|err| skipped.push(format!("{key}[{i}] {shown}: {err}"))).ok()
        })
        .collect()
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create state dir {}", dir.display()))?;
        Ok(Self { path: dir.join("node-state.json") })
    }

    /// The persisted state, entry by entry: an entry that cannot be read (a registration, a
    /// policy id, a stream port, the last program) is skipped and described in the second
    /// value, so one bad entry never keeps the daemon from starting. Only a file that is not
    /// JSON at all is an error (it is written whole, through a rename).
    pub fn load(&self) -> anyhow::Result<(Persisted, Vec<String>)> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Persisted::default(), Vec::new())),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.path.display())),
        };
        let mut v: Value = serde_json::from_slice(&bytes).with_context(|| format!("parse {}", self.path.display()))?;
        let mut skipped = Vec::new();
        let program = match v.get_mut("program").map(Value::take) {
            None | Some(Value::Null) => None,
            Some(p) => serde_json::from_value(p).map_err(|e| skipped.push(format!("the last program: {e}"))).ok(),
        };
        let state = Persisted {
            registrations: entries(&mut v, "registrations", &mut skipped),
            program,
            policies: entries(&mut v, "policies", &mut skipped),
            stream_ports: entries(&mut v, "stream_ports", &mut skipped),
        };
        Ok((state, skipped))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_entry_is_skipped_and_reported_the_rest_loads() {
        let dir = std::env::temp_dir().join(format!("srv6pipes-state-{}", std::process::id()));
        let store = Store::new(&dir).unwrap();
        assert!(store.load().unwrap().0.registrations.is_empty(), "no file: empty state");
        let good = |n: u8| {
            serde_json::json!({
                "attachment": {"container_id": format!("c{n}"), "ifname": "net1", "netns": "/run/netns/x", "host_ifname": format!("sp{n}"),
                               "pod_namespace": "default", "pod_name": format!("vnf{n}"), "vnf_mac": "02:00:00:00:00:01", "host_mac": "02:00:00:00:00:02"},
                "sid": format!("fcbb:bb00:1:e00{n}::"), "funct": 0xe000 + n as u16, "ifindex": 10 + n as u32, "return_ifindex": 10 + n as u32,
            })
        };
        // Whatever the daemon writes loads back as it was.
        let mut state: Persisted = serde_json::from_value(serde_json::json!({"registrations": [good(1)]})).unwrap();
        state.stream_ports = vec![(Sid("fcbb:bb00:1:e009::".parse().unwrap()), 40000)];
        store.save(&state).unwrap();
        let (loaded, skipped) = store.load().unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!((loaded.registrations, loaded.stream_ports), (state.registrations.clone(), state.stream_ports.clone()));

        let mut bad = good(2);
        bad["sid"] = "not-a-sid".into();
        let file = serde_json::json!({
            "registrations": [good(1), bad, good(3)],
            "program": {"tables": 7},
            "policies": "oops",
            "stream_ports": [["fcbb:bb00:1:e009::", 40000], ["x", 1]],
        });
        std::fs::write(dir.join("node-state.json"), file.to_string()).unwrap();
        let (loaded, skipped) = store.load().unwrap();
        let sids: Vec<String> = loaded.registrations.iter().map(|r| r.sid.to_string()).collect();
        assert_eq!(sids, ["fcbb:bb00:1:e001::", "fcbb:bb00:1:e003::"]);
        assert!(loaded.program.is_none() && loaded.policies.is_empty());
        assert_eq!(loaded.stream_ports.len(), 1);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[1].starts_with("registrations[1]") && skipped[1].contains("vnf2"), "names the entry: {skipped:?}");
        std::fs::write(dir.join("node-state.json"), "{torn").unwrap();
        assert!(store.load().is_err(), "a file that is not JSON at all is an error");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
