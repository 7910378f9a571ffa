//! What `srv6pipes status|chains|sids|stats|trace` show, from one [`View`] whether it was read
//! from a lab (its state and its daemons' sockets) or from a cluster (its API server and its
//! node daemons through it): the same documents, text and JSON in both places. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};
use srv6::node_api::NodeStats;
use srv6::sid::{Locator, Sid};
use srv6pipes_crds::ServiceChain;

/// A node as the views need it.
pub struct ViewNode {
    pub name: String,
    pub locator: Locator,
    /// Its VNF interfaces' proxy SIDs (`NodeSidTable.spec.registrations`).
    pub registrations: Vec<Registration>,
}

pub struct Registration {
    /// `namespace/name`.
    pub pod: String,
    pub interface: String,
    pub sid: Sid,
}

pub struct ViewPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Default)]
pub struct View {
    pub nodes: Vec<ViewNode>,
    pub pods: Vec<ViewPod>,
    pub chains: Vec<ServiceChain>,
    /// Live counters, per node that answered.
    pub stats: BTreeMap<String, NodeStats>,
    /// Nodes whose counters could not be read, and why.
    pub unreachable: BTreeMap<String, String>,
}

/// `srv6pipes chains`, `status`, `sids`, `stats -o FORMAT`.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Output {
    Text,
    /// Text with more columns (chains: the raw segment lists).
    Wide,
    Json,
    Yaml,
}

/// `doc` as JSON or YAML; None for the text formats (the caller renders those).
pub fn structured(doc: &Value, output: Output) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(serde_json::to_string_pretty(doc)? + "\n"),
        Output::Yaml => Some(serde_saphyr::to_string(doc)?),
        Output::Text | Output::Wide => None,
    })
}

pub fn chain_key(c: &ServiceChain) -> String {
    format!("{}/{}", c.metadata.namespace.as_deref().unwrap_or("default"), c.metadata.name.as_deref().unwrap_or_default())
}

/// One chain's Ready condition for its current generation: (status, reason, message), or None
/// while the operator has not reported on this generation.
pub fn ready(c: &ServiceChain) -> Option<(bool, String, String)> {
    let status = c.status.as_ref()?;
    if status.observed_generation.is_some() && c.metadata.generation.is_some() && status.observed_generation != c.metadata.generation {
        return None;
    }
    status.conditions.iter().find(|x| x.type_ == "Ready").map(|x| (x.status == "True", x.reason.clone(), x.message.clone()))
}

/// `srv6pipes chains`: the table `kubectl get servicechains -A` would print, plus segments when wide.
pub fn chains_text(chains: &[ServiceChain], wide: bool) -> String {
    let mut out = format!("{:<31} {:<6} {:<14} {:<24} {:>5}  {:<14}", "CHAIN", "READY", "REASON", "FUNCTIONS", "PATHS", "DEGRADED");
    out.push_str(if wide { "  SEGMENTS\n" } else { "\n" });
    for c in chains {
        let status = c.status.clone().unwrap_or_default();
        let cond = |t: &str| status.conditions.iter().find(|x| x.type_ == t);
        let functions: Vec<&str> = c.spec.functions.iter().map(|f| f.name.as_str()).collect();
        let _ = write!(
            out,
            "{:<31} {:<6} {:<14} {:<24} {:>5}  {:<14}",
            chain_key(c),
            cond("Ready").map_or("?", |x| x.status.as_str()),
            cond("Ready").map_or("?", |x| x.reason.as_str()),
            functions.join(","),
            status.paths.len(),
            cond("Degraded").filter(|x| x.status == "True").map_or("-", |x| x.reason.as_str()),
        );
        if wide {
            let paths: Vec<String> = status.paths.iter().map(|p| p.segments.join(" -> ")).collect();
            let _ = write!(out, "  {}", paths.join(" | "));
        }
        out.push('\n');
    }
    out
}

/// Per SID: node, behaviour, owner (pod:interface) and counters, for the nodes that answered.
pub fn sid_rows(v: &View) -> Vec<Value> {
    let mut rows = Vec::new();
    for n in &v.nodes {
        let Some(stats) = v.stats.get(&n.name) else { continue };
        for c in &stats.sids {
            // A stream SID belongs to the interface whose LOC:FUNCT it carries.
            let funct = n.locator.stream_arg_of(c.sid).map(|a| a.funct);
            let owner = n.registrations.iter().find(|r| n.locator.funct_of(r.sid) == funct);
            rows.push(json!({
                "node": n.name, "sid": c.sid.to_string(), "behavior": c.behavior, "function": c.function,
                "pod": owner.map(|r| r.pod.clone()),
                "interface": owner.map(|r| r.interface.clone()),
                "packets": c.packets, "bytes": c.bytes, "drops": c.drops,
            }));
        }
    }
    rows
}

pub fn sids_text(rows: &[Value]) -> String {
    let width = rows.iter().filter_map(|r| r["sid"].as_str()).map(str::len).max().unwrap_or(0).max(23);
    let mut out = format!("{:<width$} NODE        BEHAVIOR    OWNER                   PACKETS     BYTES  DROPS  FUNCTION\n", "SID");
    for r in rows {
        let owner = match (r["pod"].as_str(), r["interface"].as_str()) {
            (Some(p), Some(i)) => format!("{p}:{i}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<width$} {:<11} {:<11} {:<21} {:>9} {:>9} {:>6}  {}",
            r["sid"].as_str().unwrap_or_default(),
            r["node"].as_str().unwrap_or_default(),
            r["behavior"].as_str().unwrap_or_default(),
            owner,
            r["packets"].as_u64().unwrap_or_default(),
            r["bytes"].as_u64().unwrap_or_default(),
            r["drops"].as_u64().unwrap_or_default(),
            r["function"].as_str().unwrap_or("-"),
        );
    }
    out
}

/// Every stream proxy's counters per SID (SRv6 pipes), as their nodes last heard them.
pub fn stream_rows(v: &View) -> Vec<Value> {
    let mut rows = Vec::new();
    for (node, s) in &v.stats {
        for c in &s.streams {
            let mut row = serde_json::to_value(c).expect("counters serialize");
            row["node"] = json!(node);
            rows.push(row);
        }
    }
    rows
}

pub fn streams_text(rows: &[Value]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = "\nSTREAM PROXY            FUNCTION                               ACTIVE  TOTAL FAILED   FWD IN  FWD OUT   REV IN  REV OUT  ERRORS\n"
        .to_string();
    for r in rows {
        let errors: Vec<String> = r["errors"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        let n = |k: &str| r[k].as_u64().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<23} {:<38} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8}  {}",
            r["pod"].as_str().unwrap_or_default(),
            r["function"].as_str().unwrap_or_default(),
            n("active"),
            n("total"),
            n("failed"),
            n("forward_in"),
            n("forward_out"),
            n("reverse_in"),
            n("reverse_out"),
            if errors.is_empty() { "none".into() } else { errors.join(" ") }
        );
    }
    out
}

type PerNode = BTreeMap<String, BTreeMap<String, u64>>;

fn per_node(v: &View, of: impl Fn(&NodeStats) -> &Vec<(String, u64)>) -> PerNode {
    v.stats.iter().map(|(n, s)| (n.clone(), of(s).iter().cloned().collect())).collect()
}

/// `srv6pipes stats -o json`: per SID, per stream proxy, per chain and headend, drops by reason
/// and datapath events per node; `unreachable` names the nodes whose counters are missing.
pub fn stats_doc(v: &View) -> Value {
    let chains: Vec<Value> = v
        .stats
        .iter()
        .flat_map(|(node, s)| {
            s.chains.iter().map(move |c| json!({"node": node, "chain": c.chain, "packets": c.packets, "bytes": c.bytes, "drops": c.drops}))
        })
        .collect();
    let mut doc = json!({
        "sids": sid_rows(v),
        "streams": stream_rows(v),
        "chains": chains,
        "drops": per_node(v, |s| &s.drops),
        "events": per_node(v, |s| &s.events),
    });
    if !v.unreachable.is_empty() {
        doc["unreachable"] = json!(v.unreachable);
    }
    doc
}

pub fn stats_text(doc: &Value) -> String {
    let rows = |k: &str| doc[k].as_array().cloned().unwrap_or_default();
    let mut out = sids_text(&rows("sids"));
    out.push_str(&streams_text(&rows("streams")));
    out.push_str("\nCHAIN                   HEADEND       PACKETS      BYTES  DROPS\n");
    for c in rows("chains") {
        let n = |k: &str| c[k].as_u64().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<23} {:<11} {:>9} {:>10} {:>6}",
            c["chain"].as_str().unwrap_or_default(),
            c["node"].as_str().unwrap_or_default(),
            n("packets"),
            n("bytes"),
            n("drops")
        );
    }
    for (title, key) in [("DROPS BY REASON", "drops"), ("EVENTS", "events")] {
        let _ = write!(out, "\n{title}\n");
        for (node, counts) in doc[key].as_object().into_iter().flatten() {
            let nonzero: Vec<String> =
                counts.as_object().into_iter().flatten().filter(|(_, n)| n.as_u64() > Some(0)).map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(out, "{node:<11} {}", if nonzero.is_empty() { "none".into() } else { nonzero.join(" ") });
        }
    }
    for (node, why) in doc["unreachable"].as_object().into_iter().flatten() {
        let _ = writeln!(out, "\n{node}: no counters ({})", why.as_str().unwrap_or_default());
    }
    out
}

/// `srv6pipes trace NS/NAME`'s document (the `-o json` schema `crate::trace` renders): the chain's
/// source pods, the headends that count it, each hop's replicas with their SIDs and counters, and
/// the decapsulation.
pub fn trace_doc(v: &View, ns: &str, name: &str) -> anyhow::Result<Value> {
    let c = v
        .chains
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name) && c.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .ok_or_else(|| anyhow::anyhow!("no chain {ns}/{name}"))?;
    let key = format!("{ns}/{name}");
    let status = c.status.clone().unwrap_or_default();
    let sid_counters = |node: &str, sid: &str| v.stats.get(node).and_then(|s| s.sids.iter().find(|x| x.sid.to_string() == sid));
    let counters = |node: &str, sid: &str| -> Value {
        sid_counters(node, sid).map_or(Value::Null, |x| json!({"packets": x.packets, "bytes": x.bytes, "drops": x.drops}))
    };
    // A stream SID: what its proxy applies (from its node), else what its ARG names.
    let function = |node: &str, sid: &str| -> Option<String> {
        sid_counters(node, sid).and_then(|x| x.function.clone()).or_else(|| {
            let (n, sid) = (v.nodes.iter().find(|n| n.name == node)?, Sid(sid.parse().ok()?));
            srv6::pipes::decode(&n.locator, sid, None)
        })
    };
    let headends: Vec<Value> = v
        .stats
        .iter()
        .flat_map(|(node, s)| {
            s.chains
                .iter()
                .filter(|x| x.chain == key)
                .map(move |x| json!({"node": node, "packets": x.packets, "bytes": x.bytes, "drops": x.drops}))
        })
        .collect();
    let hops: Vec<Value> = status
        .hops
        .iter()
        .map(|h| {
            let replicas: Vec<Value> = h
                .replicas
                .iter()
                .map(|r| json!({"pod": r.pod, "node": r.node, "sid": r.sid, "function": function(&r.node, &r.sid), "counters": counters(&r.node, &r.sid)}))
                .collect();
            json!({"function": h.function, "replicas": replicas})
        })
        .collect();
    let decap = status.paths.first().and_then(|p| p.segments.last()).map(|sid| {
        let node = v.nodes.iter().find(|n| sid.parse().is_ok_and(|a| n.locator.contains(&a))).map(|n| n.name.clone()).unwrap_or_default();
        json!({"sid": sid, "node": node, "counters": counters(&node, sid)})
    });
    // The chain's source pods, where their node's headend steers them.
    let sources: Vec<Value> = v
        .pods
        .iter()
        .filter(|p| p.namespace == ns && srv6::selector::matches(&c.spec.sources.pod_selector, &p.labels).unwrap_or(false))
        .map(|p| json!({"pod": format!("{}/{}", p.namespace, p.name), "node": p.node}))
        .collect();
    let cond = status.conditions.iter().find(|x| x.type_ == "Ready");
    let mut doc = json!({
        "chain": key,
        "ready": cond.map(|c| c.status.as_str()),
        "reason": cond.map(|c| c.reason.as_str()),
        "sources": sources,
        "headends": headends,
        "hops": hops,
        "decap": decap,
    });
    if !v.unreachable.is_empty() {
        doc["unreachable"] = json!(v.unreachable);
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use srv6::node_api::{ChainCounters, SidCounters};

    fn view() -> View {
        let chain: ServiceChain = serde_json::from_value(json!({
            "apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain",
            "metadata": {"name": "web", "namespace": "default", "generation": 2},
            "spec": {"sources": {"podSelector": {"matchLabels": {"app": "client"}}},
                     "functions": [{"name": "fw", "podSelector": {"matchLabels": {"vnf": "fw"}}}]},
            "status": {"observedGeneration": 2,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Programmed", "message": "",
                                       "lastTransitionTime": "2026-12-01T00:00:00Z"}],
                       "hops": [{"function": "fw", "replicas": [{"pod": "default/fw", "node": "n2", "sid": "fcbb:bb00:2:e001::"}]}],
                       "paths": [{"segments": ["fcbb:bb00:2:e001::", "fcbb:bb00:2:d6::"]}]}
        }))
        .unwrap();
        let sid = |s: &str| Sid(s.parse().unwrap());
        let counters = |s: &str, packets| SidCounters {
            sid: sid(s),
            behavior: "End.AD".into(),
            packets,
            bytes: packets * 100,
            drops: 0,
            function: None,
        };
        let mut stats = BTreeMap::new();
        stats.insert(
            "n1".to_string(),
            NodeStats {
                chains: vec![ChainCounters { chain: "default/web".into(), packets: 9, bytes: 900, drops: 0 }],
                ..Default::default()
            },
        );
        stats.insert(
            "n2".to_string(),
            NodeStats { sids: vec![counters("fcbb:bb00:2:e001::", 9), counters("fcbb:bb00:2:d6::", 9)], ..Default::default() },
        );
        let labels = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        View {
            nodes: vec![
                ViewNode { name: "n1".into(), locator: "fcbb:bb00:1::/48".parse().unwrap(), registrations: vec![] },
                ViewNode {
                    name: "n2".into(),
                    locator: "fcbb:bb00:2::/48".parse().unwrap(),
                    registrations: vec![Registration {
                        pod: "default/fw".into(),
                        interface: "net1".into(),
                        sid: sid("fcbb:bb00:2:e001::"),
                    }],
                },
            ],
            pods: vec![
                ViewPod { namespace: "default".into(), name: "client".into(), node: "n1".into(), labels: labels("app", "client") },
                ViewPod { namespace: "other".into(), name: "client".into(), node: "n3".into(), labels: labels("app", "client") },
                ViewPod { namespace: "default".into(), name: "fw".into(), node: "n2".into(), labels: labels("vnf", "fw") },
            ],
            chains: vec![chain],
            stats,
            unreachable: BTreeMap::from([("n3".to_string(), "connection refused".to_string())]),
        }
    }

    #[test]
    fn trace_joins_the_chain_its_sources_and_the_counters_of_every_node() {
        let t = trace_doc(&view(), "default", "web").unwrap();
        assert_eq!(t["sources"], json!([{"pod": "default/client", "node": "n1"}]), "the selector, in the chain's namespace only");
        assert_eq!(t["headends"], json!([{"node": "n1", "packets": 9, "bytes": 900, "drops": 0}]));
        assert_eq!(t["hops"][0]["replicas"][0]["counters"]["packets"], 9);
        assert_eq!(t["decap"], json!({"sid": "fcbb:bb00:2:d6::", "node": "n2", "counters": {"packets": 9, "bytes": 900, "drops": 0}}));
        assert_eq!(t["unreachable"]["n3"], "connection refused");
        assert!(trace_doc(&view(), "other", "web").unwrap_err().to_string().contains("no chain other/web"));
    }

    #[test]
    fn stats_and_sids_name_owners_and_missing_nodes() {
        let doc = stats_doc(&view());
        assert_eq!(doc["sids"][0]["pod"], "default/fw");
        assert_eq!(doc["sids"][0]["interface"], "net1");
        assert_eq!(doc["chains"][0]["chain"], "default/web");
        let text = stats_text(&doc);
        assert!(text.contains("default/fw:net1") && text.contains("n3: no counters (connection refused)"), "{text}");
    }

    #[test]
    fn chains_table_and_ready_follow_the_status() {
        let v = view();
        let text = chains_text(&v.chains, false);
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["default/web", "True", "Programmed", "fw", "1", "-"]);
        assert!(chains_text(&v.chains, true).contains("fcbb:bb00:2:e001:: -> fcbb:bb00:2:d6::"));
        assert_eq!(ready(&v.chains[0]), Some((true, "Programmed".into(), String::new())));
        let mut stale = v.chains[0].clone();
        stale.metadata.generation = Some(3);
        assert_eq!(ready(&stale), None, "a status of an older generation does not count");
    }
}
