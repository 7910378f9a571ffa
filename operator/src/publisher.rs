//! Per-node publishing: one writer task per node server-side applies that node's NodeProgram,
//! so one node whose write is rejected, denied, too large or hangs never delays another's.
//!
//! A publication hands every node its newest spec (a newer spec replaces one not yet written:
//! a writer always writes the latest) and waits at most [`WAIT`] for the writes it started. A
//! failed write is retried by its writer with a backoff of up to [`MAX_BACKOFF`] while the spec
//! stays the same; the failure is kept per node (chains that use the node show `ProgramFailed`
//! naming it), logged, and recorded as an Event on the Node. When a node starts or stops
//! failing, the world version is bumped so that every chain's status is computed again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Client;
use serde_json::json;
use srv6pipes_crds::{NodeProgram, NodeProgramSpec};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::MANAGER;
use crate::lease::Fence;

/// How long a publication waits for its writes before the chains' statuses are written from
/// what is known (a write still running goes on in its writer).
pub const WAIT: Duration = Duration::from_secs(3);
/// One write's deadline.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a failed write back off from 1 s up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// No srv6pipes object is written above this size (etcd refuses requests over 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

/// What a writer is asked to write.
struct Want {
    seq: u64,
    spec: Arc<NodeProgramSpec>,
    owner: OwnerReference,
    /// The resourceVersion of the program as the publisher knew it: the write is conditional
    /// on it (a stale leader's write fails instead of landing).
    resource_version: Option<String>,
}

/// A writer's answer to the publication of sequence number `seq`: `None` when written.
type Done = (u64, Option<String>);

struct Writer {
    want: watch::Sender<Option<Arc<Want>>>,
    done: watch::Receiver<Done>,
}

/// State the writers share with the publisher.
struct Shared {
    client: Client,
    fence: Fence,
    recorder: Recorder,
    world: Arc<watch::Sender<u64>>,
    /// Per node, the program as the last successful write left it (the API server's answer).
    written: Mutex<HashMap<String, Arc<NodeProgram>>>,
    /// Nodes whose latest spec could not be written, with why.
    failures: Mutex<BTreeMap<String, String>>,
}

pub struct Publisher {
    shared: Arc<Shared>,
    writers: Mutex<HashMap<String, Writer>>,
    seq: AtomicU64,
}

impl Publisher {
    pub fn new(client: Client, recorder: Recorder, world: Arc<watch::Sender<u64>>, fence: Fence) -> Self {
        let shared = Shared { client, fence, recorder, world, written: Default::default(), failures: Default::default() };
        Publisher { shared: Arc::new(shared), writers: Default::default(), seq: AtomicU64::new(0) }
    }

    /// This operator's last successful write of `node`'s program.
    pub fn written(&self, node: &str) -> Option<Arc<NodeProgram>> {
        self.shared.written.lock().expect("written").get(node).cloned()
    }

    /// The spec `node`'s writer was last asked to write.
    pub fn wanted(&self, node: &str) -> Option<Arc<NodeProgramSpec>> {
        let writers = self.writers.lock().expect("writers");
        let want = writers.get(node)?.want.borrow().clone();
        want.map(|w| w.spec.clone())
    }

    /// Nodes whose program could not be written, with why.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.shared.failures.lock().expect("failures").clone()
    }

    /// Hands `spec` to `node`'s writer (unless it is already writing that spec) and returns
    /// what to wait on.
    pub fn send(
        &self,
        node: &str,
        spec: &NodeProgramSpec,
        owner: OwnerReference,
        resource_version: Option<String>,
    ) -> (u64, watch::Receiver<Done>) {
        let mut writers = self.writers.lock().expect("writers");
        let writer = writers.entry(node.to_string()).or_insert_with(|| self.spawn(node));
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // The same spec still being written, or failed and waiting for its retry, is not sent
        // again; once written, it is (someone else changed the object since).
        let settled_ok = {
            let done = writer.done.borrow();
            move |w: &Want| done.0 >= w.seq && done.1.is_none()
        };
        let mut sent = seq;
        writer.want.send_if_modified(|want| match want {
            Some(w) if *w.spec == *spec && !settled_ok(w) => {
                sent = w.seq;
                false
            }
            _ => {
                *want = Some(Arc::new(Want { seq, spec: Arc::new(spec.clone()), owner, resource_version }));
                true
            }
        });
        (sent, writer.done.clone())
    }

    /// Waits until every `(seq, done)` is answered or [`WAIT`] has passed.
    pub async fn wait(waits: Vec<(u64, watch::Receiver<Done>)>) {
        let all = futures::future::join_all(waits.into_iter().map(|(seq, mut done)| async move {
            let _ = done.wait_for(|d| d.0 >= seq).await;
        }));
        let _ = tokio::time::timeout(WAIT, all).await;
    }

    /// Stops the writer of a node that left and forgets its failure.
    pub fn forget(&self, node: &str) {
        self.writers.lock().expect("writers").remove(node);
        self.shared.written.lock().expect("written").remove(node);
        if self.shared.failures.lock().expect("failures").remove(node).is_some() {
            self.shared.world.send_modify(|v| *v += 1);
        }
    }

    fn spawn(&self, node: &str) -> Writer {
        let (want_tx, want_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel((0, None));
        tokio::spawn(write_loop(self.shared.clone(), node.to_string(), want_rx, done_tx));
        Writer { want: want_tx, done: done_rx }
    }
}

/// One node's writer: writes the newest wanted spec, retrying a failed one with a backoff until
/// it is written or replaced; ends when the publisher drops the node.
async fn write_loop(shared: Arc<Shared>, node: String, mut want: watch::Receiver<Option<Arc<Want>>>, done: watch::Sender<Done>) {
    let mut backoff = Duration::from_secs(1);
    while want.changed().await.is_ok() {
        loop {
            let Some(w) = want.borrow_and_update().clone() else { break };
            if let Err(e) = shared.fence.check() {
                // Fenced off: no write, no failure recorded; the instance is on its way out.
                warn!(node, error = %e, "node program not written");
                done.send_replace((w.seq, Some(e)));
                break;
            }
            match write(&shared, &node, &w).await {
                Ok(obj) => {
                    shared.written.lock().expect("written").insert(node.clone(), Arc::new(obj));
                    done.send_replace((w.seq, None));
                    shared.settle(&node, None).await;
                    backoff = Duration::from_secs(1);
                    break;
                }
                Err(e) => {
                    done.send_replace((w.seq, Some(e.clone())));
                    shared.settle(&node, Some(e)).await;
                    // Retry the same spec after the backoff, or a newer one as soon as it comes.
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

/// Server-side applies one program, conditional on the resourceVersion it was known at,
/// refusing locally what would be over the size bound. A conflict (the daemon reported status
/// since, or another writer) reads the program again and retries with its resourceVersion,
/// checking the fence first each time.
async fn write(shared: &Shared, node: &str, w: &Want) -> Result<NodeProgram, String> {
    let api: Api<NodeProgram> = Api::all(shared.client.clone());
    let mut body = json!({
        "apiVersion": "srv6pipes.io/v1alpha1",
        "kind": "NodeProgram",
        "metadata": {"name": node, "ownerReferences": [w.owner]},
        "spec": *w.spec,
    });
    let size = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(0);
    if size > MAX_OBJECT_BYTES {
        return Err(format!("program is {size} bytes, over the {MAX_OBJECT_BYTES}-byte bound of one object"));
    }
    let timed = |what: &str| format!("program not written: {what}: no answer within {} s", WRITE_TIMEOUT.as_secs());
    let mut resource_version = w.resource_version.clone();
    for attempt in 1..=3 {
        shared.fence.check()?;
        match &resource_version {
            Some(rv) => body["metadata"]["resourceVersion"] = json!(rv),
            None => _ = body["metadata"].as_object_mut().expect("metadata").remove("resourceVersion"),
        }
        let started = std::time::Instant::now();
        let params = PatchParams::apply(MANAGER).force();
        let patch = Patch::Apply(&body);
        match tokio::time::timeout(WRITE_TIMEOUT, api.patch(node, &params, &patch)).await.map_err(|_| timed("apply"))? {
            Ok(obj) => {
                info!(node, bytes = size, ms = started.elapsed().as_secs_f64() * 1000.0, "published node program");
                return Ok(obj);
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 3 => {
                let fresh = tokio::time::timeout(WRITE_TIMEOUT, api.get_opt(node)).await.map_err(|_| timed("read"))?;
                match fresh.map_err(|e| format!("program not written: read it again after a conflict: {e}"))? {
                    Some(p) if p.spec == *w.spec => return Ok(p),
                    Some(p) => resource_version = p.metadata.resource_version,
                    None => resource_version = None,
                }
            }
            Err(e) => return Err(format!("program not written: {e}")),
        }
    }
    unreachable!("the last attempt returns")
}

impl Shared {
    /// Records a write's outcome; a change of a node's failure is logged, recorded as an Event
    /// on the Node, and bumps the world version so that the chains' statuses follow.
    async fn settle(&self, node: &str, failure: Option<String>) {
        let changed = {
            let mut failures = self.failures.lock().expect("failures");
            match &failure {
                Some(e) => failures.insert(node.to_string(), e.clone()).as_ref() != Some(e),
                None => failures.remove(node).is_some(),
            }
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
