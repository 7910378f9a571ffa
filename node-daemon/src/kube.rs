//! Kube mode: the node's locator comes from its Node (annotation srv6pipes.io/locator, set by
//! the operator or the node's maker), its SIDs are published as the NodeSidTable named after the
//! node, and it programs what the operator publishes in the node's NodeProgramSlices (or, until
//! the operator has written them, in the pre-slice NodeProgram named after the node), reporting
//! the outcome in their status. Field manager `srv6pipes-node`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use srv6::node_api::{NodeProgram, NodeSids};
use srv6::sid::Locator;
use srv6::slices::{complete, merge, slice_index, slice_name};
use srv6pipes_crds::{
    NodeProgram as NodeProgramCr, NodeProgramSlice, NodeProgramSliceSpec, NodeProgramStatus, NodeSidTable, LOCATOR_ANNOTATION, NODE_LABEL,
};
use tracing::{info, warn};

pub const MANAGER: &str = "srv6pipes-node";

pub struct KubePlane {
    client: Client,
    /// The Node's InternalIP addresses (the underlay interface is the one holding them).
    pub internal_ips: Vec<std::net::IpAddr>,
    node: String,
    /// The Node's uid and what the daemon knows of its own objects.
    own: OwnObjects,
    /// When this daemon connected (its start): pods that started before may predate srv6pipes-cni.
    pub started: k8s_openapi::jiff::Timestamp,
    /// --repair-pods: the network whose unwired pods are repaired ([`crate::repair`]).
    pub repair_network: Option<String>,
}

impl KubePlane {
    /// Connects and waits for the node's locator annotation; `expected` (--locator), when given,
    /// must agree with it.
    pub async fn connect(kubeconfig: Option<&std::path::Path>, node: &str, expected: Option<Locator>) -> anyhow::Result<(Self, Locator)> {
        let started = k8s_openapi::jiff::Timestamp::now();
        let client = srv6pipes_crds::client(kubeconfig).await.map_err(anyhow::Error::msg)?;
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let mut logged = false;
        let (uid, internal_ips, locator) = loop {
            let n = nodes.get_opt(node).await.with_context(|| format!("get node {node}"))?;
            if let Some((n, v)) = n.as_ref().and_then(|n| Some((n, n.annotations().get(LOCATOR_ANNOTATION)?))) {
                let l: Locator = v.parse().with_context(|| format!("node {node}: annotation {LOCATOR_ANNOTATION}={v:?}"))?;
                let ips = n.status.iter().flat_map(|s| s.addresses.iter().flatten());
                let ips = ips.filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect();
                break (n.metadata.uid.clone().unwrap_or_default(), ips, l);
            }
            if !logged {
                info!(
                    node,
                    registered = n.is_some(),
                    annotation = LOCATOR_ANNOTATION,
                    "waiting for the node's locator (the operator allocates it)"
                );
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if let Some(e) = expected.filter(|e| *e != locator) {
            bail!("--locator {e} disagrees with node {node}'s annotation {LOCATOR_ANNOTATION}={locator}");
        }
        info!(node, %locator, "locator from the node");
        let plane = KubePlane {
            client,
            internal_ips,
            node: node.into(),
            own: OwnObjects { node: node.into(), node_uid: uid, node_deleted: false, locator, node_listed: false, table_listed: false },
            started,
            repair_network: None,
        };
        Ok((plane, locator))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Server-side applies the node's SID table.
    pub async fn publish(&self, sids: &NodeSids) -> anyhow::Result<()> {
        let api: Api<NodeSidTable> = Api::all(self.client.clone());
        let body = json!({
            "apiVersion": "srv6pipes.io/v1alpha1",
            "kind": "NodeSidTable",
            "metadata": {
                "name": self.node,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.own.node_uid}],
            },
            "spec": sids.to_spec(),
        });
        api.patch(&self.node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .with_context(|| format!("publish NodeSidTable {}", self.node))?;
        info!(node = %self.node, sids = sids.registrations.len(), "published SID table");
        Ok(())
    }

    /// Every change of the node's NodeProgramSlices (listed by [`NODE_LABEL`]), of its
    /// pre-slice NodeProgram, of its SID table and of its Node (each named after the node).
    pub fn updates(&self) -> impl Stream<Item = Update> + Send + 'static {
        let slices: Api<NodeProgramSlice> = Api::all(self.client.clone());
        let by_label = watcher::Config::default().labels(&format!("{NODE_LABEL}={}", self.node));
        let by_name = || watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        let slices = watcher(slices, by_label).default_backoff().filter_map(logged(&self.node, "program slices")).map(Update::Slice);
        let legacy = watcher(Api::<NodeProgramCr>::all(self.client.clone()), by_name());
        let legacy = legacy.default_backoff().filter_map(logged(&self.node, "NodeProgram")).map(Update::Legacy);
        let table = watcher(Api::<NodeSidTable>::all(self.client.clone()), by_name());
        let table = table.default_backoff().filter_map(logged(&self.node, "SID table")).map(Update::Table);
        let node = watcher(Api::<KubeNode>::all(self.client.clone()), by_name());
        let node = node.default_backoff().filter_map(logged(&self.node, "Node")).map(|e| Update::Node(Box::new(e)));
        futures::stream::select_all([slices.boxed(), legacy.boxed(), table.boxed(), node.boxed()])
    }

    /// What an event about the node's own objects asks of the daemon ([`OwnObjects::event`]).
    pub fn own_event(&mut self, u: &Update) -> Own {
        self.own.event(u)
    }

    /// Reports on every slice of `slices` (or on the pre-slice program) whether its generation
    /// is in the datapath; a slice whose status already says so is not written.
    pub async fn report(&self, source: &Source, result: &Result<(), String>) -> anyhow::Result<()> {
        match source {
            Source::Slices(slices) => {
                let api: Api<NodeProgramSlice> = Api::all(self.client.clone());
                for s in slices {
                    let Some(body) = status_patch("NodeProgramSlice", s.metadata.generation, s.status.as_ref(), result) else { continue };
                    api.patch_status(&s.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
                        .await
                        .with_context(|| format!("report NodeProgramSlice {} status", s.name_any()))?;
                }
            }
            Source::Legacy(p) => {
                let Some(body) = status_patch("NodeProgram", p.metadata.generation, p.status.as_ref(), result) else { return Ok(()) };
                let api: Api<NodeProgramCr> = Api::all(self.client.clone());
                api.patch_status(&self.node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .with_context(|| format!("report NodeProgram {} status", self.node))?;
            }
        }
        Ok(())
    }
}

/// Drops (and logs) a watch's errors: the watcher retries with a backoff.
fn logged<T>(node: &str, what: &'static str) -> impl FnMut(Result<T, watcher::Error>) -> futures::future::Ready<Option<T>> {
    let node = node.to_string();
    move |r| futures::future::ready(r.map_err(|e| warn!(node = %node, error = %e, "watching the node's {what} failed; retrying")).ok())
}

/// The status apply that reports `result` for `generation`; None when `status` already says it.
fn status_patch(
    kind: &str,
    generation: Option<i64>,
    status: Option<&NodeProgramStatus>,
    result: &Result<(), String>,
) -> Option<serde_json::Value> {
    let (ok, reason, message) = match result {
        Ok(()) => ("True", "Programmed", format!("generation {} is in the datapath", generation.unwrap_or_default())),
        Err(e) => ("False", "ProgramFailed", e.clone()),
    };
    let unchanged = status.is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == ok && c.message == message)
    });
    if unchanged {
        return None;
    }
    let condition = Condition {
        type_: "Programmed".into(),
        status: ok.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: generation,
    };
    Some(json!({
        "apiVersion": "srv6pipes.io/v1alpha1",
        "kind": kind,
        "status": {"observedGeneration": generation, "conditions": [condition]},
    }))
}

/// A watch event about the node's program.
pub enum Update {
    Slice(watcher::Event<NodeProgramSlice>),
    Legacy(watcher::Event<NodeProgramCr>),
    Table(watcher::Event<NodeSidTable>),
    Node(Box<watcher::Event<KubeNode>>),
}

/// What the daemon knows of its own objects: its Node's uid (the published table is owned by
/// it, and removed with the node; a node deleted and registered again under its name has
/// another one) and whether it was seen deleted (or missing from a list), its locator, whether
/// its Node and its SID table were in their watches' last lists so far.
pub struct OwnObjects {
    node: String,
    node_uid: String,
    node_deleted: bool,
    locator: Locator,
    node_listed: bool,
    table_listed: bool,
}

impl OwnObjects {
    /// What an event about the node's own objects asks of the daemon: its SID table published
    /// again when someone deleted it (not while its Node is deleted) or it is owned by another
    /// Node object (the node was deleted and registered again under its name: the garbage
    /// collector takes what the old one owned), with the new Node's uid; a restart when the
    /// Node names another locator.
    pub fn event(&mut self, u: &Update) -> Own {
        match u {
            Update::Table(e) => self.table_event(e),
            Update::Node(e) => self.node_event(e),
            Update::Slice(_) | Update::Legacy(_) => Own::Nothing,
        }
    }

    fn table_event(&mut self, e: &watcher::Event<NodeSidTable>) -> Own {
        match e {
            // Its Node gone, the table goes with it (the garbage collector): not published again
            // until a Node of that name is back.
            watcher::Event::Delete(_) | watcher::Event::InitDone if self.node_deleted => Own::Nothing,
            watcher::Event::Delete(_) => {
                info!(node = %self.node, "the node's SID table was deleted: publishing it again");
                Own::Republish
            }
            watcher::Event::Init => {
                self.table_listed = false;
                Own::Nothing
            }
            watcher::Event::InitApply(t) | watcher::Event::Apply(t) => {
                self.table_listed |= matches!(e, watcher::Event::InitApply(_));
                if t.owner_references().iter().any(|o| o.kind == "Node" && o.uid == self.node_uid) {
                    return Own::Nothing;
                }
                info!(node = %self.node, uid = %self.node_uid, "the node's SID table is not owned by this Node: publishing it again");
                Own::Republish
            }
            watcher::Event::InitDone if !self.table_listed => Own::Republish,
            watcher::Event::InitDone => Own::Nothing,
        }
    }

    fn node_event(&mut self, e: &watcher::Event<KubeNode>) -> Own {
        let n = match e {
            watcher::Event::Delete(_) => {
                info!(node = %self.node, "the node was deleted");
                self.node_deleted = true;
                return Own::Nothing;
            }
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => n,
            watcher::Event::Init => {
                self.node_listed = false;
                return Own::Nothing;
            }
            // Gone while the watch was away: no Delete event comes for it.
            watcher::Event::InitDone => {
                self.node_deleted |= !self.node_listed;
                return Own::Nothing;
            }
        };
        self.node_listed |= matches!(e, watcher::Event::InitApply(_));
        let back = std::mem::take(&mut self.node_deleted);
        // (One that does not parse is no locator to move to: the next start would refuse it.)
        if let Some(v) = n.annotations().get(LOCATOR_ANNOTATION).filter(|v| v.parse::<Locator>().is_ok_and(|l| l != self.locator)) {
            return Own::LocatorMoved(format!("node {} now has locator {v:?}, this daemon started with {}", self.node, self.locator));
        }
        match n.metadata.uid.as_deref() {
            Some(uid) if uid != self.node_uid || back => {
                info!(node = %self.node, old = %self.node_uid, uid, "the node was registered again: its SID table is published for the new Node");
                self.node_uid = uid.to_string();
                Own::Republish
            }
            _ => Own::Nothing,
        }
    }
}

/// What an event about the node's own objects asks of the daemon ([`OwnObjects::event`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Own {
    Nothing,
    Republish,
    /// Exit, to start again on the new locator.
    LocatorMoved(String),
}

/// What the node is to be programmed from.
pub enum Source {
    /// Every slice of the node's program (slice 0 lists them), by index.
    Slices(Vec<Arc<NodeProgramSlice>>),
    /// The pre-slice program, while the node has no complete set of slices (an upgrade from a
    /// release before slices, until the operator has written them).
    Legacy(Arc<NodeProgramCr>),
}

impl Source {
    /// What identifies this version of the program: the objects' uids and generations.
    pub fn id(&self) -> Vec<(String, i64)> {
        let id = |m: &kube::api::ObjectMeta| (m.uid.clone().unwrap_or_default(), m.generation.unwrap_or_default());
        match self {
            Source::Slices(s) => s.iter().map(|s| id(&s.metadata)).collect(),
            Source::Legacy(p) => vec![id(&p.metadata)],
        }
    }

    /// The program, merged from the slices (each decoded once per generation: `decoded` keeps
    /// them, so that a change to one slice of 50 decodes one).
    pub fn program(&self, decoded: &mut Decoded) -> Result<NodeProgram, String> {
        match self {
            Source::Slices(slices) => {
                let programs: Vec<(u32, Arc<NodeProgram>)> = slices
                    .iter()
                    .map(|s| {
                        let index = slice_index(&s.spec.node, &s.name_any()).unwrap_or_default();
                        decoded.get(s).map(|p| (index, p)).map_err(|e| format!("NodeProgramSlice {}: {e}", s.name_any()))
                    })
                    .collect::<Result<_, _>>()?;
                decoded.0.retain(|name, _| slices.iter().any(|s| s.name_any() == *name));
                Ok(merge(programs.iter().map(|(i, p)| (*i, p.as_ref()))))
            }
            Source::Legacy(p) => NodeProgram::from_spec(&p.spec).map_err(|e| format!("NodeProgram {}: {e}", p.name_any())),
        }
    }
}

/// Decoded slices by name, with the uid and generation they were decoded at.
#[derive(Default)]
pub struct Decoded(BTreeMap<String, ((String, i64), Arc<NodeProgram>)>);

impl Decoded {
    fn get(&mut self, s: &NodeProgramSlice) -> Result<Arc<NodeProgram>, String> {
        let version = (s.metadata.uid.clone().unwrap_or_default(), s.metadata.generation.unwrap_or_default());
        if let Some((v, p)) = self.0.get(&s.name_any()) {
            if *v == version {
                return Ok(p.clone());
            }
        }
        let p = Arc::new(NodeProgram::from_slice_spec(&s.spec)?);
        self.0.insert(s.name_any(), (version, p.clone()));
        Ok(p)
    }
}

/// The daemon's readiness in kube mode: its node's program listed and its current version
/// (`current`, None while the node has none) applied; the error says what is missing.
pub fn readiness(
    synced: bool,
    current: Option<&Vec<(String, i64)>>,
    applied: Option<&Vec<(String, i64)>>,
    failure: Option<&str>,
) -> Result<(), String> {
    if !synced {
        return Err("waiting for the first list of the node's program".into());
    }
    match current {
        None => Ok(()),
        Some(c) if applied == Some(c) => Ok(()),
        Some(_) => Err(match failure {
            Some(f) => format!("the node's current program is not applied: {f}"),
            None => "the node's current program is not applied yet".into(),
        }),
    }
}

/// The node's published program as the watches have brought it.
#[derive(Default)]
pub struct Published {
    slices: Mirror<NodeProgramSlice>,
    legacy: Mirror<NodeProgramCr>,
}

/// One watch's objects (kube-runtime's reflector store: a re-list replaces them once it is
/// done), and whether it has listed once.
struct Mirror<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: reflector::store::Writer<K>,
    store: reflector::Store<K>,
    synced: bool,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Default for Mirror<K> {
    fn default() -> Self {
        let (store, writer) = reflector::store();
        Mirror { writer, store, synced: false }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Mirror<K> {
    fn apply(&mut self, event: watcher::Event<K>) {
        self.synced |= matches!(event, watcher::Event::InitDone);
        self.writer.apply_watcher_event(&event);
    }

    fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store.get(&reflector::ObjectRef::new(name))
    }
}

impl Published {
    pub fn update(&mut self, u: Update) {
        match u {
            Update::Slice(e) => self.slices.apply(e),
            Update::Legacy(e) => self.legacy.apply(e),
            Update::Table(_) | Update::Node(_) => {}
        }
    }

    /// Whether both watches have listed once.
    pub fn synced(&self) -> bool {
        self.slices.synced && self.legacy.synced
    }

    /// What to program now: the complete set of `node`'s slices, else its pre-slice program;
    /// None before both watches have listed, or while the node has neither (nothing changes
    /// then: the datapath keeps what it has).
    pub fn source(&self, node: &str) -> Option<Source> {
        if !self.synced() {
            return None;
        }
        let slices = self.slices.store.state();
        let seen: BTreeMap<u32, &NodeProgramSliceSpec> =
            slices.iter().filter(|s| s.spec.node == node).filter_map(|s| Some((slice_index(node, &s.name_any())?, &s.spec))).collect();
        if let Some(set) = complete(&seen) {
            let slices = set.keys().filter_map(|i| self.slices.get(&slice_name(node, *i))).collect();
            return Some(Source::Slices(slices));
        }
        self.legacy.get(node).map(Source::Legacy)
    }
}

/// The networks pod `namespace/name` asks for in its networks annotation (none without one).
pub async fn pod_networks(client: Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, namespace);
    let pod = pods.get(name).await.with_context(|| format!("get pod {namespace}/{name}"))?;
    networks_of(&pod).map_err(|e| anyhow::anyhow!("pod {namespace}/{name}: {e}"))
}

/// The networks `pod`'s networks annotation asks for (none without one), or why it cannot be
/// read.
pub fn networks_of(pod: &k8s_openapi::api::core::v1::Pod) -> Result<Vec<String>, String> {
    match pod.annotations().get(srv6::node_api::NETWORKS_ANNOTATION) {
        Some(v) => srv6::node_api::networks_in_annotation(v),
        None => Ok(vec![]),
    }
}

/// `NAMESPACE/NAME` of the DaemonSet a daemon runs in (--daemonset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for DaemonSetRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(DaemonSetRef { namespace: ns.into(), name: name.into() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a terminating daemon does with the node, and why.
#[derive(Debug, PartialEq, Eq)]
pub enum Departure {
    /// srv6pipes is being uninstalled: remove it from the node.
    Uninstall(String),
    /// A restart, an upgrade, or no way to tell: leave everything, traffic keeps flowing.
    Stay(String),
}

/// What this daemon saw of its DaemonSet's deletion while it could still read it: a watch from
/// start, so the signal survives `helm uninstall` deleting the daemon's credentials in the same
/// pass (a watch that is open keeps its events).
#[derive(Clone, Default)]
pub struct DeletionSeen {
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl DeletionSeen {
    pub fn get(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set(&self) {
        self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the deletion is (or, within `wait`, becomes) seen.
    pub async fn within(&self, wait: Duration) -> bool {
        let notified = self.notify.notified();
        self.get() || tokio::time::timeout(wait, notified).await.is_ok() || self.get()
    }
}

/// Watches the DaemonSet (list and watch of that one name) for its deletion, in the background.
pub fn watch_deletion(client: Client, ds: &DaemonSetRef) -> DeletionSeen {
    let seen = DeletionSeen::default();
    let api: Api<DaemonSet> = Api::namespaced(client, &ds.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", ds.name));
    let (out, name) = (seen.clone(), ds.to_string());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Delete(_)) => {
                    info!(daemonset = %name, "the DaemonSet was deleted");
                    out.set();
                }
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) if d.metadata.deletion_timestamp.is_some() => {
                    info!(daemonset = %name, "the DaemonSet is being deleted");
                    out.set();
                }
                Ok(_) => {}
                Err(e) => warn!(daemonset = %name, error = %e, "watching the DaemonSet"),
            }
        }
    });
    seen
}

/// Decides from what the API server said about the daemon's DaemonSet and whether its deletion
/// was seen. Gone, being deleted, or seen deleted is an uninstall. A refusal of this daemon's
/// identity (401, 403: an RBAC regression in an upgrade, a token hiccup) is not, nor is any
/// other error: a credentials problem never wipes a node's datapath.
pub fn departure(ds: &DaemonSetRef, got: Result<Option<DaemonSet>, kube::Error>, deletion_seen: bool) -> Departure {
    if deletion_seen {
        return Departure::Uninstall(format!("DaemonSet {ds} was seen deleted"));
    }
    match got {
        Ok(None) => Departure::Uninstall(format!("DaemonSet {ds} is gone")),
        Ok(Some(d)) if d.metadata.deletion_timestamp.is_some() => Departure::Uninstall(format!("DaemonSet {ds} is being deleted")),
        Ok(Some(_)) => Departure::Stay(format!("DaemonSet {ds} remains (a pod restart or an upgrade)")),
        Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Departure::Stay(format!(
            "cannot read DaemonSet {ds} ({} {}) and its deletion was not seen: not wiping the node on a credentials problem",
            s.code, s.message
        )),
        Err(e) => Departure::Stay(format!("cannot tell whether DaemonSet {ds} remains: {e}")),
    }
}

/// Asks the API server about the DaemonSet, for at most 3 s (within the pod's grace period); a
/// refused or failed answer waits up to 2 s more for the watch's word (its event may be on the way).
pub async fn departure_of(client: Client, ds: &DaemonSetRef, seen: &DeletionSeen) -> Departure {
    let api: Api<DaemonSet> = Api::namespaced(client, &ds.namespace);
    let got = match tokio::time::timeout(Duration::from_secs(3), api.get_opt(&ds.name)).await {
        Ok(got) => got,
        Err(_) => {
            return departure(ds, Err(kube::Error::Service("no answer within 3 s".into())), seen.within(Duration::from_secs(2)).await)
        }
    };
    let settled = got.is_ok();
    let deletion_seen = if settled { seen.get() } else { seen.within(Duration::from_secs(2)).await };
    departure(ds, got, deletion_seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ds(deleting: bool) -> DaemonSet {
        let deletion_timestamp = deleting.then(|| Time(k8s_openapi::jiff::Timestamp::now()));
        DaemonSet {
            metadata: ObjectMeta { name: Some("srv6pipes-node".into()), deletion_timestamp, ..Default::default() },
            ..Default::default()
        }
    }

    /// The node's SID table is published again when it is deleted, missing from a list, or
    /// owned by another Node object; a Node registered again under the name gives its uid; a
    /// Node that names another locator asks for a restart.
    #[test]
    fn the_daemon_republishes_its_table_for_the_node_it_has() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let locator: Locator = "fcbb:bb00:1::/48".parse().unwrap();
        let mut own =
            OwnObjects { node: "n1".into(), node_uid: "u1".into(), node_deleted: false, locator, node_listed: false, table_listed: false };
        let table = |owner: &str| -> NodeSidTable {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1", "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": owner}]},
                "spec": {"locator": "fcbb:bb00:1::/48", "sourceAddress": "fcbb:bb00:1::", "decapSid": "fcbb:bb00:1:d6::", "registrations": []},
            }))
            .unwrap()
        };
        let node = |uid: &str, locator: Option<&str>| -> KubeNode {
            let annotations = locator.map(|l| [(LOCATOR_ANNOTATION.to_string(), l.to_string())].into());
            KubeNode {
                metadata: ObjectMeta { name: Some("n1".into()), uid: Some(uid.into()), annotations, ..Default::default() },
                ..Default::default()
            }
        };
        let mut ev = |u: Update| own.event(&u);
        // The first list: the table there, owned by this Node.
        assert_eq!(ev(Update::Table(Init)), Own::Nothing);
        assert_eq!(ev(Update::Table(InitApply(table("u1")))), Own::Nothing);
        assert_eq!(ev(Update::Table(InitDone)), Own::Nothing);
        assert_eq!(ev(Update::Node(Box::new(InitApply(node("u1", Some("fcbb:bb00:1::/48")))))), Own::Nothing);
        // Deleted (kubectl delete), or gone while the watch was away.
        assert_eq!(ev(Update::Table(Delete(table("u1")))), Own::Republish);
        assert_eq!(ev(Update::Table(Init)), Own::Nothing);
        assert_eq!(ev(Update::Table(InitDone)), Own::Republish);
        // The node deleted (its table goes with it, not published again) and registered again:
        // a new uid, no locator until the operator's.
        assert_eq!(ev(Update::Node(Box::new(Delete(node("u1", None))))), Own::Nothing);
        assert_eq!(ev(Update::Table(Delete(table("u1")))), Own::Nothing);
        assert_eq!(ev(Update::Node(Box::new(Apply(node("u2", None))))), Own::Republish);
        // Deleted while its watch was away (a list without it, no Delete event): the same.
        for e in [Init, InitDone] {
            assert_eq!(ev(Update::Node(Box::new(e))), Own::Nothing);
        }
        assert_eq!(ev(Update::Table(Delete(table("u2")))), Own::Nothing, "its Node is gone");
        assert_eq!(ev(Update::Node(Box::new(Apply(node("u2", None))))), Own::Republish, "back");
        assert_eq!(ev(Update::Table(Apply(table("u1")))), Own::Republish, "owned by the old Node");
        assert_eq!(ev(Update::Table(Apply(table("u2")))), Own::Nothing);
        assert_eq!(ev(Update::Node(Box::new(Apply(node("u2", Some("fcbb:bb00:1::/48")))))), Own::Nothing, "the same locator again");
        assert_eq!(ev(Update::Node(Box::new(Apply(node("u2", Some("not a prefix")))))), Own::Nothing, "no locator to move to");
        assert!(
            matches!(ev(Update::Node(Box::new(Apply(node("u2", Some("fcbb:bb00:7::/48")))))), Own::LocatorMoved(m) if m.contains("fcbb:bb00:7::/48"))
        );
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("refused", "Refused").with_code(code).boxed())
    }

    #[test]
    fn only_a_deleted_daemonset_uninstalls_never_a_refused_identity() {
        let r: DaemonSetRef = "kube-system/srv6pipes-node".parse().unwrap();
        let uninstall = |d: Departure| matches!(d, Departure::Uninstall(_));
        assert!(uninstall(departure(&r, Ok(None), false)), "gone");
        assert!(uninstall(departure(&r, Ok(Some(ds(true))), false)), "being deleted");
        assert_eq!(
            departure(&r, Ok(Some(ds(false))), false),
            Departure::Stay("DaemonSet kube-system/srv6pipes-node remains (a pod restart or an upgrade)".into())
        );
        // A refused identity (an RBAC regression, a token hiccup) is no uninstall...
        assert!(!uninstall(departure(&r, Err(api_error(401)), false)), "401");
        assert!(!uninstall(departure(&r, Err(api_error(403)), false)), "403");
        // ... unless the watch saw the DaemonSet deleted (helm uninstall removes the credentials
        // in the same pass).
        assert!(uninstall(departure(&r, Err(api_error(403)), true)), "403 after the deletion was seen");
        assert!(uninstall(departure(&r, Err(api_error(401)), true)));
        assert!(!uninstall(departure(&r, Err(api_error(500)), false)), "an API server error is not an uninstall");
        assert!(!uninstall(departure(&r, Err(api_error(429)), false)));
    }

    #[tokio::test]
    async fn a_deletion_seen_wakes_the_wait() {
        let seen = DeletionSeen::default();
        assert!(!seen.within(Duration::from_millis(20)).await);
        let later = seen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.set();
        });
        assert!(seen.within(Duration::from_secs(5)).await);
        assert!(seen.get());
    }

    #[test]
    fn daemonset_ref_is_namespace_slash_name() {
        assert_eq!("ns/x".parse::<DaemonSetRef>().unwrap(), DaemonSetRef { namespace: "ns".into(), name: "x".into() });
        for bad in ["x", "/x", "ns/", "a/b/c", ""] {
            assert!(bad.parse::<DaemonSetRef>().is_err(), "{bad}");
        }
    }

    fn slice(name: &str, generation: i64, spec: srv6pipes_crds::NodeProgramSliceSpec) -> NodeProgramSlice {
        let mut s = NodeProgramSlice::new(name, spec);
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.generation = Some(generation);
        s
    }

    fn legacy(tables: serde_json::Value) -> NodeProgramCr {
        let mut p = NodeProgramCr::new("n1", srv6pipes_crds::NodeProgramSpec { tables, peers: vec![] });
        p.metadata.uid = Some("uid-legacy".into());
        p
    }

    fn listed(p: &Published) -> Option<Vec<String>> {
        match p.source("n1")? {
            Source::Slices(s) => Some(s.iter().map(|s| s.name_any()).collect()),
            Source::Legacy(_) => Some(vec!["legacy".into()]),
        }
    }

    /// An upgrade: the node keeps its pre-slice program until every slice slice 0 lists is
    /// there; then the slices alone; a re-list replaces what was seen.
    #[test]
    fn the_pre_slice_program_holds_until_the_slices_are_complete() {
        use srv6::compiler::NodeTables;
        let program = |chains: usize| {
            let mut tables = NodeTables::default();
            for i in 0..chains {
                tables.decaps.push(
                    serde_json::from_value(json!({"sid": "fcbb:bb00:1:d6::", "behavior": "End.DT46", "chain": format!("d/c{i:03}")}))
                        .unwrap(),
                );
            }
            NodeProgram { tables, peers: vec![] }
        };
        let specs = srv6::slices::split_specs("n1", &program(300), &Default::default());
        assert_eq!(specs.len(), 2);
        let mut p = Published::default();
        p.update(Update::Legacy(watcher::Event::Init));
        p.update(Update::Legacy(watcher::Event::InitApply(legacy(json!({"headends": [], "proxies": [], "decaps": []})))));
        p.update(Update::Legacy(watcher::Event::InitDone));
        assert_eq!(listed(&p), None, "the slices are not listed yet");
        p.update(Update::Slice(watcher::Event::Init));
        p.update(Update::Slice(watcher::Event::InitDone));
        assert_eq!(listed(&p).unwrap(), ["legacy"]);
        // Slice 0 lists slice 1, not there yet; another node's slice is not ours.
        p.update(Update::Slice(watcher::Event::Apply(slice("n1.0", 1, specs["n1.0"].clone()))));
        let mut other = specs["n1.1"].clone();
        other.node = "n1.1".into();
        p.update(Update::Slice(watcher::Event::Apply(slice("n1.1.0", 1, other))));
        assert_eq!(listed(&p).unwrap(), ["legacy"]);
        p.update(Update::Slice(watcher::Event::Apply(slice("n1.1", 1, specs["n1.1"].clone()))));
        assert_eq!(listed(&p).unwrap(), ["n1.0", "n1.1"]);
        let Some(source) = p.source("n1") else { unreachable!() };
        let mut decoded = Decoded::default();
        assert_eq!(source.program(&mut decoded).unwrap().tables.decaps.len(), 300, "both slices merged");
        assert_eq!(source.id(), [("uid-n1.0".to_string(), 1), ("uid-n1.1".to_string(), 1)]);
        // A new generation of slice 1 is decoded again; slice 0, unchanged, is not.
        let first = decoded.0["n1.0"].1.clone();
        let fewer = srv6::slices::split_specs("n1", &program(250), &Default::default());
        p.update(Update::Slice(watcher::Event::Apply(slice("n1.1", 2, fewer["n1.1"].clone()))));
        let Some(newer) = p.source("n1") else { unreachable!() };
        assert_eq!(newer.program(&mut decoded).unwrap().tables.decaps.len(), 250);
        assert!(Arc::ptr_eq(&first, &decoded.0["n1.0"].1));
        p.update(Update::Slice(watcher::Event::Apply(slice("n1.1", 1, specs["n1.1"].clone()))));
        // A re-list without slice 1 (deleted meanwhile, while slice 0 still lists it): the node
        // waits (legacy is still there, so it is what it would program).
        p.update(Update::Slice(watcher::Event::Init));
        p.update(Update::Slice(watcher::Event::InitApply(slice("n1.0", 1, specs["n1.0"].clone()))));
        assert_eq!(listed(&p).unwrap(), ["n1.0", "n1.1"], "what was seen holds until the re-list is done");
        p.update(Update::Slice(watcher::Event::InitDone));
        assert_eq!(listed(&p).unwrap(), ["legacy"]);
        p.update(Update::Legacy(watcher::Event::Delete(legacy(json!({})))));
        assert_eq!(listed(&p), None, "neither: the datapath keeps what it has");
    }

    #[test]
    fn ready_once_the_current_program_is_applied() {
        let v1 = vec![("uid".to_string(), 1)];
        let v2 = vec![("uid".to_string(), 2)];
        assert!(readiness(false, None, None, None).unwrap_err().contains("first list"));
        assert_eq!(readiness(true, None, None, None), Ok(()), "a node without a program has nothing to apply");
        assert_eq!(readiness(true, Some(&v1), Some(&v1), None), Ok(()));
        assert_eq!(readiness(true, Some(&v2), Some(&v1), None), Err("the node's current program is not applied yet".into()));
        let failed = readiness(true, Some(&v2), Some(&v1), Some("2 slices: route to fc00::1: no uplink")).unwrap_err();
        assert!(failed.ends_with("2 slices: route to fc00::1: no uplink"), "{failed}");
    }
}
