//! The reconcilers: one kube-rs `Controller` for ServiceChains (finalizer, status, Events) and
//! one for Nodes (locator allocation).
//!
//! The compiler works on the whole cluster (priorities, conflicts and shared VNFs tie chains
//! together), so the operator mirrors Pods, Nodes, NodeSidTables, NodeProgramSlices and
//! ServiceChains into reflector stores and compiles once per change of what matters to it (a
//! "world version"). The planner (`planner.rs`) publishes each new plan's node programs and
//! sends the chains whose status it changes to the chain controller; a chain's own reconcile
//! reads the cached plan. Nothing is requeued on a timer except after errors. The mirrors, and
//! what of their changes goes to a controller, are in `mirror.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use ipnet::Ipv6Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use srv6::plan::Planner;
use srv6::sid::{allocate_locator, Locator};
use srv6::slices;
use srv6pipes_crds::{NodeProgram, NodeProgramSlice, NodeSidTable, ServiceChain, LOCATOR_ANNOTATION};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::lease::Fence;
use crate::mirror::{chain_trigger, mirror, relevant, Forward, Triggers};
use crate::publisher::{newer_than, Held, Publisher, Waits, Want};
use crate::slim;
use crate::split::SliceCache;
use crate::world::{self, Plan};

/// The field manager of everything the operator writes (server-side apply).
pub const MANAGER: &str = "srv6pipes-operator";
/// Keeps a deleted chain until every node's program is free of it.
pub const FINALIZER: &str = srv6pipes_crds::CLEANUP_FINALIZER;
/// Reconciles in flight at once, per controller.
const RECONCILES: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{0}")]
    Fenced(String),
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
    pub pods: crate::pods::Pods,
    pub nodes: Store<Node>,
    pub tables: Store<NodeSidTable>,
    pub slices: Store<NodeProgramSlice>,
    /// The names of each node's slices.
    pub slices_by_node: crate::slice_index::SliceIndex,
    /// Pre-slice NodePrograms, until each node's daemon has moved to its slices.
    pub programs: Store<NodeProgram>,
    /// What the chain controller has seen of each chain ([`Forward`]).
    pub chain_triggers: Triggers,
}

/// Write sides, fed by the watchers (or by tests).
pub struct Writers {
    pub chains: reflector::store::Writer<ServiceChain>,
    pub pods: crate::pods::PodsWriter,
    pub nodes: reflector::store::Writer<Node>,
    pub tables: reflector::store::Writer<NodeSidTable>,
    pub slices: crate::slice_index::SlicesWriter,
    pub programs: reflector::store::Writer<NodeProgram>,
}

impl Stores {
    pub fn new() -> (Stores, Writers) {
        let (chains, wc) = reflector::store();
        let (pods, wp) = crate::pods::store();
        let (nodes, wn) = reflector::store();
        let (tables, wt) = reflector::store();
        let (slices, slices_by_node, ws) = crate::slice_index::store();
        let (programs, wg) = reflector::store();
        (
            Stores { chains, pods, nodes, tables, slices, slices_by_node, programs, chain_triggers: Default::default() },
            Writers { chains: wc, pods: wp, nodes: wn, tables: wt, slices: ws, programs: wg },
        )
    }

    /// Compiles the stores, with `chain` in place of the stored copy when given (the
    /// controller may hold a newer one than the mirror).
    pub fn compile(&self, chain: Option<&ServiceChain>) -> Plan {
        let chains = self.chains.state();
        let mut chains: Vec<&ServiceChain> = chains.iter().map(|c| c.as_ref()).collect();
        if let Some(c) = chain {
            chains.retain(|x| x.uid() != c.uid());
            chains.push(c);
        }
        self.with_world(|pods, nodes, tables, slices| world::plan(&chains, pods, nodes, tables, slices))
    }

    /// Compiles the stores by `planner`, from `previous` if that is its last plan: the chains
    /// that did not change (nor their namespace's pods and SIDs) are not compiled again.
    pub fn replan(&self, planner: &mut Planner<world::Version>, previous: Option<Plan>) -> Plan {
        let chains = self.chains.state();
        self.with_world(|pods, nodes, tables, slices| world::replan(planner, previous, &chains, pods, nodes, tables, slices))
    }

    /// `f` of the stores' pods, nodes, SID tables and program slices.
    fn with_world<R>(&self, f: impl FnOnce(Vec<srv6::compiler::PodInfo>, &[&Node], &[&NodeSidTable], &[&NodeProgramSlice]) -> R) -> R {
        fn refs<K>(v: &[Arc<K>]) -> Vec<&K> {
            v.iter().map(|x| x.as_ref()).collect()
        }
        let (nodes, tables, slices) = (self.nodes.state(), self.tables.state(), self.slices.state());
        f(self.pods.infos(), &refs(&nodes), &refs(&tables), &refs(&slices))
    }
}

/// When to look again for a plan newer than the one cached, while that one is still held.
const HELD: Duration = Duration::from_millis(100);

/// A compiled plan and what it was compiled from.
struct CachedPlan {
    version: u64,
    budget: Budget,
    plan: Arc<Plan>,
}

/// Compilation time the operator may spend while the world keeps changing: earned by the time
/// between compilations, spent by each one, saved up to two compilations' worth while quiet.
/// Under a stream of changes (chains created by the thousand), compiling thus takes at most
/// half a core; a lone change after a quiet spell (a chain deleted, then another created)
/// compiles at once instead of waiting out the previous compilation's pause.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Nanoseconds of compilation allowed when the last one ended (negative: owed).
    credit: i128,
    /// When the last compilation ended.
    at: Instant,
    /// How long it took.
    took: Duration,
}

impl Budget {
    fn after(previous: Option<Budget>, took: Duration, now: Instant) -> Budget {
        let saved = previous.map_or(0, |b| b.credit_at(now - took));
        Budget { credit: saved - took.as_nanos() as i128, at: now, took }
    }

    fn credit_at(&self, now: Instant) -> i128 {
        (self.credit + now.saturating_duration_since(self.at).as_nanos() as i128).min(2 * self.took.as_nanos() as i128)
    }

    /// How long until the next compilation may start (zero: now).
    fn wait(&self, now: Instant) -> Duration {
        Duration::from_nanos((-self.credit_at(now)).max(0) as u64)
    }
}

/// Runs CPU-heavy `f` (a compilation of every chain, a split) without holding up the other
/// tasks of this worker thread (on a multi-threaded runtime; a current-thread one just runs it).
pub(crate) fn cpu<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub struct Ctx {
    pub client: Client,
    pub stores: Stores,
    pub config: Config,
    world: watch::Receiver<u64>,
    /// The last plan: its world version and the compilation budget left.
    cache: Mutex<Option<CachedPlan>>,
    /// What the last plan compiled of each chain (locked under `cache`).
    planner: Mutex<Planner<world::Version>>,
    /// One publication at a time, from the newest plan; also serializes locator allocation.
    pub(crate) publishing: tokio::sync::Mutex<BTreeMap<String, Locator>>,
    /// The per-node writers. They keep each slice as this operator's last write left it (the
    /// API server's answer): newer than the mirror's copy until the watch brings that write
    /// back, so the same spec is not sent twice meanwhile.
    publisher: Publisher,
    /// Per node, the last program split into slices and those slices, so that a program that
    /// did not change is not split again.
    split: Mutex<SliceCache>,
    recorder: Recorder,
    /// Closed once this instance may no longer be the leader: nothing is written then.
    fence: Fence,
}

impl Ctx {
    /// `world` is the world version: bumped by the mirrors, and by the publisher when a node
    /// starts or stops failing.
    pub fn new(
        client: Client,
        stores: Stores,
        config: Config,
        world: Arc<watch::Sender<u64>>,
        instance: Option<String>,
        fence: Fence,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), MANAGER, instance);
        let publisher = Publisher::new(client.clone(), recorder.clone(), world.clone(), fence.clone(), stores.slices_by_node.clone());
        let world = world.subscribe();
        let split = Default::default();
        let planner = Mutex::new(Planner::default());
        Ctx {
            client,
            stores,
            config,
            world,
            cache: Mutex::new(None),
            planner,
            publishing: Default::default(),
            publisher,
            split,
            recorder,
            fence,
        }
    }

    pub(crate) fn fenced(&self) -> Result<(), Error> {
        self.fence.check().map_err(Error::Fenced)
    }

    /// The plan for the current world version, compiled at most once per version and only as
    /// the compilation [`Budget`] allows (a small world, compiled in a millisecond, is always
    /// fresh). The second value says the plan is older than the world, and when to look again.
    pub(crate) fn plan(&self) -> (Arc<Plan>, Option<Duration>) {
        cpu(|| {
            let version = *self.world.borrow();
            let mut cache = self.cache.lock().expect("plan cache");
            if let Some(c) = cache.as_ref() {
                if c.version == version {
                    return (c.plan.clone(), None);
                }
                let again = c.budget.wait(Instant::now());
                // Still held (the planner computing its round's statuses from it): compiled
                // now, two plans would be alive at once, as they were at the peak of a cold
                // start with 100,000 chains (a profile of it: 610 of 941 MiB in plans).
                let held = Arc::strong_count(&c.plan) > 1;
                if held || !again.is_zero() {
                    return (c.plan.clone(), Some(if held { again.max(HELD) } else { again }));
                }
            }
            // The old plan becomes the new one: the planner moves what did not change from it
            // into the next (two plans at once were the operator's peak). If a reconcile still
            // holds it for a moment, the planner starts from scratch.
            let (last, previous) = cache.take().map(|c| (Arc::try_unwrap(c.plan).ok(), c.budget)).unzip();
            // Pages freed since go back to the system before the new plan is built: that may be
            // in the other arena, which cannot reuse them, and with a second's decay both were
            // resident for a moment (run I: RSS 1,286 MiB with the heap never above 928).
            crate::memory::release();
            let started = Instant::now();
            let plan = Arc::new(self.stores.replan(&mut self.planner.lock().expect("planner"), last.flatten()));
            let took = started.elapsed();
            crate::metrics::METRICS.compile.observe(took.as_secs_f64());
            crate::metrics::planned(&plan);
            debug!(world = version, chains = self.stores.chains.state().len(), ms = took.as_secs_f64() * 1000.0, "compiled");
            let budget = Budget::after(previous, took, Instant::now());
            *cache = Some(CachedPlan { version, budget, plan: plan.clone() });
            (plan, None)
        })
    }

    /// Whether the mirror holds `chain` as the controller sees it (what the compiler reads).
    fn mirrored(&self, chain: &ServiceChain) -> bool {
        self.stores.chains.get(&ObjectRef::from_obj(chain)).is_some_and(|m| {
            m.metadata.generation == chain.metadata.generation
                && m.metadata.deletion_timestamp.is_some() == chain.metadata.deletion_timestamp.is_some()
        })
    }

    /// Waits (at most a second) for the mirror to hold `chain` as the controller sees it: both
    /// watches bring the same event, and once the mirror has it, the plan of the new world
    /// serves this reconcile and the planner alike (one compilation, not two).
    async fn await_mirror(&self, chain: &ServiceChain) {
        for _ in 0..20 {
            if self.mirrored(chain) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The plan that includes `chain` as the controller sees it (and whether it is older than
    /// the world, see [`Ctx::plan`]): compiled with it if the mirror is still behind. Such a
    /// plan is this reconcile's alone (the third value): no cache keeps it, and the writes it
    /// hands over hold it weakly ([`Held`]), so the reconcile keeps it until they are done.
    fn plan_with(&self, chain: &ServiceChain) -> (Arc<Plan>, Option<Duration>, bool) {
        if self.mirrored(chain) {
            let (plan, stale) = self.plan();
            (plan, stale, false)
        } else {
            (Arc::new(cpu(|| self.stores.compile(Some(chain)))), None, true)
        }
    }

    /// The mirror's slices, by node and name: of the nodes `only` names (looked up by node), or
    /// of every node.
    fn mirrored_slices(&self, only: Option<&BTreeSet<&str>>) -> HashMap<String, BTreeMap<String, Arc<NodeProgramSlice>>> {
        let mut out: HashMap<String, BTreeMap<String, Arc<NodeProgramSlice>>> = HashMap::new();
        match only {
            Some(nodes) => {
                for node in nodes {
                    let slices: BTreeMap<_, _> = self.stores.slices_by_node.of(&self.stores.slices, node).collect();
                    if !slices.is_empty() {
                        out.insert(node.to_string(), slices);
                    }
                }
            }
            None => {
                for s in self.stores.slices.state() {
                    out.entry(s.spec.node.clone()).or_default().insert(s.name_any(), s);
                }
            }
        }
        out
    }

    /// Hands each node whose slices differ from what it has to its writer: the nodes `only`
    /// names (a chain's reconcile: its own nodes; a publication costs what the chain touches,
    /// not every node), or every node, then removing the slices, programs and SID tables of
    /// nodes that left (the planner, once per plan). Returns what to wait on
    /// ([`Ctx::settled`]) for the writes handed over. Called under the `publishing` lock; the
    /// wait is not: a chain's reconcile that waits for its nodes' writes holds up no other
    /// (with the wait under the lock, for every node's writes, a cold start at 100,000 chains
    /// reconciled one chain every 3 s).
    pub(crate) async fn publish(&self, plan: &Plan, only: Option<&BTreeSet<&str>>) -> Waits {
        let _timer = crate::metrics::Timer::start(&crate::metrics::METRICS.publish);
        let mut mirrored = self.mirrored_slices(only);
        let mut waits = Vec::new();
        for (node, program) in plan.programs.iter().filter(|(n, _)| only.is_none_or(|o| o.contains(n.as_str()))) {
            let known = mirrored.remove(node).unwrap_or_default();
            let slices = cpu(|| self.split.lock().expect("split").slices_of(node, program, &plan.peers, &known));
            // The node's daemon reads its slices: its pre-slice program can go.
            let legacy = self.stores.programs.get(&ObjectRef::new(node)).is_some()
                && known
                    .get(&slices::slice_name(node, 0))
                    .is_some_and(|s| s.status.as_ref().is_some_and(|st| st.observed_generation.is_some()));
            // Written as wanted, and nobody else wrote, added or deleted a slice of the node
            // since (a slice deleted by someone else is neither mirrored nor written).
            let settled = self.publisher.wanted(node).is_some_and(|(w, ok)| ok && Arc::ptr_eq(&w, &slices))
                && known
                    .iter()
                    .all(|(name, m)| slices.contains_key(name) && self.publisher.written(name).is_none_or(|w| !newer_than(m, &w)))
                && slices.keys().all(|name| known.contains_key(name) || self.publisher.written(name).is_some());
            if settled && !legacy {
                continue;
            }
            let Some(owner) = self.stores.nodes.get(&ObjectRef::new(node)).and_then(|n| node_owner(&n)) else { continue };
            let source = Held::new(program, &plan.peers);
            waits.push(self.publisher.send(node, Want { source, slices, known, legacy, owner }));
        }
        if only.is_some() || self.fence.check().is_err() {
            return waits;
        }
        let exists = |name: &str| self.stores.nodes.get(&ObjectRef::new(name)).is_some();
        // Nodes that left: those with slices, and those with only a writer (the garbage
        // collector took their slices first).
        let left: BTreeSet<String> = mirrored.keys().cloned().chain(self.publisher.nodes()).filter(|n| !exists(n)).collect();
        for node in &left {
            self.publisher.forget(node);
            self.split.lock().expect("split").forget(node);
            for (name, slice) in mirrored.get(node).into_iter().flatten() {
                if let Err(e) = self.publisher.delete_slice(slice).await {
                    warn!(slice = %name, node, error = %e, "node left, but its slice was not removed");
                }
            }
        }
        let programs: Api<NodeProgram> = Api::all(self.client.clone());
        for p in self.stores.programs.state().iter().filter(|p| !exists(&p.name_any())) {
            delete_gone(&programs, &p.name_any()).await;
        }
        let tables: Api<NodeSidTable> = Api::all(self.client.clone());
        for t in self.stores.tables.state().iter().filter(|t| !exists(&t.name_any())) {
            delete_gone(&tables, &t.name_any()).await;
        }
        waits
    }

    /// Waits (at most [`crate::publisher::WAIT`]) for the writes of a publication; then the
    /// nodes whose program could not be written, with why.
    pub(crate) async fn settled(&self, waits: Waits) -> BTreeMap<String, String> {
        self.publisher.wait(waits).await;
        self.publisher.failures()
    }

    /// How many times the nodes' failures changed so far ([`Publisher::failure_changes`]).
    pub(crate) fn failure_changes(&self) -> u64 {
        self.publisher.failure_changes()
    }

    async fn apply_chain(&self, chain: &ServiceChain) -> Result<Action, Error> {
        self.await_mirror(chain).await;
        let key = world::key_of(chain);
        let (plan, waits, stale, own) = {
            let _one = self.publishing.lock().await;
            let (plan, stale, own) = self.plan_with(chain);
            let nodes: BTreeSet<&str> = plan.chain_nodes.get(&key).into_iter().flatten().map(|n| &**n).collect();
            let waits = self.publish(&plan, Some(&nodes)).await;
            // Only this chain's part is kept while its nodes' writes are waited for: the plan
            // itself is not held up while the next one compiles (unless it is this reconcile's).
            (plan.for_chain(&key), waits, stale, own.then_some(plan))
        };
        let failures = self.settled(waits).await;
        drop(own);
        // A plan older than the world: this chain is looked at again once a newer one is made.
        let done = stale.map_or_else(Action::await_change, Action::requeue);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let reconciled = |outcome: &str| crate::metrics::chain_reconciled(outcome, stale.is_some());
        let Some(status) = world::chain_status(&plan, &failures, chain, now) else {
            reconciled("not_planned");
            return Ok(done);
        };
        if slim::status_is(chain, &status) {
            reconciled("unchanged");
            return Ok(done);
        }
        let (ns, name) = world::key_of(chain);
        let api: Api<ServiceChain> = Api::namespaced(self.client.clone(), &ns);
        self.fenced()?;
        // Conditional on the chain as reconciled: a stale leader's status fails instead of landing.
        let mut body = json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain", "status": status});
        if let Some(rv) = &chain.metadata.resource_version {
            body["metadata"] = json!({"resourceVersion": rv});
        }
        match api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await {
            Ok(_) => {}
            // The chain changed since this reconcile read it: its new version is reconciled anyway.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                debug!(chain = %format!("{ns}/{name}"), "chain changed while reconciling; again shortly");
                reconciled("conflict");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(e) => return Err(e.into()),
        }
        reconciled("status");
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
        Ok(done)
    }

    /// `chain`, with the finalizer added first if it lacks it (and is not being deleted), so
    /// that the same reconcile applies it: the finalizer's write, conditional on the chain as
    /// reconciled, is recorded as seen and does not trigger another ([`Forward`]). None: the
    /// chain changed meanwhile.
    async fn with_finalizer(&self, api: &Api<ServiceChain>, chain: Arc<ServiceChain>) -> Result<Option<Arc<ServiceChain>>, Error> {
        if chain.metadata.deletion_timestamp.is_some() || chain.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Some(chain));
        }
        let finalizers: Vec<&str> = chain.finalizers().iter().map(String::as_str).chain([FINALIZER]).collect();
        let Some(mut written) = self.patch_finalizers(api, &chain, &finalizers).await? else {
            debug!(chain = %format!("{}/{}", chain.namespace().unwrap_or_default(), chain.name_any()), "chain changed before its finalizer was added; again shortly");
            return Ok(None);
        };
        slim::chain(&mut written);
        self.stores.chain_triggers.lock().expect("triggers").note(&written, chain_trigger);
        Ok(Some(Arc::new(written)))
    }

    /// Writes `chain`'s finalizers, conditional on the chain as reconciled (a stale leader's or
    /// a changed chain's write fails); None: the chain changed meanwhile (409).
    async fn patch_finalizers(
        &self,
        api: &Api<ServiceChain>,
        chain: &ServiceChain,
        finalizers: &[&str],
    ) -> Result<Option<ServiceChain>, Error> {
        let mut body = json!({"metadata": {"finalizers": finalizers}});
        if let Some(rv) = &chain.metadata.resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        self.fenced()?;
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.patch(&chain.name_any(), &params, &Patch::Merge(&body)).await {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A chain being deleted: once no node holds it any more ([`Ctx::cleanup_chain`]), its
    /// finalizer goes; until then it stays, and the chain is looked at again.
    async fn finish_deletion(&self, api: &Api<ServiceChain>, chain: &ServiceChain) -> Result<Action, Error> {
        if !chain.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        if let Some(later) = self.cleanup_chain(chain).await? {
            return Ok(later);
        }
        let others: Vec<&str> = chain.finalizers().iter().map(String::as_str).filter(|f| *f != FINALIZER).collect();
        match self.patch_finalizers(api, chain, &others).await {
            Ok(Some(_)) => Ok(Action::await_change()),
            // Changed meanwhile (another finalizer went): looked at again shortly.
            Ok(None) => Ok(Action::requeue(Duration::from_secs(1))),
            // Gone already.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }

    /// A deleted chain: every node that held it gets a program without it. None once that is
    /// done (the finalizer can go); else when to look again.
    async fn cleanup_chain(&self, chain: &ServiceChain) -> Result<Option<Action>, Error> {
        self.await_mirror(chain).await;
        let (ns, name) = world::key_of(chain);
        // The finalizer stays until every node that held the chain has a program without it.
        let key = format!("{ns}/{name}");
        let mut holders: BTreeSet<String> =
            self.stores.slices.state().iter().filter(|s| slim::chains_of(s).contains(&key)).map(|s| s.spec.node.clone()).collect();
        let legacy: BTreeSet<String> =
            self.stores.programs.state().iter().filter(|p| world::tables_hold(&p.spec.tables, &ns, &name)).map(|p| p.name_any()).collect();
        holders.extend(legacy.iter().cloned());
        let (waits, own) = {
            let _one = self.publishing.lock().await;
            // A plan compiled before the deletion still holds the chain: the deletion waits for
            // the next one, compiled within the budget as for any change (compiling one per
            // deleted chain, a mass deletion at 100,000 chains cost seconds of CPU per chain).
            let (plan, stale, own) = self.plan_with(chain);
            if plan.verdicts.contains_key(&(ns.clone(), name.clone())) {
                return Ok(Some(Action::requeue(stale.unwrap_or(HELD))));
            }
            (self.publish(&plan, Some(&holders.iter().map(String::as_str).collect())).await, own.then_some(plan))
        };
        let handed: Waits = waits.clone();
        let failures = self.settled(waits).await;
        drop(own);
        // A node whose other slices failed is done with the chain once no slice of its holds it.
        let holds = |node: &str| legacy.contains(node) || self.publisher.holds(&self.stores.slices, node, &key);
        if let Some((node, e)) = failures.iter().find(|(n, _)| holders.contains(*n) && holds(n)) {
            warn!(chain = %format!("{ns}/{name}"), node, error = %e, "chain deleted, but a node's program is not written yet; retrying");
            return Ok(Some(Action::requeue(Duration::from_secs(5))));
        }
        // A write handed over and still in flight after the wait is not done: its node may
        // still hold the chain.
        if handed.iter().any(|(seq, done)| done.borrow().0 < *seq) {
            info!(chain = %format!("{ns}/{name}"), "chain deleted; waiting for its nodes' programs to be written");
            return Ok(Some(Action::requeue(crate::publisher::WAIT)));
        }
        info!(chain = %format!("{ns}/{name}"), "chain deleted: removed from every node");
        Ok(None)
    }

    /// A node without a (valid) locator gets the lowest free one of the block; a full block is
    /// reported on the node (and in the status of chains waiting for its SIDs).
    async fn reconcile_node(&self, node: &Node) -> Result<Action, Error> {
        let name = node.name_any();
        if matches!(world::node_locator(node), Some(Ok(_))) {
            return Ok(Action::await_change());
        }
        let mut allocated = self.publishing.lock().await;
        let nodes = self.stores.nodes.state();
        // What this operator gave nodes since deleted is free again.
        let present: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        allocated.retain(|n, _| present.contains(n));
        let mut taken = world::taken_locators(&nodes.iter().map(|n| n.as_ref()).collect::<Vec<_>>());
        taken.extend(allocated.iter().filter(|(n, _)| **n != name).map(|(_, l)| *l));
        // A node registered again under its name gets its locator back while its SID table still
        // names it (until the garbage collector takes it): its daemon, which programmed that
        // locator and publishes that table, goes on without a restart.
        let previous = self.stores.tables.get(&ObjectRef::new(&name)).and_then(|t| t.spec.locator.parse::<Locator>().ok()).filter(|l| {
            !taken.contains(l) && l.prefix().prefix_len() == self.config.locator_len && self.config.block.contains(&l.prefix())
        });
        match previous.map_or_else(|| allocate_locator(self.config.block, self.config.locator_len, &taken), Ok) {
            Ok(locator) => {
                let api: Api<Node> = Api::all(self.client.clone());
                // A merge patch, not server-side apply: API servers before 1.22 refuse to apply
                // to a dual-stack Node (its two InternalIP addresses are "duplicate keys" to
                // them). The resourceVersion makes it conditional on the node we looked at.
                let body = json!({
                    "metadata": {"resourceVersion": node.metadata.resource_version, "annotations": {LOCATOR_ANNOTATION: locator.to_string()}},
                });
                self.fenced()?;
                let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                // Bounded: every publication waits for this lock.
                match tokio::time::timeout(crate::publisher::WRITE_TIMEOUT, api.patch(&name, &params, &Patch::Merge(&body))).await {
                    Ok(patched) => drop(patched?),
                    Err(_) => {
                        warn!(node = %name, %locator, "locator not written: no answer within {} s; retrying", crate::publisher::WRITE_TIMEOUT.as_secs());
                        return Ok(Action::requeue(Duration::from_secs(5)));
                    }
                }
                allocated.insert(name.clone(), locator);
                info!(node = %name, %locator, "allocated locator");
            }
            Err(e) => {
                drop(allocated);
                warn!(node = %name, error = %e, "no locator for node");
                let event = Event {
                    type_: EventType::Warning,
                    reason: "LocatorExhausted".into(),
                    note: Some(format!("no locator for node {name}: {e}")),
                    action: "AllocateLocator".into(),
                    secondary: None,
                };
                // Events are namespaced: a cluster-scoped object's go to "default" (the 1.20
                // API server wants the reference's namespace to match).
                let mut reference = node.object_ref(&());
                reference.namespace = Some("default".into());
                if let Err(e) = self.recorder.publish(&event, &reference).await {
                    warn!(node = %name, error = %e, "event not recorded");
                }
            }
        }
        // The planner publishes what a node's change (a locator, a new node) changes.
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

/// Deletes an object of a node that left; a failure is logged (the next publication retries)
/// and delays no other node.
async fn delete_gone<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug>(api: &Api<K>, name: &str) {
    if let Err(e) = crate::publisher::delete(api, name).await {
        warn!(object = name, kind = %K::kind(&()), error = %e, "node left, but its object was not removed");
    }
}

pub async fn reconcile_chain(chain: Arc<ServiceChain>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = crate::metrics::reconcile("chain");
    // The finalizer's own writes come first in `finalizer`: nothing at all once fenced off.
    ctx.fenced()?;
    let ns = chain.namespace().ok_or_else(|| Error::NoNamespace(chain.name_any()))?;
    let api: Api<ServiceChain> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(chain) = ctx.with_finalizer(&api, chain).await? else {
        crate::metrics::chain_reconciled("conflict", false);
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    if chain.metadata.deletion_timestamp.is_some() {
        ctx.finish_deletion(&api, &chain).await
    } else {
        ctx.apply_chain(&chain).await
    }
}

pub async fn reconcile_node(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = crate::metrics::reconcile("node");
    ctx.reconcile_node(&node).await
}

/// Errors retry after a pause; success waits for the next change.
pub fn error_policy<K: ResourceExt>(obj: Arc<K>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(object = %obj.name_any(), error = %error, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// Runs both controllers until SIGTERM/SIGINT, once the mirrors are synced.
pub async fn run(client: Client, config: Config, instance: Option<String>, fence: Fence) -> anyhow::Result<()> {
    let (stores, writers) = Stores::new();
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let c = client.clone();
    let (chain_events, chains_triggered) = futures::channel::mpsc::unbounded();
    let (node_events, nodes_triggered) = futures::channel::mpsc::unbounded();
    let chain_forward =
        Forward { tx: chain_events, only_changed: Some((stores.chain_triggers.clone(), chain_trigger as fn(&ServiceChain) -> String)) };
    let node_forward = Forward { tx: node_events, only_changed: None };
    tokio::spawn(mirror(
        Api::<ServiceChain>::all(c.clone()),
        writers.chains,
        slim::chain,
        relevant::chain,
        tx.clone(),
        Some(chain_forward),
    ));
    tokio::spawn(mirror(Api::<Pod>::all(c.clone()), writers.pods, slim::pod, relevant::pod, tx.clone(), None));
    tokio::spawn(mirror(Api::<Node>::all(c.clone()), writers.nodes, slim::node, relevant::node, tx.clone(), Some(node_forward)));
    tokio::spawn(mirror(Api::<NodeSidTable>::all(c.clone()), writers.tables, slim::table, relevant::table, tx.clone(), None));
    tokio::spawn(mirror(Api::<NodeProgramSlice>::all(c.clone()), writers.slices, slim::slice, relevant::slice, tx.clone(), None));
    tokio::spawn(mirror(Api::<NodeProgram>::all(c.clone()), writers.programs, slim::program, relevant::program, tx.clone(), None));
    // Never compile from a partial view: an empty pod store would unprogram every node.
    stores.chains.wait_until_ready().await?;
    stores.pods.wait_until_ready().await.map_err(anyhow::Error::msg)?;
    stores.nodes.wait_until_ready().await?;
    stores.tables.wait_until_ready().await?;
    stores.slices.wait_until_ready().await?;
    stores.programs.wait_until_ready().await?;
    info!("caches synced; reconciling");
    let ctx = Arc::new(Ctx::new(client.clone(), stores, config, tx, instance, fence));
    // Bounded: a plan that changes thousands of chains' statuses (a start, a node failing) is
    // written RECONCILES at a time, not all at once, which stalled the API server (and the
    // Lease renewals with it) at 10,000 chains.
    let bounded = || kube::runtime::controller::Config::default().concurrency(RECONCILES);
    // Both controllers read the mirrors' stores (one watch and one copy of each kind).
    let chains = Controller::for_stream(chains_triggered, ctx.stores.chains.clone())
        .with_config(bounded())
        .reconcile_on(crate::planner::planner(ctx.clone(), rx.clone()))
        .shutdown_on_signal()
        .run(reconcile_chain, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "chain controller");
            }
        });
    let nodes = Controller::for_stream(nodes_triggered, ctx.stores.nodes.clone())
        .with_config(bounded())
        .reconcile_on(unlocated(ctx.stores.nodes.clone(), rx))
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

/// After each change of the world, the nodes without a valid locator (a node that left may
/// have freed one for them); a node with one has nothing to reconcile. (Every node on every
/// change, as `reconcile_all_on` does, made a million node reconciles in the cold start of
/// 10,000 chains on 1,000 nodes.)
pub fn unlocated(nodes: Store<Node>, version: watch::Receiver<u64>) -> impl Stream<Item = ObjectRef<Node>> + Send + 'static {
    changes(version).flat_map(move |()| {
        let state = nodes.state();
        let waiting = state.iter().filter(|n| !matches!(world::node_locator(n), Some(Ok(_))));
        futures::stream::iter(waiting.map(|n| ObjectRef::from_obj(n.as_ref())).collect::<Vec<_>>())
    })
}

/// Fires once per change of the world version (bursts coalesce into one).
pub fn changes(rx: watch::Receiver<u64>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.changed().await.ok().map(|_| ((), rx)) })
}
#[cfg(test)]
mod tests;
