//! The operator's mirrors: one watch per kind into a store that the compiler and both
//! controllers read, each object slimmed to what the operator reads; which changes bump the
//! world version (what the compiler reads: [`relevant`]) and which go to a controller as its
//! trigger ([`Forward`], for chains [`chain_trigger`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use srv6::slices;
use srv6pipes_crds::{NodeProgram, NodeProgramSlice, NodeSidTable, ServiceChain};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::FINALIZER;
use crate::world;

/// Mirrors one kind into its store, each object slimmed to what the operator reads (`slim`),
/// and bumps the world version when something the compiler reads changed (`relevant` renders
/// that part of an object). With `forward`, applied objects also go to a controller as its
/// trigger ([`Forward`]; the controller reads the same store, no second watch and copy).
pub async fn mirror<K, W>(
    api: Api<K>,
    mut writer: W,
    slim: fn(&mut K),
    relevant: fn(&K) -> String,
    world: Arc<watch::Sender<u64>>,
    forward: Option<Forward<K>>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    W: Mirror<K>,
{
    let mut seen = Seen::default();
    let mut listing = Listing::default();
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e.modify(slim),
            Err(e) => {
                warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                continue;
            }
        };
        listing.note(&event);
        let forced = writer.apply_watcher_event(&event);
        let changed = seen.changed(&event, relevant);
        if forced || changed && !matches!(event, watcher::Event::InitApply(_)) {
            world.send_modify(|v| *v += 1);
        }
        if let Some(f) = forward.as_ref().filter(|f| f.passes(&event)) {
            if let watcher::Event::Apply(k) | watcher::Event::InitApply(k) = event {
                let _ = f.tx.unbounded_send(Ok(k));
            }
        }
    }
}

/// A (re)list in progress: when it started and how many objects it brought so far. Logged at
/// both ends, so that a relist (the watch's resource version gone, a long disconnection), which
/// holds a second copy of the kind until it is done and sends every object to the controller
/// again, shows in the log beside what it cost.
#[derive(Default)]
struct Listing(Option<(std::time::Instant, usize)>);

impl Listing {
    fn note<K: Resource<DynamicType = ()>>(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => {
                info!(kind = %K::kind(&()), "listing");
                self.0 = Some((std::time::Instant::now(), 0));
            }
            watcher::Event::InitApply(_) => {
                if let Some((_, n)) = self.0.as_mut() {
                    *n += 1;
                }
            }
            watcher::Event::InitDone => {
                if let Some((started, n)) = self.0.take() {
                    info!(kind = %K::kind(&()), objects = n, seconds = started.elapsed().as_secs_f64(), "listed");
                }
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
        }
    }
}

/// Which applied objects a mirror sends its controller: all of them (a Node's reconcile is a
/// look at its locator), or with `only_changed` those whose rendering by its function changed
/// since the controller last saw the object, and every object of a relist. For chains that
/// rendering is what the chain's reconcile acts on ([`chain_trigger`]): the chain's own status
/// write coming back is not reconciled again (each chain was reconciled three times, on its
/// creation, on its finalizer's write and on its status's; a planner's round sends the chains
/// whose status a plan changes on its own).
pub struct Forward<K> {
    pub tx: futures::channel::mpsc::UnboundedSender<Result<K, watcher::Error>>,
    pub only_changed: Option<OnlyChanged<K>>,
}

/// What a controller has seen of its objects, and the function whose rendering of an object
/// tells a change the controller acts on.
pub type OnlyChanged<K> = (Triggers, fn(&K) -> String);

/// What a controller has seen of each object ([`Forward`]). A reconcile that writes its own
/// object records what it wrote, so that the write coming back is not sent to it again.
pub type Triggers = Arc<Mutex<Seen>>;

impl<K: Resource> Forward<K> {
    /// Whether the object of `event` goes to the controller.
    pub(crate) fn passes(&self, event: &watcher::Event<K>) -> bool {
        let Some((seen, trigger)) = &self.only_changed else {
            return matches!(event, watcher::Event::Apply(_) | watcher::Event::InitApply(_));
        };
        let mut seen = seen.lock().expect("triggers");
        match event {
            watcher::Event::Apply(k) => seen.note(k, *trigger),
            // A relist may follow missed events: every object goes again.
            watcher::Event::InitApply(k) => {
                seen.note(k, *trigger);
                true
            }
            watcher::Event::Delete(k) => {
                seen.forget(k);
                false
            }
            watcher::Event::Init | watcher::Event::InitDone => false,
        }
    }
}

/// What a chain's reconcile acts on: which chain (its uid), its spec (generation), whether it
/// has the finalizer and whether it is being deleted. Of its status, only whether it says a
/// node failed to program it (`ProgramFailed`): such a status, once it comes back, is looked at
/// once more. It was computed from failures that may have cleared while it was being written,
/// after the planner's round that saw them clear compared the chain's status as it was before
/// that write; without this second look such a chain kept `ProgramFailed` until its next
/// change. Statuses that do not name a failure come back without a reconcile.
pub fn chain_trigger(c: &ServiceChain) -> String {
    let finalizer = c.finalizers().iter().any(|f| f == FINALIZER);
    let failed = world::ready_condition(c.status.as_ref()).is_some_and(|r| r.reason == "ProgramFailed");
    format!("{:?}{:?}{finalizer}{}{failed}", c.metadata.uid, c.metadata.generation, c.metadata.deletion_timestamp.is_some())
}

/// Where a mirror keeps what its watch brings: a reflector store, for Pods what the compiler
/// reads of them ([`crate::pods`]), for slices the store and its index by node
/// ([`crate::slice_index`]).
pub trait Mirror<K> {
    /// Applies `event`; whether it calls for a new plan whatever `relevant` renders (a slice
    /// deleted by someone else, to be written again).
    fn apply_watcher_event(&mut self, event: &watcher::Event<K>) -> bool;
}

impl<K: kube::runtime::reflector::Lookup<DynamicType = ()> + Clone + 'static> Mirror<K> for reflector::store::Writer<K> {
    fn apply_watcher_event(&mut self, event: &watcher::Event<K>) -> bool {
        reflector::store::Writer::apply_watcher_event(self, event);
        false
    }
}

impl Mirror<Pod> for crate::pods::PodsWriter {
    fn apply_watcher_event(&mut self, event: &watcher::Event<Pod>) -> bool {
        crate::pods::PodsWriter::apply_watcher_event(self, event);
        false
    }
}

impl Mirror<NodeProgramSlice> for crate::slice_index::SlicesWriter {
    fn apply_watcher_event(&mut self, event: &watcher::Event<NodeProgramSlice>) -> bool {
        crate::slice_index::SlicesWriter::apply_watcher_event(self, event)
    }
}

/// What was last seen of each object of a kind, by `namespace/name`: a fingerprint of what a
/// function renders of it (for the world: what the compiler reads), None for an object it
/// leaves out (a chain being deleted, a slice that reports nothing the compiler reads), whose
/// arrival or removal then changes nothing.
#[derive(Default)]
pub struct Seen(HashMap<String, Option<u64>>);

fn seen_key<K: Resource>(k: &K) -> String {
    format!("{}/{}", k.namespace().unwrap_or_default(), k.name_any())
}

impl Seen {
    /// Whether `event` changes what the compiler reads.
    pub(crate) fn changed<K: Resource>(&mut self, event: &watcher::Event<K>, relevant: fn(&K) -> String) -> bool {
        match event {
            watcher::Event::Apply(k) | watcher::Event::InitApply(k) => self.note(k, relevant),
            watcher::Event::Delete(k) => self.forget(k),
            watcher::Event::Init => false,
            watcher::Event::InitDone => true,
        }
    }

    /// Records `k` as `render` renders it; whether that changed.
    pub fn note<K: Resource>(&mut self, k: &K, render: fn(&K) -> String) -> bool {
        let what = render(k);
        let mut h = DefaultHasher::new();
        what.hash(&mut h);
        let f = (!what.is_empty()).then(|| h.finish());
        self.0.insert(seen_key(k), f).flatten() != f
    }

    /// Forgets `k`; whether it had been seen (and not left out).
    fn forget<K: Resource>(&mut self, k: &K) -> bool {
        self.0.remove(&seen_key(k)).is_some_and(|f| f.is_some())
    }
}

/// What the compiler reads of each kind; nothing (empty) for an object it leaves out.
pub mod relevant {
    use super::*;

    /// A chain being deleted is left out of the compilation: once its deletion has started, its
    /// finalizer's removal (and the chain's) changes nothing the compiler reads.
    pub fn chain(c: &ServiceChain) -> String {
        if c.metadata.deletion_timestamp.is_some() {
            return String::new();
        }
        format!("{:?}{:?}", c.metadata.uid, c.metadata.generation)
    }
    pub fn pod(p: &Pod) -> String {
        format!("{:?}", world::pod_info(p))
    }
    pub fn node(n: &Node) -> String {
        format!("{:?}{:?}{:?}", world::node_locator(n), n.spec.as_ref().map(|s| &s.pod_cidrs), world::node_underlay(n))
    }
    pub fn table(t: &NodeSidTable) -> String {
        format!("{:?}", t.spec)
    }
    /// A daemon's failure; and of a node's slice 0, its first report (the pre-slice program
    /// can go then). Nothing else: the operator writing a slice, or a daemon reporting success
    /// on it, is not a change to compile again for (it was one per change of a chain).
    pub fn slice(s: &NodeProgramSlice) -> String {
        let failure = world::slice_failure(s);
        if slices::slice_index(&s.spec.node, &s.name_any()) == Some(0) {
            let reported = s.status.as_ref().is_some_and(|st| st.observed_generation.is_some());
            return format!("{failure:?}{:?}{reported}", s.metadata.uid);
        }
        failure.map(|f| format!("{f:?}")).unwrap_or_default()
    }
    pub fn program(p: &NodeProgram) -> String {
        format!("{:?}", p.metadata.uid)
    }
}
