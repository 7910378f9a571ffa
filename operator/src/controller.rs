//! The reconcilers: one kube-rs `Controller` for ServiceChains (finalizer, status, Events) and
//! one for Nodes (locator allocation). Both publish the per-node programs of one compilation.
//!
//! The compiler works on the whole cluster (priorities, conflicts and shared VNFs tie chains
//! together), so the operator mirrors Pods, Nodes, NodeSidTables, NodePrograms and
//! ServiceChains into reflector stores, compiles once per change of what matters to it (a
//! "world version"), and every reconcile reads the cached plan. Changes that matter re-trigger
//! all objects through `reconcile_all_on`; nothing is requeued on a timer except after errors.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnet::Ipv6Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizing};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use srv6::sid::{allocate_locator, Locator};
use srv6pipes_crds::{NodeProgram, NodeSidTable, ServiceChain, LOCATOR_ANNOTATION};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::world::{self, Plan};

/// The field manager of everything the operator writes (server-side apply).
pub const MANAGER: &str = "srv6pipes-operator";
/// Keeps a deleted chain until every node's program is free of it.
pub const FINALIZER: &str = "srv6pipes.io/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0} has no namespace")]
    NoNamespace(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster's locator block, from which nodes get locators.
    pub block: Ipv6Net,
    /// Locator length handed to nodes.
    pub locator_len: u8,
}

/// Read sides of the mirrors.
#[derive(Clone)]
pub struct Stores {
    pub chains: Store<ServiceChain>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub tables: Store<NodeSidTable>,
    pub programs: Store<NodeProgram>,
}

/// Write sides, fed by the watchers (or by tests).
pub struct Writers {
    pub chains: reflector::store::Writer<ServiceChain>,
    pub pods: reflector::store::Writer<Pod>,
    pub nodes: reflector::store::Writer<Node>,
    pub tables: reflector::store::Writer<NodeSidTable>,
    pub programs: reflector::store::Writer<NodeProgram>,
}

impl Stores {
    pub fn new() -> (Stores, Writers) {
        let (chains, wc) = reflector::store();
        let (pods, wp) = reflector::store();
        let (nodes, wn) = reflector::store();
        let (tables, wt) = reflector::store();
        let (programs, wg) = reflector::store();
        (Stores { chains, pods, nodes, tables, programs }, Writers { chains: wc, pods: wp, nodes: wn, tables: wt, programs: wg })
    }
}

pub struct Ctx {
    pub client: Client,
    pub stores: Stores,
    pub config: Config,
    world: watch::Receiver<u64>,
    cache: Mutex<Option<(u64, Arc<Plan>)>>,
    /// One publication at a time, from the newest plan; also serializes locator allocation.
    publishing: tokio::sync::Mutex<BTreeMap<String, Locator>>,
    recorder: Recorder,
}

impl Ctx {
    pub fn new(client: Client, stores: Stores, config: Config, world: watch::Receiver<u64>, instance: Option<String>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance });
        Ctx { client, stores, config, world, cache: Mutex::new(None), publishing: Default::default(), recorder }
    }

    /// The plan for the current world version, compiled at most once per version.
    fn plan(&self) -> Arc<Plan> {
        let version = *self.world.borrow();
        let mut cache = self.cache.lock().expect("plan cache");
        if let Some((v, plan)) = cache.as_ref() {
            if *v == version {
                return plan.clone();
            }
        }
        let plan = Arc::new(self.compile(None));
        *cache = Some((version, plan.clone()));
        plan
    }

    /// Compiles the stores, with `chain` in place of the stored copy when given (the
    /// controller may hold a newer one than the mirror).
    fn compile(&self, chain: Option<&ServiceChain>) -> Plan {
        let chains = self.stores.chains.state();
        let mut chains: Vec<&ServiceChain> = chains.iter().map(|c| c.as_ref()).collect();
        if let Some(c) = chain {
            chains.retain(|x| x.uid() != c.uid());
            chains.push(c);
        }
        let (pods, nodes, tables, programs) =
            (self.stores.pods.state(), self.stores.nodes.state(), self.stores.tables.state(), self.stores.programs.state());
        world::plan(
            &chains,
            &pods.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
            &nodes.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            &tables.iter().map(|t| t.as_ref()).collect::<Vec<_>>(),
            &programs.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
        )
    }

    /// The plan that includes `chain` as the controller sees it.
    fn plan_with(&self, chain: &ServiceChain) -> Arc<Plan> {
        let plan = self.plan();
        let mirrored = self.stores.chains.get(&ObjectRef::from_obj(chain));
        let same = mirrored.is_some_and(|m| {
            m.metadata.generation == chain.metadata.generation
                && m.metadata.deletion_timestamp.is_some() == chain.metadata.deletion_timestamp.is_some()
        });
        if same {
            plan
        } else {
            Arc::new(self.compile(Some(chain)))
        }
    }

    /// Server-side applies every node's program that differs from what the node has; removes
    /// the programs and SID tables of nodes that left.
    async fn publish(&self, plan: &Plan) -> Result<(), Error> {
        let api: Api<NodeProgram> = Api::all(self.client.clone());
        for (node, spec) in &plan.programs {
            let current = self.stores.programs.get(&ObjectRef::new(node));
            if current.as_ref().is_some_and(|p| &p.spec == spec) {
                continue;
            }
            let Some(owner) = self.stores.nodes.get(&ObjectRef::new(node)).and_then(|n| node_owner(&n)) else { continue };
            let body = json!({
                "apiVersion": "srv6pipes.io/v1alpha1",
                "kind": "NodeProgram",
                "metadata": {"name": node, "ownerReferences": [owner]},
                "spec": spec,
            });
            api.patch(node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
            info!(node, "published node program");
        }
        let nodes = self.stores.nodes.state();
        let exists = |name: &str| nodes.iter().any(|n| n.name_any() == name);
        for p in self.stores.programs.state().iter().filter(|p| !exists(&p.name_any())) {
            delete_gone(&api, &p.name_any()).await?;
        }
        let tables: Api<NodeSidTable> = Api::all(self.client.clone());
        for t in self.stores.tables.state().iter().filter(|t| !exists(&t.name_any())) {
            delete_gone(&tables, &t.name_any()).await?;
        }
        Ok(())
    }

    async fn apply_chain(&self, chain: &ServiceChain) -> Result<Action, Error> {
        let plan = {
            let _one = self.publishing.lock().await;
            let plan = self.plan_with(chain);
            self.publish(&plan).await?;
            plan
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let Some(status) = world::chain_status(&plan, chain, now) else { return Ok(Action::await_change()) };
        if chain.status.as_ref() == Some(&status) {
            return Ok(Action::await_change());
        }
        let (ns, name) = world::key_of(chain);
        let api: Api<ServiceChain> = Api::namespaced(self.client.clone(), &ns);
        let body = json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain", "status": status});
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
        let (old, new) = (world::ready_condition(chain.status.as_ref()), world::ready_condition(Some(&status)));
        if let Some(new) = new.filter(|n| old.is_none_or(|o| (&o.status, &o.reason) != (&n.status, &n.reason))) {
            info!(chain = %format!("{ns}/{name}"), ready = %new.status, reason = %new.reason, message = %new.message, "chain status");
            let event = Event {
                type_: if new.status == "True" { EventType::Normal } else { EventType::Warning },
                reason: new.reason.clone(),
                note: Some(new.message.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &chain.object_ref(&())).await {
                warn!(chain = %format!("{ns}/{name}"), error = %e, "event not recorded");
            }
        }
        Ok(Action::await_change())
    }

    /// A deleted chain: every node's program without it, then the finalizer goes.
    async fn cleanup_chain(&self, chain: &ServiceChain) -> Result<Action, Error> {
        let _one = self.publishing.lock().await;
        let plan = self.plan_with(chain);
        self.publish(&plan).await?;
        let (ns, name) = world::key_of(chain);
        info!(chain = %format!("{ns}/{name}"), "chain deleted: removed from every node");
        Ok(Action::await_change())
    }

    /// A node without a (valid) locator gets the lowest free one of the block; a full block is
    /// reported on the node (and in the status of chains waiting for its SIDs).
    async fn reconcile_node(&self, node: &Node) -> Result<Action, Error> {
        let name = node.name_any();
        let mut allocated = self.publishing.lock().await;
        if !matches!(world::node_locator(node), Some(Ok(_))) {
            let nodes = self.stores.nodes.state();
            let mut taken = world::taken_locators(&nodes.iter().map(|n| n.as_ref()).collect::<Vec<_>>());
            taken.extend(allocated.iter().filter(|(n, _)| **n != name).map(|(_, l)| *l));
            match allocate_locator(self.config.block, self.config.locator_len, &taken) {
                Ok(locator) => {
                    let api: Api<Node> = Api::all(self.client.clone());
                    let body = json!({
                        "apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "annotations": {LOCATOR_ANNOTATION: locator.to_string()}},
                    });
                    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
                    allocated.insert(name.clone(), locator);
                    info!(node = %name, %locator, "allocated locator");
                }
                Err(e) => {
                    warn!(node = %name, error = %e, "no locator for node");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "LocatorExhausted".into(),
                        note: Some(format!("no locator for node {name}: {e}")),
                        action: "AllocateLocator".into(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&event, &node.object_ref(&())).await {
                        warn!(node = %name, error = %e, "event not recorded");
                    }
                }
            }
        }
        let plan = self.plan();
        self.publish(&plan).await?;
        Ok(Action::await_change())
    }
}

fn node_owner(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name_any(),
        uid: node.metadata.uid.clone()?,
        ..Default::default()
    })
}

async fn delete_gone<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug>(api: &Api<K>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(object = name, kind = %K::kind(&()), "node left: removed");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile_chain(chain: Arc<ServiceChain>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = chain.namespace().ok_or_else(|| Error::NoNamespace(chain.name_any()))?;
    let api: Api<ServiceChain> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, chain, |event| async {
        match event {
            Finalizing::Apply(c) => ctx.apply_chain(&c).await,
            Finalizing::Cleanup(c) => ctx.cleanup_chain(&c).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub async fn reconcile_node(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.reconcile_node(&node).await
}

/// Errors retry after a pause; success waits for the next change.
pub fn error_policy<K: ResourceExt>(obj: Arc<K>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(object = %obj.name_any(), error = %error, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// Mirrors one kind into its store and bumps the world version when something the compiler
/// reads changed (`relevant` renders that part of an object).
pub async fn mirror<K>(api: Api<K>, mut writer: reflector::store::Writer<K>, relevant: fn(&K) -> String, world: Arc<watch::Sender<u64>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let fingerprint = |k: &K| {
        let mut h = DefaultHasher::new();
        relevant(k).hash(&mut h);
        h.finish()
    };
    let key = |k: &K| format!("{}/{}", k.namespace().unwrap_or_default(), k.name_any());
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                continue;
            }
        };
        writer.apply_watcher_event(&event);
        let changed = match &event {
            watcher::Event::Apply(k) | watcher::Event::InitApply(k) => seen.insert(key(k), fingerprint(k)) != Some(fingerprint(k)),
            watcher::Event::Delete(k) => seen.remove(&key(k)).is_some(),
            watcher::Event::Init => false,
            watcher::Event::InitDone => true,
        };
        if changed && !matches!(event, watcher::Event::InitApply(_)) {
            world.send_modify(|v| *v += 1);
        }
    }
}

/// What the compiler reads of each kind.
pub mod relevant {
    use super::*;

    pub fn chain(c: &ServiceChain) -> String {
        format!("{:?}{:?}{:?}", c.metadata.uid, c.metadata.generation, c.metadata.deletion_timestamp.is_some())
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
    pub fn program(p: &NodeProgram) -> String {
        format!("{:?}{:?}", world::program_failure(p), p.metadata.uid)
    }
}

/// Runs both controllers until SIGTERM/SIGINT, once the mirrors are synced.
pub async fn run(client: Client, config: Config, instance: Option<String>) -> anyhow::Result<()> {
    let (stores, writers) = Stores::new();
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let c = client.clone();
    tokio::spawn(mirror(Api::<ServiceChain>::all(c.clone()), writers.chains, relevant::chain, tx.clone()));
    tokio::spawn(mirror(Api::<Pod>::all(c.clone()), writers.pods, relevant::pod, tx.clone()));
    tokio::spawn(mirror(Api::<Node>::all(c.clone()), writers.nodes, relevant::node, tx.clone()));
    tokio::spawn(mirror(Api::<NodeSidTable>::all(c.clone()), writers.tables, relevant::table, tx.clone()));
    tokio::spawn(mirror(Api::<NodeProgram>::all(c.clone()), writers.programs, relevant::program, tx.clone()));
    // Never compile from a partial view: an empty pod store would unprogram every node.
    stores.chains.wait_until_ready().await?;
    stores.pods.wait_until_ready().await?;
    stores.nodes.wait_until_ready().await?;
    stores.tables.wait_until_ready().await?;
    stores.programs.wait_until_ready().await?;
    info!("caches synced; reconciling");
    let ctx = Arc::new(Ctx::new(client.clone(), stores, config, rx.clone(), instance));
    let chains = Controller::new(Api::<ServiceChain>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(changes(rx.clone()))
        .shutdown_on_signal()
        .run(reconcile_chain, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "chain controller");
            }
        });
    let nodes = Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .reconcile_all_on(changes(rx))
        .shutdown_on_signal()
        .run(reconcile_node, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "node controller");
            }
        });
    futures::join!(chains, nodes);
    Ok(())
}

/// Fires once per change of the world version (bursts coalesce into one).
pub fn changes(rx: watch::Receiver<u64>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.changed().await.ok().map(|_| ((), rx)) })
}
