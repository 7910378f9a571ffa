//! What the daemon keeps in its state directory: SID allocations (so SIDs never change under
//! running traffic, across restarts) and the last programming it applied.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use srv6::node_api::{Attachment, AttachmentKey, NodeProgram};
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
    /// Kept in its own file (`Store::save_program`).
    #[serde(skip_serializing, default)]
    pub program: Option<NodeProgram>,
    /// Policy ids stay with their policy across programs and restarts (counters are per id).
    #[serde(default)]
    pub policies: Vec<(PolicyKey, u32)>,
    /// SRv6 pipes: each stream SID's listener port in its proxy's netns (stable while the SID
    /// is in use: the proxy keeps its listener, connections are never cut by a renumbering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_ports: Vec<(Sid, u16)>,
    /// Proxy FUNCTs released, oldest first: each cools down before another pod gets it
    /// ([`Persisted::cooling`]), across restarts too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Released>,
}

/// A proxy FUNCT released, and when: milliseconds since the Unix epoch (the wall clock, so that
/// a restart knows how long ago; a clock set back only makes the FUNCT cool down longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub funct: u16,
    pub at_ms: u64,
}

impl Released {
    pub fn now(funct: u16) -> Self {
        Released { funct, at_ms: unix_ms() }
    }
}

/// The wall clock, in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Persisted {
    /// Notes a FUNCT's release (the newest: last).
    pub fn release(&mut self, r: Released) {
        self.released.retain(|x| x.funct != r.funct);
        self.released.push(r);
    }

    /// The FUNCTs released less than `delay` before `now_ms`, oldest first; the others are
    /// forgotten.
    pub fn cooling(&mut self, now_ms: u64, delay: std::time::Duration) -> Vec<u16> {
        let delay = delay.as_millis() as u64;
        self.released.retain(|r| now_ms.saturating_sub(r.at_ms) < delay);
        self.released.iter().map(|r| r.funct).collect()
    }
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

/// One registration change, appended to the journal (a CNI ADD or DEL then costs one appended
/// line, not a rewrite of the state file, whose policy ids grow with the chains).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Registered(Box<Registration>),
    /// Written by releases before [`Change::Released`]; still read.
    Unregistered(AttachmentKey),
    /// The attachment's registration went, and its FUNCT cools down.
    Released {
        key: AttachmentKey,
        released: Released,
    },
}

impl Change {
    /// Replays the change on `p`; a change already in `p` (the journal of a crash between a
    /// save and the journal's removal) changes nothing.
    fn apply(self, p: &mut Persisted) {
        match self {
            Change::Registered(r) => {
                p.registrations.retain(|x| x.attachment.key() != r.attachment.key());
                p.registrations.push(*r);
            }
            Change::Unregistered(k) => p.registrations.retain(|x| x.attachment.key() != k),
            Change::Released { key, released } => {
                p.registrations.retain(|x| x.attachment.key() != key);
                p.release(released);
            }
        }
    }
}

/// The journal is folded into the state file once it is this long.
const JOURNAL_LIMIT: u64 = 1 << 20;

/// The state directory: `node-state.json` (registrations, policy ids, stream ports, released
/// FUNCTs: written
/// whole when a program is applied, at start, and when the journal is folded in),
/// `node-state.journal` (registration changes since, one JSON line each) and
/// `node-program.json` (the last program, which grows with the chains: written only when a
/// program is applied).
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    journal: PathBuf,
    program: PathBuf,
    journal_limit: u64,
}

impl Store {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create state dir {}", dir.display()))?;
        Ok(Self {
            path: dir.join("node-state.json"),
            journal: dir.join("node-state.journal"),
            program: dir.join("node-program.json"),
            journal_limit: JOURNAL_LIMIT,
        })
    }

    /// Whether a state file is there (a node that has run srv6pipes since its last uninstall).
    pub fn exists(&self) -> bool {
        self.path.exists()
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
        // The program's own file; before it existed, a key of the state file.
        let mut program = match std::fs::read(&self.program) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parse {}", self.program.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => v.get_mut("program").map(Value::take).unwrap_or(Value::Null),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.program.display())),
        };
        let program = match program.take() {
            Value::Null => None,
            p => serde_json::from_value(p).map_err(|e| skipped.push(format!("the last program: {e}"))).ok(),
        };
        let mut state = Persisted {
            registrations: entries(&mut v, "registrations", &mut skipped),
            program,
            policies: entries(&mut v, "policies", &mut skipped),
            stream_ports: entries(&mut v, "stream_ports", &mut skipped),
            released: entries(&mut v, "released", &mut skipped),
        };
        self.replay(&mut state, &mut skipped)?;
        Ok((state, skipped))
    }

    /// The journal's changes, in order, on `state`; a line that cannot be read (the torn last
    /// line of a crash while appending) is skipped and described.
    fn replay(&self, state: &mut Persisted, skipped: &mut Vec<String>) -> anyhow::Result<()> {
        let f = match std::fs::File::open(&self.journal) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.journal.display())),
        };
        for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
            let line = line.with_context(|| format!("read {}", self.journal.display()))?;
            match serde_json::from_slice::<Change>(&line) {
                Ok(c) => c.apply(state),
                Err(e) => skipped.push(format!("journal line {}: {e}", i + 1)),
            }
        }
        Ok(())
    }

    /// Forgets everything (uninstall); the directory itself belongs to whoever made it.
    pub fn remove(&self) -> anyhow::Result<()> {
        for path in [&self.path, &self.journal, &self.program] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("remove {}", path.display())),
                _ => {}
            }
        }
        Ok(())
    }

    /// The registrations, policy ids and stream ports (not the program), whole; the journal,
    /// folded in, goes.
    pub fn save(&self, p: &Persisted) -> anyhow::Result<()> {
        write_file(&self.path, &serde_json::to_vec_pretty(p)?)?;
        match std::fs::remove_file(&self.journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", self.journal.display())),
            _ => Ok(()),
        }
    }

    /// A registration change, appended to the journal and synced; `state` is the state with the
    /// change, saved whole instead once the journal is long. A failed append is cut off again,
    /// so the next one starts on a line of its own.
    pub fn record(&self, change: &Change, state: &Persisted) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .with_context(|| format!("open {}", self.journal.display()))?;
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
            let _ = f.set_len(before);
            return Err(e).with_context(|| format!("append to {}", self.journal.display()));
        }
        if before + line.len() as u64 > self.journal_limit {
            self.save(state)?;
        }
        Ok(())
    }

    /// The last program applied.
    pub fn save_program(&self, p: &NodeProgram) -> anyhow::Result<()> {
        write_file(&self.program, &serde_json::to_vec(p)?)
    }
}

/// Write-then-rename, so a crash never leaves a torn file.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(n: u8) -> Value {
        serde_json::json!({
            "attachment": {"container_id": format!("c{n}"), "ifname": "net1", "netns": "/run/netns/x", "host_ifname": format!("sp{n}"),
                           "pod_namespace": "default", "pod_name": format!("vnf{n}"), "vnf_mac": "02:00:00:00:00:01", "host_mac": "02:00:00:00:00:02"},
            "sid": format!("fcbb:bb00:1:e00{n}::"), "funct": 0xe000 + n as u16, "ifindex": 10 + n as u32, "return_ifindex": 10 + n as u32,
        })
    }

    fn registration(n: u8) -> Registration {
        serde_json::from_value(good(n)).unwrap()
    }

    fn registered(n: u8) -> Change {
        Change::Registered(Box::new(registration(n)))
    }

    fn temp_store(what: &str) -> (PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("srv6pipes-state-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir).unwrap();
        (dir, store)
    }

    /// Registration changes go to the journal; what loads is the state file with the journal
    /// replayed; a save folds the journal in; a torn line is skipped; a journal replayed on a
    /// state file that already has it changes nothing; a long journal is folded in by itself.
    #[test]
    fn registration_changes_are_journaled_and_replayed_in_order() {
        let (dir, mut store) = temp_store("journal");
        let key = |n: u8| registration(n).attachment.key();
        let mut state = Persisted {
            policies: vec![(
                serde_json::from_value(serde_json::json!({"chain": "default/c", "replicas": [], "inner": 41, "drop": false})).unwrap(),
                7,
            )],
            ..Default::default()
        };
        store.save(&state).unwrap();
        let state_file = std::fs::read(dir.join("node-state.json")).unwrap();
        let mut changes = Vec::new();
        for c in [registered(1), registered(2), Change::Unregistered(key(1)), registered(3)] {
            c.clone().apply(&mut state);
            store.record(&c, &state).unwrap();
            changes.push(c);
        }
        assert_eq!(
            std::fs::read(dir.join("node-state.json")).unwrap(),
            state_file,
            "a registration change does not rewrite the state file"
        );
        let (loaded, skipped) = store.load().unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(loaded.registrations, [registration(2), registration(3)]);
        assert_eq!(loaded.policies, state.policies);

        // A crash while appending: the torn line is skipped and said, the rest loads.
        let journal = dir.join("node-state.journal");
        let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(br#"{"registered":{"attachment":{"contai"#).unwrap();
        let (loaded, skipped) = store.load().unwrap();
        assert_eq!(loaded.registrations, [registration(2), registration(3)]);
        assert!(skipped.len() == 1 && skipped[0].starts_with("journal line 5"), "{skipped:?}");

        // A save folds the journal in; a journal left by a crash before its removal replays
        // onto that state to the same registrations.
        let kept = std::fs::read(&journal).unwrap();
        store.save(&state).unwrap();
        assert!(!journal.exists());
        assert_eq!(store.load().unwrap().0.registrations, state.registrations);
        std::fs::write(&journal, &kept).unwrap();
        assert_eq!(store.load().unwrap().0.registrations, state.registrations, "replayed twice, the same");

        // Past its limit the journal is folded in by the change that crosses it.
        store.save(&state).unwrap();
        store.journal_limit = 1000;
        let mut folded = false;
        for round in 0..10 {
            let c = if round % 2 == 0 { Change::Unregistered(key(3)) } else { registered(3) };
            c.clone().apply(&mut state);
            store.record(&c, &state).unwrap();
            folded |= !journal.exists();
            assert_eq!(store.load().unwrap().0.registrations, state.registrations, "round {round}");
        }
        assert!(folded, "a long journal is folded into the state file");
        store.remove().unwrap();
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "uninstall leaves no journal");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A DEL's journal line takes the registration away and records its FUNCT's release with
    /// the time, which the state file keeps when the journal is folded in: a restarted daemon
    /// still lets it cool down, for what is left of the delay, oldest first.
    #[test]
    fn released_functs_cool_down_across_restarts() {
        let (dir, store) = temp_store("released");
        let delay = std::time::Duration::from_secs(60);
        let mut state = Persisted::default();
        store.save(&state).unwrap();
        let t = 1_800_000_000_000;
        let release = |n: u8, at_ms: u64| Change::Released {
            key: registration(n).attachment.key(),
            released: Released { funct: 0xe000 + n as u16, at_ms },
        };
        for c in [registered(1), registered(2), registered(3), release(2, t), release(1, t + 5_000)] {
            c.clone().apply(&mut state);
            store.record(&c, &state).unwrap();
        }
        let (mut loaded, skipped) = store.load().unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(loaded.registrations, [registration(3)]);
        assert_eq!(loaded.cooling(t + 10_000, delay), [0xe002, 0xe001], "oldest first");
        store.save(&loaded).unwrap();
        assert!(std::fs::read_to_string(dir.join("node-state.json")).unwrap().contains("\"released\""));
        let mut folded = store.load().unwrap().0;
        assert_eq!(folded.cooling(t + 60_000, delay), [0xe001], "e002 has cooled down, e001 not yet");
        assert_eq!(folded.released.len(), 1, "a FUNCT that has cooled down is forgotten");
        assert_eq!(folded.cooling(t - 1_000, delay), [0xe001], "a clock set back: still cooling");
        folded.release(Released { funct: 0xe003, at_ms: t + 61_000 });
        folded.release(Released { funct: 0xe001, at_ms: t + 62_000 });
        assert_eq!(folded.cooling(t + 62_000, delay), [0xe003, 0xe001], "released again: the newest");
        // An older daemon's journal line still takes a registration away.
        let mut old: Persisted = serde_json::from_value(serde_json::json!({"registrations": [good(1)]})).unwrap();
        serde_json::from_value::<Change>(serde_json::json!({"unregistered": {"container_id": "c1", "ifname": "net1"}}))
            .unwrap()
            .apply(&mut old);
        assert!(old.registrations.is_empty() && old.released.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_entry_is_skipped_and_reported_the_rest_loads() {
        let (dir, store) = temp_store("bad");
        assert!(store.load().unwrap().0.registrations.is_empty(), "no file: empty state");
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
        // The program lives in its own file, which a registration's save leaves alone; a state
        // file from before it still brings its program.
        let program: NodeProgram = serde_json::from_value(serde_json::json!({
            "tables": {"headends": [], "proxies": [], "decaps": []}, "peers": [],
        }))
        .unwrap();
        let legacy = serde_json::json!({"registrations": [good(1)], "program": program});
        std::fs::write(dir.join("node-state.json"), legacy.to_string()).unwrap();
        assert_eq!(store.load().unwrap().0.program.as_ref(), Some(&program), "the program of an older state file");
        store.save(&state).unwrap();
        assert!(!std::fs::read_to_string(dir.join("node-state.json")).unwrap().contains("tables"), "no program in the state file");
        store.save_program(&program).unwrap();
        assert_eq!(store.load().unwrap().0.program, Some(program));
        store.remove().unwrap();
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "uninstall leaves no state file");
        std::fs::write(dir.join("node-state.json"), "{torn").unwrap();
        assert!(store.load().is_err(), "a file that is not JSON at all is an error");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
