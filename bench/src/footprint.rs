//! The operator's memory at cluster scale without an API server (`--only footprint`): the
//! scale simulation's world (`sim.rs`: nodes, SID tables, VNF and source pods, chains of three
//! functions) handed to the operator's own code as its watches would (slimmed into its
//! stores), then compiled, split into slices and mirrored back as the API server would return
//! them. The heap in use (the operator's allocator's count, after a purge) is read after each stage, so each
//! part of what the operator keeps has its own figure; then one chain is added and compiled
//! as the operator does: the previous plan handed to the compiling planner, which moves what
//! did not change into the next (the chain planner keeps only its round's digests, the split
//! cache holds programs weakly), for the peak. The allocator counts the
//! bytes in use, so the high-water mark within a stage (a compilation's own transient) is
//! measured too.
//!
//! This is what `--only sim` cannot measure on this machine at 100,000 chains (the API server
//! alone took 13 GiB there), and what it measures in minutes instead of an hour.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::watcher::Event;
use serde_json::json;
use srv6::plan::Planner;
use srv6pipes_crds::{NodeProgramSlice, NodeProgramStatus, NodeSidTable, ServiceChain, NODE_LABEL};
use srv6pipes_operator::controller::{Stores, Writers, FINALIZER};
use srv6pipes_operator::planner::Round;
use srv6pipes_operator::publisher::Slices;
use srv6pipes_operator::split::SliceCache;
use srv6pipes_operator::{slim, world};

use crate::sim::{self, Size};

/// The operator's allocator (jemalloc, with its options), counting the bytes in use and their
/// high-water mark (which the allocator's own counters do not keep). Two relaxed atomic
/// operations per allocation.
struct Counting;

const JEMALLOC: srv6pipes_operator::memory::Allocator = tikv_jemallocator::Jemalloc;

/// jemalloc's options, as the operator's (`srv6pipes_operator::memory::MALLOC_CONF`).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: srv6pipes_operator::memory::Conf = srv6pipes_operator::memory::CONF;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    HIGH.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call goes to the operator's allocator unchanged; only counters are kept beside.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { JEMALLOC.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { JEMALLOC.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { JEMALLOC.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { JEMALLOC.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes in use now; the high-water mark starts again from here.
fn live_and_reset_high() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    HIGH.store(live, Ordering::Relaxed);
    live
}

/// Heap bytes in use (every arena, and mmapped blocks), after giving free memory back.
fn heap() -> u64 {
    srv6pipes_operator::memory::release();
    srv6pipes_operator::memory::heap_bytes().unwrap_or(0)
}

/// This process's resident memory, MiB (/proc/self/status VmRSS), after giving free memory
/// back: what the heap in use costs the node, the allocator's fragmentation included.
fn rss_mib() -> f64 {
    srv6pipes_operator::memory::release();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    kib.map_or(0.0, |k| (k / 1024.0).round())
}

fn mib(bytes: i64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

/// The fields an API server sets on what it stores.
fn served(mut v: serde_json::Value, i: usize) -> serde_json::Value {
    let m = &mut v["metadata"];
    m["uid"] = json!(format!("{:08x}-0000-4000-8000-{:012x}", i, i));
    m["resourceVersion"] = json!(format!("{}", 1_000_000 + i));
    m["creationTimestamp"] = json!("2026-12-02T00:00:00Z");
    m["generation"] = json!(1);
    v
}

/// `obj` with `status` merged in, as a watch brings it.
fn with_status(mut obj: serde_json::Value, status: serde_json::Value) -> serde_json::Value {
    obj["status"] = status["status"].clone();
    obj
}

/// Heap deltas by stage, in order.
#[derive(Default)]
struct Stages {
    last: u64,
    mib: Vec<(String, f64)>,
}

impl Stages {
    fn start() -> Self {
        Stages { last: heap(), mib: Vec::new() }
    }

    fn lap(&mut self, what: &str) {
        let now = heap();
        let d = mib(now as i64 - self.last as i64);
        eprintln!("  footprint: {what:<28} {d:>9.1} MiB");
        self.mib.push((what.to_string(), d));
        self.last = now;
    }
}

/// The chain controller's status for `c` in `plan`, on the chain as the watch brings it back
/// (slim).
fn with_plan_status(plan: &world::Plan, c: &ServiceChain) -> ServiceChain {
    let mut c = c.clone();
    c.status = world::chain_status(plan, &BTreeMap::new(), &c, Time(k8s_openapi::jiff::Timestamp::now()));
    slim::chain(&mut c);
    c
}

/// A slice as the API server returns it once written and reported on by its daemon.
fn served_slice(name: &str, spec: &srv6pipes_crds::NodeProgramSliceSpec, i: usize) -> anyhow::Result<NodeProgramSlice> {
    let mut s: NodeProgramSlice = serde_json::from_value(served(
        json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
               "metadata": {"name": name, "labels": {NODE_LABEL: spec.node},
                            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": spec.node, "uid": "00000000-0000-4000-8000-000000000000"}]},
               "spec": spec}),
        i,
    ))?;
    let condition = Condition {
        type_: "Programmed".into(),
        status: "True".into(),
        reason: "Programmed".into(),
        message: "generation 1 is in the datapath".into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: Some(1),
    };
    s.status = Some(NodeProgramStatus { observed_generation: Some(1), conditions: vec![condition] });
    slim::slice(&mut s);
    Ok(s)
}

/// The heap each part of a plan holds, measured by cloning it (a clone shares what the plan
/// shares: the segment lists of a chain's rules count in the `plan` stage, not here).
fn plan_parts(plan: &world::Plan) -> serde_json::Value {
    let size = |f: &dyn Fn() -> Box<dyn std::any::Any>| {
        let before = heap();
        let copy = f();
        let bytes = heap() as i64 - before as i64;
        drop(copy);
        mib(bytes)
    };
    let tables = size(&|| Box::new(plan.programs.values().map(|p| p.tables.clone()).collect::<Vec<_>>()));
    let peers = size(&|| Box::new((*plan.peers).clone()));
    let verdicts = size(&|| Box::new(plan.verdicts.clone()));
    let chain_nodes = size(&|| Box::new(plan.chain_nodes.clone()));
    eprintln!("  footprint: plan: tables {tables} MiB, peers {peers} MiB, verdicts {verdicts} MiB, chain nodes {chain_nodes} MiB");
    json!({"tables": tables, "peers": peers, "verdicts": verdicts, "chain_nodes": chain_nodes})
}

/// The scale simulation's nodes, SID tables, pods and chains, slimmed into the operator's
/// stores as its watches would put them, a heap lap each.
fn populate(size: &Size, w: &mut Writers, st: &mut Stages) -> anyhow::Result<()> {
    for i in 0..size.nodes {
        let (obj, status) = sim::node(i);
        let mut n: Node = serde_json::from_value(served(with_status(obj, status), i))?;
        slim::node(&mut n);
        w.nodes.apply_watcher_event(&Event::Apply(n));
        let mut t: NodeSidTable = serde_json::from_value(served(sim::sid_table(i, size.vnfs), i))?;
        slim::table(&mut t);
        w.tables.apply_watcher_event(&Event::Apply(t));
    }
    st.lap("nodes and SID tables");
    for p in 0..size.nodes * (size.vnfs + size.sources) {
        let (obj, status) = sim::pod(size, p);
        let mut pod: Pod = serde_json::from_value(served(with_status(obj, status), p))?;
        slim::pod(&mut pod);
        w.pods.apply_watcher_event(&Event::Apply(pod));
    }
    st.lap("pods");
    for c in 0..size.chains {
        w.chains.apply_watcher_event(&Event::Apply(sim_chain(size, c)?));
    }
    st.lap("chains");
    Ok(())
}

/// The scale simulation's `c`-th chain as the operator's watch has it (slimmed, with its
/// finalizer).
fn sim_chain(size: &Size, c: usize) -> anyhow::Result<ServiceChain> {
    let mut v = served(serde_json::to_value(sim::chain(&format!("c{c:06}"), c, size)?)?, c);
    v["metadata"]["finalizers"] = json!([FINALIZER]);
    let mut chain: ServiceChain = serde_json::from_value(v)?;
    slim::chain(&mut chain);
    Ok(chain)
}

/// The mirror's copy of every slice, and the publisher's record of its own write, from the
/// specs as written (rendered one node at a time, as the writers do): the records, and each
/// spec's size in bytes.
fn mirror(
    peers: &[srv6::node_api::Peer],
    sliced: Vec<(&String, &Arc<srv6::node_api::NodeProgram>, Arc<Slices>)>,
    w: &mut Writers,
) -> anyhow::Result<(Vec<Arc<NodeProgramSlice>>, Vec<usize>)> {
    let mut written = Vec::new();
    let mut slice_bytes = Vec::new();
    for (node, program, slices) in sliced {
        let renderer = srv6::slices::Renderer::new(node, program, peers);
        for (name, slice) in slices.iter() {
            let spec = renderer.spec(&slice.shape);
            slice_bytes.push(serde_json::to_vec(&spec).map_or(0, |b| b.len()));
            let i = written.len();
            w.slices.apply_watcher_event(&Event::Apply(served_slice(name, &spec, i)?));
            written.push(Arc::new(served_slice(name, &spec, i)?));
        }
    }
    Ok((written, slice_bytes))
}

pub fn run(size: &Size) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let (base, rss_base) = (heap(), rss_mib());
    let mut st = Stages::start();
    let (stores, mut w) = Stores::new();
    populate(size, &mut w, &mut st)?;
    let chain = |c: usize| sim_chain(size, c);

    let live_before = live_and_reset_high();
    let t = Instant::now();
    let mut planner = Planner::default();
    let plan = Arc::new(stores.replan(&mut planner, None));
    let compile_s = t.elapsed().as_secs_f64();
    let first_high = HIGH.load(Ordering::Relaxed) - live_before;
    st.lap("plan");
    let parts = plan_parts(&plan);
    for c in stores.chains.state() {
        w.chains.apply_watcher_event(&Event::Apply(with_plan_status(&plan, &c)));
    }
    st.lap("chain statuses");
    let ready =
        stores.chains.state().iter().filter(|c| world::ready_condition(c.status.as_ref()).is_some_and(|r| r.status == "True")).count();

    let mut cache = SliceCache::default();
    let t = Instant::now();
    let mut sliced = Vec::new();
    for (node, program) in &plan.programs {
        sliced.push((node, program, cache.slices_of(node, program, &plan.peers, &BTreeMap::new())));
    }
    let split_s = t.elapsed().as_secs_f64();
    st.lap("slices (split cache)");
    let (written, slice_bytes) = mirror(&plan.peers, sliced, &mut w)?;
    let slice_count = written.len();
    st.lap("slice mirrors and writes");
    let steady = heap() as i64 - base as i64;
    let rss_steady = rss_mib() - rss_base;

    // One more chain, compiled as the operator does: what the planner keeps of the round
    // (digests), the previous plan handed to the compiling planner (the operator's cache gives
    // it up; the split cache holds programs weakly), which moves what did not change into the
    // new plan; the new plan split.
    let round = Round::of(&plan, BTreeMap::new(), 0);
    st.lap("the round's digests");
    w.chains.apply_watcher_event(&Event::Apply(chain(size.chains)?));
    let held = heap() as i64 - base as i64;
    let plan = Arc::try_unwrap(plan).map_err(|_| anyhow::anyhow!("the first plan is held elsewhere"))?;
    let live_before = live_and_reset_high();
    let t = Instant::now();
    let next = Arc::new(stores.replan(&mut planner, Some(plan)));
    let recompile_s = t.elapsed().as_secs_f64();
    let second_high = HIGH.load(Ordering::Relaxed) - live_before;
    st.lap("second plan");
    for (node, program) in &next.programs {
        let known = BTreeMap::new();
        cache.slices_of(node, program, &next.peers, &known);
    }
    st.lap("second split");
    // The peak: what was held before the compilation, and the most that it and the split
    // added at any moment (counted, so without malloc's per-block overhead).
    let peak = held + (HIGH.load(Ordering::Relaxed) - live_before) as i64;
    let after = heap() as i64 - base as i64;
    let rss_after = rss_mib() - rss_base;

    eprintln!(
        "  footprint: {} nodes, {} pods, {} chains ({ready} Ready), {slice_count} slices: steady {:.0} MiB, peak {:.0} MiB, after a change {:.0} MiB (resident: {rss_steady:.0} and {rss_after:.0} MiB)",
        size.nodes,
        stores.pods.len(),
        stores.chains.state().len(),
        mib(steady),
        mib(peak),
        mib(after)
    );
    let _keep = (&stores, &written, &round);
    let change_ms = change_cpu(&stores, &mut w, &mut planner, &mut cache, next, &|c| chain(size.chains + c))?;
    Ok(json!({
        "size": {"nodes": size.nodes, "vnf_pods_per_node": size.vnfs, "source_pods_per_node": size.sources,
                 "replicas": size.replicas, "chains": size.chains},
        "ready_chains": ready,
        "slices": slice_count,
        "slice_bytes_max": slice_bytes.iter().max(),
        "plan_mib_by_part": parts,
        "heap_mib_by_stage": st.mib.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "heap_mib": {"steady": mib(steady), "peak": mib(peak), "after_change": mib(after)},
        "rss_mib": {"steady": rss_steady, "after_change": rss_after},
        "compile_high_water_mib": {"first": mib(first_high as i64), "second": mib(second_high as i64)},
        "seconds": {"compile": compile_s, "split": split_s, "recompile": recompile_s, "total": started.elapsed().as_secs_f64()},
        "change_ms": change_ms,
        "how": "the scale simulation's objects slimmed into the operator's stores as its watches would, compiled (controller::Stores::replan, from scratch), chain statuses set, every node's program split (split::SliceCache) and each slice mirrored twice (the watch's copy and the publisher's record of its write); heap in use by the operator's allocator's count (jemalloc, with the operator's options: stats.allocated after a purge), per stage; rss_mib: VmRSS after a purge, less the process's before the first stage; the peak is the heap held when a change's compilation starts (the previous plan handed to the planner, which moves what did not change into the next, as the operator does) plus the most the compilation and the split added at any moment, as a counting allocator saw it; compile_high_water_mib: the most each compilation added at any moment",
    }))
}

/// Chains added one at a time in [`change_cpu`].
const CHANGES: usize = 15;

/// The operator's work per change, by stage (median ms over [`CHANGES`] chains added one at a
/// time, `chain(i)` the i-th): the round's digests of the plan before, the plan, every node's
/// split, and each slice whose digest changed rendered as its writer does (a renderer of the
/// node's program per slice written).
fn change_cpu(
    stores: &Stores,
    w: &mut Writers,
    planner: &mut Planner<world::Version>,
    cache: &mut SliceCache,
    mut plan: Arc<world::Plan>,
    chain: &dyn Fn(usize) -> anyhow::Result<ServiceChain>,
) -> anyhow::Result<serde_json::Value> {
    let mut ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut timed = |stage, t: Instant| ms.entry(stage).or_default().push(t.elapsed().as_secs_f64() * 1000.0);
    // The slices of the plan given (already split: the cache's own).
    let mut last: BTreeMap<String, Arc<Slices>> =
        plan.programs.iter().map(|(node, program)| (node.clone(), cache.slices_of(node, program, &plan.peers, &BTreeMap::new()))).collect();
    for i in 0..CHANGES {
        let t = Instant::now();
        let round = Round::of(&plan, BTreeMap::new(), 0);
        timed("round", t);
        drop(round);
        w.chains.apply_watcher_event(&Event::Apply(chain(i)?));
        let before = Arc::try_unwrap(plan).map_err(|_| anyhow::anyhow!("the plan is held elsewhere"))?;
        let t = Instant::now();
        plan = Arc::new(stores.replan(planner, Some(before)));
        timed("plan", t);
        let t = Instant::now();
        let split: Vec<_> = plan
            .programs
            .iter()
            .map(|(node, program)| (node, program, cache.slices_of(node, program, &plan.peers, &BTreeMap::new())))
            .collect();
        timed("split", t);
        let t = Instant::now();
        for (node, program, slices) in &split {
            let before = last.get(*node);
            for (name, slice) in slices.iter().filter(|(n, s)| before.and_then(|b| b.get(*n)).is_none_or(|b| b.digest != s.digest)) {
                let spec = srv6::slices::Renderer::new(node, program, &plan.peers).spec(&slice.shape);
                std::hint::black_box((name, spec));
            }
        }
        timed("render", t);
        last = split.into_iter().map(|(node, _, slices)| (node.clone(), slices)).collect();
    }
    Ok(ms.into_iter().map(|(stage, xs)| (stage.to_string(), json!(crate::stats::median(&xs)))).collect::<serde_json::Map<_, _>>().into())
}
