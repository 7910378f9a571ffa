//! The control plane at cluster scale, simulated (`--only sim`): the release operator against a
//! real API server (scripts/apiserver) that holds `nodes` Nodes, each with `vnfs` VNF pods (in
//! its SID table) and `sources` source pods, and `chains` ServiceChains of three functions
//! whose sources and functions spread over all nodes. There are no daemons: this process
//! registers what kubelets and daemons would (Nodes with locators and addresses, Running pods,
//! SID tables) and reports every slice generation the operator publishes as programmed, as a
//! daemon does once its datapath holds it. What is measured is the operator and the API server:
//! the time from the operator's cold start to every chain Ready, its memory, the writes and
//! etcd size that took, then chain created -> Ready at that size and what one change costs.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use srv6::sid::{proxy_functs, Locator};
use srv6pipes_crds::{NodeProgramSlice, NodeSidTable, ServiceChain, LOCATOR_ANNOTATION};

use crate::control::{operator_writes, ProcessCpu};
use crate::report::latency;
use crate::topo::Bench;

/// Requests in flight while populating the API server.
const IN_FLIGHT: usize = 32;
/// Source pods per source group (a chain selects one group; groups spread over nodes).
const GROUP: usize = 5;
const NS: &str = "default";

#[derive(Clone, Debug)]
pub struct Size {
    pub nodes: usize,
    /// VNF pods per node.
    pub vnfs: usize,
    /// Source pods per node.
    pub sources: usize,
    /// Replicas of each function (on as many different nodes).
    pub replicas: usize,
    pub chains: usize,
    /// Chains created (and deleted) one at a time once the rest are Ready.
    pub samples: usize,
}

impl Size {
    fn functions(&self) -> usize {
        (self.nodes * self.vnfs / self.replicas).max(1)
    }
    fn groups(&self) -> usize {
        (self.nodes * self.sources / GROUP).max(1)
    }
    /// The function of VNF pod `slot` on node `node`: replicas of one function sit
    /// `nodes / replicas` nodes apart.
    fn function_of(&self, node: usize, slot: usize) -> usize {
        (node * self.vnfs + slot) % self.functions()
    }
    fn group_of(&self, node: usize, slot: usize) -> usize {
        (node * self.sources + slot) % self.groups()
    }
    /// Chain `c`: its source group and three distinct functions.
    fn chain_parts(&self, c: usize) -> (usize, [usize; 3]) {
        let f = self.functions();
        (c % self.groups(), [c % f, (c + f / 3 + 1) % f, (c + 2 * f / 3 + 2) % f])
    }
}

pub(crate) fn node_name(i: usize) -> String {
    format!("sim-n{i:04}")
}

fn locator(i: usize) -> Locator {
    Locator::nth_in_block("fcbb:bb00::/32".parse().expect("block"), 48, i as u64).expect("locator in the block")
}

pub(crate) fn chain(name: &str, c: usize, size: &Size) -> anyhow::Result<ServiceChain> {
    let (group, functions) = size.chain_parts(c);
    let f: Vec<_> = functions
        .iter()
        .enumerate()
        .map(|(k, f)| json!({"name": format!("h{k}"), "podSelector": {"matchLabels": {"fn": format!("f{f}")}}, "proxy": "Dynamic"}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "sources": {"podSelector": {"matchLabels": {"group": format!("g{group}")}}},
            "match": {"destinationPrefixes": [format!("fd00:d:{:x}:{:x}::/64", c >> 16, c & 0xffff)]},
            "functions": f,
        },
    }))?)
}

/// Runs `f` over `0..n` with [`IN_FLIGHT`] requests at a time.
async fn each<F, Fut>(what: &str, n: usize, f: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    futures::stream::iter((0..n).map(anyhow::Ok)).try_for_each_concurrent(IN_FLIGHT, f).await.with_context(|| format!("create {what}"))?;
    let s = start.elapsed().as_secs_f64();
    eprintln!("  sim: {n} {what} in {s:.0} s");
    Ok(s)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Node `i` as a kubelet registers it (with the locator the operator would give it), and its
/// status.
pub(crate) fn node(i: usize) -> (serde_json::Value, serde_json::Value) {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(i), "annotations": {LOCATOR_ANNOTATION: locator(i).to_string()}},
        "spec": {"podCIDRs": [format!("fd00:6:{i:x}::/64")]},
    });
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": format!("fd00:5::{:x}", i + 1)}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Simulated", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
    }});
    (node, status)
}

/// Node `i`'s SID table as its daemon publishes it: one proxy SID per VNF pod.
pub(crate) fn sid_table(i: usize, vnfs: usize) -> serde_json::Value {
    let loc = locator(i);
    let registrations: Vec<_> = proxy_functs()
        .take(vnfs)
        .enumerate()
        .map(|(s, funct)| json!({"podNamespace": NS, "podName": format!("vnf-{i:04}-{s}"), "interface": "net1", "sid": loc.sid(funct).to_string()}))
        .collect();
    json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeSidTable",
        "metadata": {"name": node_name(i)},
        "spec": {"locator": loc.to_string(), "sourceAddress": loc.source_address().to_string(), "decapSid": loc.decap_sid().to_string(),
                 "vnfMtu": 1400, "registrations": registrations},
    })
}

/// Pod `p` (node `p / per node`): its VNF pods first, then its source pods; and its status as
/// a kubelet reports it (Running, Ready, an address in the node's pod CIDR).
pub(crate) fn pod(size: &Size, p: usize) -> (serde_json::Value, serde_json::Value) {
    let per_node = size.vnfs + size.sources;
    let (i, slot) = (p / per_node, p % per_node);
    let (name, labels) = if slot < size.vnfs {
        (format!("vnf-{i:04}-{slot}"), json!({"fn": format!("f{}", size.function_of(i, slot))}))
    } else {
        let s = slot - size.vnfs;
        (format!("src-{i:04}-{s:02}"), json!({"group": format!("g{}", size.group_of(i, s))}))
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node_name(i), "automountServiceAccountToken": false, "containers": [{"name": "main", "image": "none"}]},
    });
    let ip = format!("fd00:6:{i:x}::{:x}", slot + 2);
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}],
    }});
    (pod, status)
}

/// Creates `obj`, then merge-patches `status` onto it when given (a create ignores status).
async fn create<K>(api: &Api<K>, obj: serde_json::Value, status: Option<serde_json::Value>) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let created = api.create(&PostParams::default(), &serde_json::from_value(obj)?).await?;
    if let Some(status) = status {
        api.patch_status(&created.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
    }
    Ok(())
}

/// Registers what kubelets and daemons would: Nodes (locator, underlay address, pod CIDR),
/// their SID tables, VNF and source pods Running and Ready; then the chains. Seconds per kind.
async fn populate(client: &Client, size: &Size) -> anyhow::Result<serde_json::Value> {
    let nodes: Api<Node> = Api::all(client.clone());
    let tables: Api<NodeSidTable> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let chains: Api<ServiceChain> = Api::namespaced(client.clone(), NS);
    let (n, vnfs) = (size.nodes, size.vnfs);
    let node_s = each("nodes", n, |i| {
        let (obj, status) = node(i);
        create(&nodes, obj, Some(status))
    })
    .await?;
    let table_s = each("SID tables", n, |i| create(&tables, sid_table(i, vnfs), None)).await?;
    let pod_s = each("pods", n * (vnfs + size.sources), |p| {
        let (obj, status) = pod(size, p);
        create(&pods, obj, Some(status))
    })
    .await?;
    let chain_s = each("chains", size.chains, |c| {
        let chains = chains.clone();
        async move { create(&chains, serde_json::to_value(chain(&format!("c{c:06}"), c, size)?)?, None).await }
    })
    .await?;
    Ok(json!({"nodes": node_s, "sid_tables": table_s, "pods": pod_s, "chains": chain_s}))
}

/// Stands in for every node's daemon: reports each slice generation programmed.
async fn daemons(client: Client) {
    let api: Api<NodeProgramSlice> = Api::all(client);
    let events = watcher(api.clone(), watcher::Config::default()).default_backoff().applied_objects();
    events
        .for_each_concurrent(8, |s| {
            let api = api.clone();
            async move {
                let Ok(s) = s else { return };
                let generation = s.metadata.generation;
                if s.status.as_ref().is_some_and(|st| st.observed_generation == generation) {
                    return;
                }
                let condition = Condition {
                    type_: "Programmed".into(),
                    status: "True".into(),
                    reason: "Programmed".into(),
                    message: format!("generation {} is in the datapath", generation.unwrap_or_default()),
                    last_transition_time: now(),
                    observed_generation: generation,
                };
                let status = json!({"status": {"observedGeneration": generation, "conditions": [condition]}});
                if let Err(e) = api.patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await {
                    eprintln!("  sim: report on slice {}: {e}", s.name_any());
                }
            }
        })
        .await;
}

/// Which chains are Ready, kept by a watch.
#[derive(Clone, Default)]
struct Readiness(Arc<Mutex<HashMap<String, bool>>>);

impl Readiness {
    async fn follow(self, client: Client) {
        let api: Api<ServiceChain> = Api::namespaced(client, NS);
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(e) = events.next().await {
            let ready = |c: &ServiceChain| {
                c.status.as_ref().is_some_and(|s| {
                    s.observed_generation == c.metadata.generation && s.conditions.iter().any(|x| x.type_ == "Ready" && x.status == "True")
                })
            };
            let mut map = self.0.lock().expect("lock");
            match e {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    map.insert(c.name_any(), ready(&c));
                }
                Ok(watcher::Event::Delete(c)) => {
                    map.remove(&c.name_any());
                }
                _ => {}
            }
        }
    }
    fn count(&self) -> usize {
        self.0.lock().expect("lock").values().filter(|r| **r).count()
    }
    fn is_ready(&self, name: &str) -> Option<bool> {
        self.0.lock().expect("lock").get(name).copied()
    }
}

/// Resident and peak memory of process `pid`, MiB (/proc/PID/status).
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| -> anyhow::Result<f64> {
        let line = status.lines().find(|l| l.starts_with(k)).with_context(|| format!("{k} in /proc/{pid}/status"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse::<f64>()? / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Where the simulated operator serves its metrics.
const OPERATOR_METRICS: &str = "127.0.0.1:19890";

/// The operator's heap in use, MiB: its `srv6pipes_operator_heap_bytes` metric (what its RSS
/// holds besides is free memory malloc keeps, code, stacks).
fn operator_heap_mib() -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let addr = OPERATOR_METRICS.parse()?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).context("the operator's metrics")?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let line =
        text.lines().find(|l| l.starts_with("srv6pipes_operator_heap_bytes ")).context("srv6pipes_operator_heap_bytes in /metrics")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse::<f64>()? / (1 << 20) as f64)
}

fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(f64::NAN)
}

/// Waits (polling every `every`) until `f` holds; `what` names it in the error.
async fn until(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f()? {
        if Instant::now() > deadline {
            bail!("sim: {what} within {timeout:?}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// A throwaway API server (scripts/apiserver, torn down by the bench's cleanup) with the
/// CRDs established; its kubeconfig.
fn api_server(b: &mut Bench, api: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut down = Command::new("scripts/apiserver");
    down.arg("down").arg(api);
    b.cleanup.command(down);
    crate::sys::run(Command::new("scripts/apiserver").arg("up").arg(api))?;
    let kubeconfig = api.join("kubeconfig");
    let kubectl = |args: &[&str]| {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &kubeconfig).args(args);
        crate::sys::run(&mut c)
    };
    kubectl(&["apply", "-f", srv6pipes_crds::CRD_FILE])?;
    kubectl(&["wait", "--for", "condition=established", "crd", "--all", "--timeout=60s"])?;
    Ok(kubeconfig)
}

/// Seconds until every chain is Ready, with progress every 30 s, and the heap's peak over that
/// time (MiB); fails if the operator exits.
async fn converge(pid: u32, readiness: &Readiness, chains: usize) -> anyhow::Result<(f64, f64)> {
    let (start, mut last_report) = (Instant::now(), Instant::now());
    // When the peaks (VmHWM and the heap, looked at every second) last rose: a spike between
    // two reports, and whether it was live objects or pages the allocator had not returned.
    let (mut peak, mut heap_peak) = ((0.0, 0.0), (0.0, 0.0));
    until("every chain Ready", Duration::from_secs(3600), Duration::from_secs(1), || {
        let (rss, hwm) = memory_mib(pid).context("the operator exited")?;
        let heap = operator_heap_mib();
        let at = start.elapsed().as_secs_f64();
        if hwm > peak.0 {
            peak = (hwm, at);
        }
        if let Some(h) = heap.as_ref().ok().filter(|h| **h > heap_peak.0) {
            heap_peak = (*h, at);
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            let heap = heap.map_or_else(|e| format!("unknown ({e})"), |h| format!("{h:.0} MiB"));
            eprintln!(
                "  sim: {at:.0} s: {} chains Ready, operator RSS {rss:.0} MiB, heap {heap}, peaks: RSS {:.0} MiB (by {:.0} s), heap {:.0} MiB (by {:.0} s)",
                readiness.count(),
                peak.0,
                peak.1,
                heap_peak.0,
                heap_peak.1
            );
            last_report = Instant::now();
        }
        Ok(readiness.count() == chains)
    })
    .await?;
    Ok((start.elapsed().as_secs_f64(), heap_peak.0))
}

pub fn run(b: &mut Bench, size: &Size) -> anyhow::Result<serde_json::Value> {
    let dir = b.dir.join("sim");
    std::fs::create_dir_all(&dir)?;
    let api = dir.join("api");
    let kubeconfig = api_server(b, &api)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let client = Client::try_from(config)?;
        eprintln!(
            "sim: {} nodes x ({} VNF + {} source pods), {} chains of 3 functions ({} functions x {} replicas)",
            size.nodes,
            size.vnfs,
            size.sources,
            size.chains,
            size.functions(),
            size.replicas
        );
        let populate_s = populate(&client, size).await?;
        tokio::spawn(daemons(client.clone()));
        let readiness = Readiness::default();
        tokio::spawn(readiness.clone().follow(client.clone()));
        let writes0 = operator_writes(&kubeconfig)?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let operator = Command::new(b.bin_dir.join("srv6pipes-operator"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--lease-namespace", NS, "--health-addr", OPERATOR_METRICS])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start srv6pipes-operator")?;
        let pid = operator.id();
        b.cleanup.child(operator);
        let log_tail = || {
            let log = std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!("the operator's last log lines:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
        };
        let (converge_s, heap_peak) = converge(pid, &readiness, size.chains).await.with_context(log_tail)?;
        let converge_writes = operator_writes(&kubeconfig)? - writes0;
        let ((rss, hwm), heap) = (memory_mib(pid)?, operator_heap_mib()?);
        eprintln!(
            "sim: every chain Ready {converge_s:.0} s after the operator started; {converge_writes} writes; RSS {rss:.0} MiB (peak {hwm:.0}), heap {heap:.0} MiB"
        );
        let (ready_ms, writes, cpu_ms) = changes(&kubeconfig, &client, &readiness, size, pid).await.with_context(log_tail)?;
        let ((rss_after, hwm_after), heap_after) = (memory_mib(pid)?, operator_heap_mib()?);
        Ok(json!({
            "size": {"nodes": size.nodes, "vnf_pods_per_node": size.vnfs, "source_pods_per_node": size.sources,
                     "functions": size.functions(), "replicas": size.replicas, "chains": size.chains, "functions_per_chain": 3,
                     "source_pods_per_chain": GROUP},
            "populate_s": populate_s,
            "converge_s": converge_s,
            "converge_writes": converge_writes,
            "operator_rss_mib": {"converged": rss, "after_changes": rss_after, "peak": hwm.max(hwm_after)},
            "operator_heap_mib": {"converged": heap, "after_changes": heap_after, "peak_cold_start": heap_peak},
            "etcd_db_mib": file_mib(&api.join("etcd/member/snap/db")),
            "chain_ready_ms": latency(&ready_ms),
            "writes_per_change": crate::stats::summarize(&writes),
            "cpu_ms_per_change": crate::stats::summarize(&cpu_ms),
            "how": "cold start: the operator starts with every object present; converged when every chain is Ready (this process reports each slice generation programmed, as the daemons would). Then chains created one at a time: created -> Ready; per change (created, then deleted) the operator's API writes and CPU time until it wrote nothing for 2 s. RSS from /proc/PID/status, heap from the operator's srv6pipes_operator_heap_bytes metric (its cold-start peak looked at every second), etcd size its db file.",
        }))
    })
}

/// `size.samples` chains created one at a time (each -> Ready) and deleted: created -> Ready
/// ms, and per change (create, delete) the operator's writes and CPU until it is quiet for 2 s.
async fn changes(
    kubeconfig: &Path,
    client: &Client,
    readiness: &Readiness,
    size: &Size,
    pid: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let api: Api<ServiceChain> = Api::namespaced(client.clone(), NS);
    let cpu = ProcessCpu::default();
    let (mut ready_ms, mut writes, mut cpu_ms) = (Vec::new(), Vec::new(), Vec::new());
    let quiet = || async {
        let mut last = (operator_writes(kubeconfig)?, Instant::now());
        while last.1.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = operator_writes(kubeconfig)?;
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        anyhow::Ok(())
    };
    quiet().await?;
    for i in 0..size.samples {
        // Chain numbers past the background ones: their own prefixes, sources and functions
        // spread as theirs are.
        let name = format!("probe-{i}");
        let (w, c) = (operator_writes(kubeconfig)?, cpu.ms(pid)?);
        let start = Instant::now();
        api.create(&PostParams::default(), &chain(&name, size.chains + i, size)?).await?;
        until(&format!("{name} Ready"), Duration::from_secs(300), Duration::from_millis(5), || Ok(readiness.is_ready(&name) == Some(true)))
            .await?;
        ready_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        quiet().await?;
        writes.push((operator_writes(kubeconfig)? - w) as f64);
        cpu_ms.push(cpu.ms(pid)? - c);
        let (w, c) = (operator_writes(kubeconfig)?, cpu.ms(pid)?);
        api.delete(&name, &Default::default()).await?;
        until(&format!("{name} gone"), Duration::from_secs(300), Duration::from_millis(5), || Ok(readiness.is_ready(&name).is_none()))
            .await?;
        quiet().await?;
        writes.push((operator_writes(kubeconfig)? - w) as f64);
        cpu_ms.push(cpu.ms(pid)? - c);
        eprintln!(
            "  sim: {name} Ready in {:.0} ms; create + delete: {:?} writes, {:.0} + {:.0} ms operator CPU",
            ready_ms[i],
            &writes[2 * i..],
            cpu_ms[2 * i],
            cpu_ms[2 * i + 1]
        );
    }
    Ok((ready_ms, writes, cpu_ms))
}
