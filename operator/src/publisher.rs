//! Per-node publishing: one writer task per node server-side applies that node's
//! NodeProgramSlices (its program split into bounded objects, `srv6::slices`), so one node whose
//! write is rejected, denied, too large or hangs never delays another's.
//!
//! A publication hands every node its newest set of slices (a newer set replaces one not yet
//! written: a writer always writes the latest) and waits at most [`WAIT`] for the writes it
//! started. A writer writes only the slices whose spec differs from what the API server holds:
//! new slices first (the daemon ignores them until slice 0 lists them), then those that gain
//! chains (a chain that moves between slices is briefly in both, never in neither; the daemon
//! takes it from one), then the others; then it deletes the node's slices that are no longer
//! wanted, then its pre-slice NodeProgram once the daemon has reported on its slices. A failed write is retried
//! by its writer with a backoff of up to [`MAX_BACKOFF`] while the set stays the same; the
//! failure is kept per node (chains that use the node show `ProgramFailed` naming it), logged,
//! and recorded as an Event on the Node. When a node starts or stops failing, the world version
//! is bumped so that every chain's status is computed again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde::Serialize;
use srv6::node_api::{NodeProgram as Program, Peer};
use srv6::slices::{self, Renderer, Shape};
use srv6pipes_crds::{NodeProgram, NodeProgramSlice, NodeProgramSliceSpec, NODE_LABEL};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::controller::MANAGER;
use crate::events::Recorder;
use crate::lease::Fence;
use crate::slice_index::SliceIndex;
use crate::slim;

/// How long a publication waits for its writes before the chains' statuses are written from
/// what is known (a write still running goes on in its writer).
pub const WAIT: Duration = Duration::from_secs(3);
/// One write's deadline.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a failed write back off from 1 s up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Attempts of one conditional write that meets conflicts.
const ATTEMPTS: u32 = 5;
/// Slice writes in flight at once, over all nodes: a thousand nodes' first programs written at
/// once kept the API server from answering the Lease renewal, and the operator stepped down.
/// A write holds its permit while its spec is rendered and written (one slice's attempts: a
/// request without an answer ends them after [`WRITE_TIMEOUT`]), so a hanging node delays the
/// others by about that, and only while it holds one of these; and no more than this many
/// rendered specs are in memory at once (rendered before waiting, a thousand nodes' first
/// slices, each with 999 peers, were most of the operator's cold-start peak).
pub const WRITES_IN_FLIGHT: usize = 16;
/// No srv6pipes object is written above this size (etcd refuses requests over 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

/// A node's slices as the operator wants them, by object name.
pub type Slices = BTreeMap<String, Arc<Slice>>;

/// One slice as the operator wants it: its shape (which chains it holds), and its spec's
/// digest, which is what writes and comparisons look at (computed once per shape built, not
/// per publication). The spec itself is rendered from the node's program when written.
#[derive(Debug)]
pub struct Slice {
    pub shape: Arc<Shape>,
    pub digest: String,
}

impl Slice {
    pub fn new(shape: Arc<Shape>, renderer: &Renderer) -> Self {
        Slice { digest: slim::spec_digest(&renderer.spec(&shape)), shape }
    }
}

impl PartialEq for Slice {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

/// What a node's slices are rendered from: its program and every node's peers.
pub type Source = (Arc<Program>, Arc<Vec<Peer>>);

/// A want's [`Source`], held weakly: the plan it is part of (the plan cache's) keeps it alive,
/// and a newer plan replaces that one without waiting for the writes queued behind a backlog.
/// A write whose source went waits for the newer plan's want, which the planner hands every
/// node after each plan; it does not keep an older plan's tables alive beside the newer one.
pub struct Held {
    program: Weak<Program>,
    peers: Weak<Vec<Peer>>,
    /// The writer found them gone and waits for newer ones.
    missed: bool,
}

impl Held {
    pub fn new(program: &Arc<Program>, peers: &Arc<Vec<Peer>>) -> Mutex<Held> {
        Mutex::new(Held { program: Arc::downgrade(program), peers: Arc::downgrade(peers), missed: false })
    }
}

/// What a node's writer is asked to do.
pub struct Want {
    /// The node's program and every node's peers, which the slices' specs are rendered from.
    pub source: Mutex<Held>,
    pub slices: Arc<Slices>,
    /// The node's slices as this operator's mirror knows them (their resourceVersions make the
    /// writes conditional: a stale leader's write fails instead of landing).
    pub known: BTreeMap<String, Arc<NodeProgramSlice>>,
    /// Delete the node's pre-slice NodeProgram (its daemon has reported on its slices).
    pub legacy: bool,
    pub owner: OwnerReference,
}

impl Want {
    /// The want's source, if its plan is still there; else noted as missed.
    fn source(&self) -> Option<Source> {
        let mut held = self.source.lock().expect("source");
        let source = held.program.upgrade().zip(held.peers.upgrade());
        held.missed = source.is_none();
        source
    }
}

/// Why a node's slices were not all written.
enum Unwritten {
    /// A write failed (named in the message).
    Failed(String),
    /// The plan they were rendered from went before they were written (see [`Held`]).
    Gone,
}

impl From<String> for Unwritten {
    fn from(e: String) -> Self {
        Unwritten::Failed(e)
    }
}

struct Sent {
    seq: u64,
    want: Want,
}

/// A writer's answer to the publication of sequence number `seq`: `None` when written.
type Done = (u64, Option<String>);

/// What a publication waits on: per node, its sequence number and its writer's answers.
pub type Waits = Vec<(u64, watch::Receiver<Done>)>;

struct Writer {
    want: watch::Sender<Option<Arc<Sent>>>,
    done: watch::Receiver<Done>,
}

/// State the writers share with the publisher.
struct Shared {
    client: Client,
    fence: Fence,
    recorder: Recorder,
    world: Arc<watch::Sender<u64>>,
    /// The slices' index, with this operator's last successful write of each.
    index: SliceIndex,
    /// Nodes whose latest slices could not be written, with why.
    failures: Mutex<BTreeMap<String, String>>,
    /// How many times `failures` changed (counted under its lock).
    failure_changes: AtomicU64,
    /// [`WRITES_IN_FLIGHT`] permits.
    in_flight: tokio::sync::Semaphore,
}

pub struct Publisher {
    shared: Arc<Shared>,
    writers: Mutex<HashMap<String, Writer>>,
    seq: AtomicU64,
}

impl Publisher {
    pub fn new(client: Client, recorder: Recorder, world: Arc<watch::Sender<u64>>, fence: Fence, index: SliceIndex) -> Self {
        let shared = Shared {
            client,
            fence,
            recorder,
            world,
            index,
            failures: Default::default(),
            failure_changes: AtomicU64::new(0),
            in_flight: tokio::sync::Semaphore::new(WRITES_IN_FLIGHT),
        };
        Publisher { shared: Arc::new(shared), writers: Default::default(), seq: AtomicU64::new(0) }
    }

    /// This operator's last successful write of slice `name`, unless the slice was deleted
    /// since.
    pub fn written(&self, name: &str) -> Option<Arc<NodeProgramSlice>> {
        self.shared.index.written(name)
    }

    /// Whether a slice of `node` holds chain `key` (`namespace/name`) as far as this operator
    /// knows: the mirror's copy, or its own write the mirror has not seen yet.
    pub fn holds(&self, store: &Store<NodeProgramSlice>, node: &str, key: &str) -> bool {
        self.shared
            .index
            .of(store, node)
            .any(|(name, m)| self.shared.known(&name, Some(&m)).is_some_and(|s| slim::chains_of(&s).contains(key)))
    }

    /// The slices `node`'s writer was last asked to write, and whether they are written.
    pub fn wanted(&self, node: &str) -> Option<(Arc<Slices>, bool)> {
        let writers = self.writers.lock().expect("writers");
        let writer = writers.get(node)?;
        let sent = writer.want.borrow().clone()?;
        let done = writer.done.borrow();
        Some((sent.want.slices.clone(), done.0 >= sent.seq && done.1.is_none()))
    }

    /// Nodes whose program could not be written, with why.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.shared.failures.lock().expect("failures").clone()
    }

    /// How many times the failures changed so far: two equal failure sets read apart may have
    /// changed and changed back in between (a node failing for a moment), and a chain status
    /// written meanwhile may name that failure.
    pub fn failure_changes(&self) -> u64 {
        self.shared.failure_changes.load(Ordering::Acquire)
    }

    /// Hands `want` to `node`'s writer (unless it is already writing those slices) and returns
    /// what to wait on.
    pub fn send(&self, node: &str, want: Want) -> (u64, watch::Receiver<Done>) {
        let mut writers = self.writers.lock().expect("writers");
        let writer = writers.entry(node.to_string()).or_insert_with(|| self.spawn(node));
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // The same slices still being written, or failed and waiting for their retry, are not
        // sent again; once written, they are (someone else changed an object since).
        let settled_ok = {
            let done = writer.done.borrow();
            move |s: &Sent| done.0 >= s.seq && done.1.is_none()
        };
        let mut sent = seq;
        writer.want.send_if_modified(|current| match current {
            // (A slice gone from the mirror meanwhile, deleted by someone else, makes it a new
            // want: the one being written may have found that slice still there.)
            Some(s)
                if s.want.slices == want.slices
                    && s.want.legacy == want.legacy
                    && s.want.known.keys().eq(want.known.keys())
                    && !settled_ok(s) =>
            {
                // The same slices, still to be written: from now on rendered from the newer
                // plan's program (the same content). A writer that found its source gone
                // is woken; one still writing or waiting out a retry's backoff is not.
                let mut held = s.want.source.lock().expect("source");
                let missed = held.missed;
                *held = want.source.into_inner().expect("source");
                sent = s.seq;
                missed
            }
            _ => {
                *current = Some(Arc::new(Sent { seq, want }));
                true
            }
        });
        (sent, writer.done.clone())
    }

    /// Waits until every `(seq, done)` is answered or [`WAIT`] has passed; not at all while
    /// every write permit is taken. Behind such a backlog (a cold start: thousands of slices to
    /// write, 16 at a time) the writes would not be answered within [`WAIT`], and each chain's
    /// reconcile waiting for them held one of the controller's slots for all of it: 16 chains
    /// every 3 s. Their statuses are written from what is known instead; a node that starts
    /// failing later bumps the world version, and the statuses it changes follow.
    pub async fn wait(&self, waits: Waits) {
        if self.shared.in_flight.available_permits() == 0 {
            return;
        }
        let all = futures::future::join_all(waits.into_iter().map(|(seq, mut done)| async move {
            let _ = done.wait_for(|d| d.0 >= seq).await;
        }));
        let _ = tokio::time::timeout(WAIT, all).await;
    }

    /// Takes every write permit, as a backlog of writes would (tests).
    #[cfg(test)]
    pub(crate) async fn take_every_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.shared.in_flight.acquire_many(WRITES_IN_FLIGHT as u32).await.expect("permits")
    }

    /// Stops the writer of a node that left and forgets its failure and its slices.
    pub fn forget(&self, node: &str) {
        self.writers.lock().expect("writers").remove(node);
        self.shared.index.forget_node(node);
        if self.shared.forget_failure(node) {
            self.shared.world.send_modify(|v| *v += 1);
        }
    }

    /// The nodes that have a writer.
    pub fn nodes(&self) -> Vec<String> {
        self.writers.lock().expect("writers").keys().cloned().collect()
    }

    /// Deletes `slice` (of a node that left) as the operator's own deletion: whether it was
    /// there.
    pub async fn delete_slice(&self, slice: &NodeProgramSlice) -> Result<bool, String> {
        self.shared.delete_slice(&slice.name_any(), slice.uid()).await
    }

    fn spawn(&self, node: &str) -> Writer {
        let (want_tx, want_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel((0, None));
        tokio::spawn(write_loop(self.shared.clone(), node.to_string(), want_rx, done_tx));
        Writer { want: want_tx, done: done_rx }
    }
}

/// One node's writer: does the newest want, retrying a failed one with a backoff until it is
/// done or replaced; ends when the publisher drops the node.
async fn write_loop(shared: Arc<Shared>, node: String, mut want: watch::Receiver<Option<Arc<Sent>>>, done: watch::Sender<Done>) {
    let mut backoff = Duration::from_secs(1);
    while want.changed().await.is_ok() {
        loop {
            let Some(sent) = want.borrow_and_update().clone() else { break };
            if let Err(e) = shared.fence.check() {
                // Fenced off: no write, no failure recorded; the instance is on its way out.
                warn!(node, error = %e, "node program not written");
                done.send_replace((sent.seq, Some(e)));
                break;
            }
            match shared.publish_node(&node, &sent.want).await {
                Ok(()) => {
                    done.send_replace((sent.seq, None));
                    shared.settle(&node, None).await;
                    backoff = Duration::from_secs(1);
                    break;
                }
                Err(Unwritten::Gone) => {
                    debug!(node, "its plan went before its slices were written; waiting for the newer plan's");
                    break;
                }
                Err(Unwritten::Failed(e)) => {
                    done.send_replace((sent.seq, Some(e.clone())));
                    shared.settle(&node, Some(e)).await;
                    // Retry the same want after the backoff, or a newer one as soon as it comes.
                    let retry = tokio::select! {
                        _ = tokio::time::sleep(backoff) => true,
                        r = want.changed() => r.is_ok(),
                    };
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if !retry {
                        return;
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Forgets `node`'s failure; whether it had one.
    fn forget_failure(&self, node: &str) -> bool {
        let mut failures = self.failures.lock().expect("failures");
        let had = failures.remove(node).is_some();
        if had {
            self.failure_changes.fetch_add(1, Ordering::AcqRel);
        }
        had
    }

    /// What the API server holds of slice `name` as far as this operator knows: the mirror's
    /// copy, or its own last write while the mirror has not seen it yet.
    fn known(&self, name: &str, mirrored: Option<&Arc<NodeProgramSlice>>) -> Option<Arc<NodeProgramSlice>> {
        let written = self.index.written(name);
        match (written, mirrored) {
            // The record is stale for good (the slice recreated, or written by someone else):
            // the mirror's copy is what the API server holds from now on.
            (Some(w), Some(m)) if newer_than(m, &w) => {
                self.index.drop_written(name, &w);
                Some(m.clone())
            }
            (Some(w), _) => Some(w),
            (None, m) => m.cloned(),
        }
    }

    /// Writes a node's slices that differ from what the API server holds (those that gain
    /// chains first), deletes its slices no longer wanted, then its pre-slice NodeProgram when
    /// asked to, the writes that take chains away last. A slice that cannot be written (a chain over the object bound) holds up only
    /// what would leave a chain in no slice: the writes and deletions that take away a chain
    /// whose new slice is not written (and every deletion while slice 0, the list of slices,
    /// is not written). New chains in the node's other slices, and the removal of deleted
    /// chains, go on. The first failure is returned, naming the object.
    async fn publish_node(&self, node: &str, want: &Want) -> Result<(), Unwritten> {
        let mut writes = Vec::new();
        for (name, slice) in want.slices.iter() {
            let known = self.known(name, want.known.get(name));
            if known.as_ref().is_some_and(|k| slim::digest_of(k) == slice.digest) {
                continue;
            }
            let before = known.as_deref().map(slim::chains_of).unwrap_or_default();
            let gains = slice.shape.chains.iter().any(|c| !before.contains(&**c));
            let after: HashSet<&str> = slice.shape.chains.iter().map(|c| &**c).collect();
            let lost: Vec<String> = before.into_iter().filter(|c| !after.contains(c.as_str())).collect();
            // New slices, then those that gain chains, then the others; those that take a chain
            // away last, once the slices it moves to are written (or known not to be).
            let order = (!lost.is_empty(), known.is_some(), !gains);
            writes.push((order, name, slice, known.and_then(|k| k.metadata.resource_version.clone()), lost));
        }
        writes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut failed: Option<String> = None;
        // The chains of the wanted slices not written (failed, or held up in turn), and whether
        // slice 0, which lists the node's slices, is one of them.
        let mut unwritten: HashSet<&str> = HashSet::new();
        let mut zero_unwritten = false;
        for (_, name, slice, resource_version, lost) in writes {
            if lost.iter().any(|c| unwritten.contains(c.as_str())) {
                unwritten.extend(slice.shape.chains.iter().map(|c| &**c));
                zero_unwritten |= slices::slice_index(node, name) == Some(0);
                continue;
            }
            let permit = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
            // The program is taken once the permit is held, and let go with it: a writer
            // waiting behind the backlog holds none. (Taken once before the first wait, a
            // thousand nodes' programs of the first plan stayed alive through a cold start's
            // backlog beside the newer plans they were swapped for.)
            let (program, peers) = want.source().ok_or(Unwritten::Gone)?;
            let spec = Renderer::new(node, &program, &peers).spec(&slice.shape);
            drop((program, peers));
            let written = self.write(name, &spec, &slice.digest, &want.owner, resource_version).await;
            drop((spec, permit));
            match written {
                Ok(mut written) => {
                    slim::slice(&mut written);
                    self.index.wrote(name, Arc::new(written));
                }
                Err(e) => {
                    failed.get_or_insert(format!("slice {name}: {e}"));
                    unwritten.extend(slice.shape.chains.iter().map(|c| &**c));
                    zero_unwritten |= slices::slice_index(node, name) == Some(0);
                }
            }
        }
        // (While slice 0 still lists it, a slice deleted would leave the daemon an incomplete
        // set: it would program nothing new.)
        for (name, mirrored) in want.known.iter().filter(|(n, _)| !want.slices.contains_key(*n) && !zero_unwritten) {
            let known = self.known(name, Some(mirrored));
            let held = known.as_deref().map(slim::chains_of).unwrap_or_default();
            if held.iter().any(|c| unwritten.contains(c.as_str())) {
                continue;
            }
            self.fence.check()?;
            if let Err(e) = self.delete_slice(name, known.and_then(|k| k.uid())).await {
                failed.get_or_insert(format!("slice {name}: {e}"));
            }
        }
        if let Some(e) = failed {
            return Err(Unwritten::Failed(e));
        }
        if want.legacy {
            self.fence.check()?;
            delete(&Api::<NodeProgram>::all(self.client.clone()), node).await.map_err(|e| format!("NodeProgram {node}: {e}"))?;
        }
        Ok(())
    }

    /// Deletes slice `name` (`uid`, when known) as the operator's own deletion
    /// ([`SliceIndex::deleting`]): whether it was there.
    async fn delete_slice(&self, name: &str, uid: Option<String>) -> Result<bool, String> {
        self.index.deleting(name, uid.clone());
        let deleted = delete_as(&Api::<NodeProgramSlice>::all(self.client.clone()), name, uid).await;
        self.index.deletion_ended(name, &deleted);
        deleted
    }

    /// Server-side applies one slice, conditional on the resourceVersion it was known at,
    /// refusing locally what would be over the size bound. A conflict (the daemon reported
    /// status since, or another writer) reads the slice again and retries with its
    /// resourceVersion, checking the fence first each time.
    async fn write(
        &self,
        name: &str,
        spec: &NodeProgramSliceSpec,
        digest: &str,
        owner: &OwnerReference,
        resource_version: Option<String>,
    ) -> Result<NodeProgramSlice, String> {
        let api: Api<NodeProgramSlice> = Api::all(self.client.clone());
        let size = json_len(&ApplyBody::new(name, spec, owner, resource_version.as_deref()));
        if size > MAX_OBJECT_BYTES {
            return Err(format!("{size} bytes, over the {MAX_OBJECT_BYTES}-byte bound of one object"));
        }
        let timed = |what: &str| format!("not written: {what}: no answer within {} s", WRITE_TIMEOUT.as_secs());
        let mut resource_version = resource_version;
        // The daemon's status reports change the resourceVersion too: a few conflicts in a row
        // are no failure.
        for attempt in 1..=ATTEMPTS {
            self.fence.check()?;
            let body = ApplyBody::new(name, spec, owner, resource_version.as_deref());
            let started = std::time::Instant::now();
            let params = PatchParams::apply(MANAGER).force();
            let patch = Patch::Apply(&body);
            match tokio::time::timeout(WRITE_TIMEOUT, api.patch(name, &params, &patch)).await.map_err(|_| timed("apply"))? {
                Ok(obj) => {
                    info!(slice = name, node = %spec.node, chains = spec.chains, bytes = size, ms = started.elapsed().as_secs_f64() * 1000.0, "published node program slice");
                    return Ok(obj);
                }
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => {
                    let fresh = tokio::time::timeout(WRITE_TIMEOUT, api.get_opt(name)).await.map_err(|_| timed("read"))?;
                    match fresh.map_err(|e| format!("not written: read it again after a conflict: {e}"))? {
                        Some(p) if slim::digest_of(&p) == digest => return Ok(p),
                        Some(p) => resource_version = p.metadata.resource_version,
                        None => resource_version = None,
                    }
                }
                Err(e) => return Err(format!("not written: {e}")),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// A slice as it is server-side applied, borrowing its spec: serialized straight into the
/// request, not copied into a `serde_json::Value` first (as JSON maps, the 999 peers of each of
/// a thousand nodes' first slices were the largest part of the operator's cold-start peak).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyBody<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ApplyMeta<'a>,
    spec: &'a NodeProgramSliceSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyMeta<'a> {
    name: &'a str,
    labels: BTreeMap<&'static str, &'a str>,
    owner_references: [&'a OwnerReference; 1],
    /// The write is conditional on it when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_version: Option<&'a str>,
}

impl<'a> ApplyBody<'a> {
    fn new(name: &'a str, spec: &'a NodeProgramSliceSpec, owner: &'a OwnerReference, resource_version: Option<&'a str>) -> Self {
        ApplyBody {
            api_version: "srv6pipes.io/v1alpha1",
            kind: "NodeProgramSlice",
            metadata: ApplyMeta { name, labels: [(NODE_LABEL, spec.node.as_str())].into(), owner_references: [owner], resource_version },
            spec,
        }
    }
}

/// Whether the mirror's copy of a slice is newer than the operator's last write of it: another
/// slice of that name (recreated since), or a later generation of it.
pub fn newer_than(mirrored: &NodeProgramSlice, written: &NodeProgramSlice) -> bool {
    let generation = |s: &NodeProgramSlice| s.metadata.generation.unwrap_or(0);
    mirrored.metadata.uid != written.metadata.uid || generation(mirrored) > generation(written)
}

/// The length of `value` as JSON, counted as it is serialized (nothing kept).
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |_| count.0)
}

/// Deletes an object (logged): whether it was there; one already gone is fine.
pub async fn delete<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug>(
    api: &Api<K>,
    name: &str,
) -> Result<bool, String> {
    delete_as(api, name, None).await
}

/// [`delete`], of the object with `uid` when given: another object of that name since (its
/// uid precondition fails) is left, as the one meant is gone.
async fn delete_as<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
) -> Result<bool, String> {
    let params = DeleteParams {
        preconditions: uid.clone().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    match tokio::time::timeout(WRITE_TIMEOUT, api.delete(name, &params)).await {
        Err(_) => Err(format!("not deleted: no answer within {} s", WRITE_TIMEOUT.as_secs())),
        Ok(Ok(_)) => {
            info!(object = name, kind = %K::kind(&()), "deleted");
            Ok(true)
        }
        Ok(Err(kube::Error::Api(e))) if e.code == 404 || (e.code == 409 && uid.is_some()) => Ok(false),
        Ok(Err(e)) => Err(format!("not deleted: {e}")),
    }
}

impl Shared {
    /// Records a write's outcome; a change of a node's failure is logged, recorded as an Event
    /// on the Node, and bumps the world version so that the chains' statuses follow.
    async fn settle(&self, node: &str, failure: Option<String>) {
        let changed = match &failure {
            Some(e) => {
                let mut failures = self.failures.lock().expect("failures");
                let changed = failures.insert(node.to_string(), e.clone()).as_ref() != Some(e);
                if changed {
                    self.failure_changes.fetch_add(1, Ordering::AcqRel);
                }
                changed
            }
            None => self.forget_failure(node),
        };
        if !changed {
            return;
        }
        let (type_, reason, note) = match &failure {
            Some(e) => {
                warn!(node, error = %e, "node program not published; retrying with backoff");
                (EventType::Warning, "ProgramFailed", format!("node {node}: {e}"))
            }
            None => {
                info!(node, "node program published again");
                (EventType::Normal, "ProgramPublished", format!("node {node}: program published"))
            }
        };
        // Events are namespaced: a cluster-scoped object's go to "default".
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Publish".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(node, error = %e, "event not recorded");
        }
        self.world.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use srv6pipes_crds::PeerSpec;

    /// The typed body is the object the operator applied as a `json!` value before: the same
    /// JSON with and without the resourceVersion, so what the API server receives is unchanged.
    #[test]
    fn the_applied_body_is_the_slice_object() {
        let spec = NodeProgramSliceSpec {
            node: "node-a".into(),
            chains: 2,
            tables: json!({"headends": [{"chain": "default/web", "class": 3}], "proxies": []}),
            peers: vec![PeerSpec { node: "node-b".into(), locator: "fc00:0:2::/48".into(), underlay: "fd00::2".into() }],
            slices: vec![0, 1],
        };
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: "node-a".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        for rv in [None, Some("42")] {
            let mut expected = json!({
                "apiVersion": "srv6pipes.io/v1alpha1",
                "kind": "NodeProgramSlice",
                "metadata": {"name": "node-a-0", "labels": {NODE_LABEL: "node-a"}, "ownerReferences": [owner]},
                "spec": spec,
            });
            if let Some(rv) = rv {
                expected["metadata"]["resourceVersion"] = json!(rv);
            }
            let body = ApplyBody::new("node-a-0", &spec, &owner, rv);
            assert_eq!(serde_json::to_value(&body).unwrap(), expected);
            assert_eq!(json_len(&body), serde_json::to_vec(&body).unwrap().len());
        }
    }
}
