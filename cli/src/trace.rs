//! `srv6pipes trace` views of one chain, rendered from its trace document (the `-o json` schema:
//! `chain`, `ready`, `reason`, `sources[]`, `headends[]`, `hops[].replicas[]`, `decap`): the text
//! table, a Graphviz digraph (`-o dot`, and `-o svg` through Graphviz) and a Mermaid flowchart
//! (`-o mermaid`, for docs). Pure: no I/O but [`svg`], which runs `dot`.

use std::fmt::Write;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

/// `srv6pipes trace -o FORMAT`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// A Graphviz digraph.
    Dot,
    /// SVG drawn by Graphviz (`dot` must be installed).
    Svg,
    /// A Mermaid flowchart, for Markdown.
    Mermaid,
}

/// The trace document `t` in `format`.
pub fn render(t: &Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Text => text(t),
        Format::Json => serde_json::to_string_pretty(t)? + "\n",
        Format::Dot => dot(t),
        Format::Svg => svg(t)?,
        Format::Mermaid => mermaid(t),
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn counters(c: &Value) -> String {
    format!("packets {} bytes {} drops {}", c["packets"], c["bytes"], c["drops"])
}

/// The text view: one line per headend, replica and the decapsulation.
pub fn text(t: &Value) -> String {
    let mut out =
        format!("chain {}: Ready={} ({})\n", s(&t["chain"]), t["ready"].as_str().unwrap_or("?"), t["reason"].as_str().unwrap_or("?"));
    for src in t["sources"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  source    {:<5} {}", s(&src["node"]), s(&src["pod"]));
    }
    for h in t["headends"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  headend   {:<5} {}", s(&h["node"]), counters(h));
    }
    for (i, h) in t["hops"].as_array().into_iter().flatten().enumerate() {
        for r in h["replicas"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  hop {}     {:<5} {:<10} {:<22} {:<10} {}{}",
                i + 1,
                s(&r["node"]),
                s(&h["function"]),
                s(&r["sid"]),
                s(&r["pod"]),
                counters(&r["counters"]),
                r["function"].as_str().map(|f| format!("  [{f}]")).unwrap_or_default()
            );
        }
    }
    if t["decap"].is_object() {
        let d = &t["decap"];
        let _ = writeln!(out, "  decap     {:<5} {:<33} {}", s(&d["node"]), s(&d["sid"]), counters(&d["counters"]));
    }
    out
}

/// A chain as a graph: boxes and the counted edges between them, shared by both notations.
struct Graph {
    title: String,
    /// (id, lines of the label, kind)
    boxes: Vec<(String, Vec<String>, Kind)>,
    edges: Vec<(String, String, Edge)>,
}

enum Edge {
    /// Traffic into the box, with the box's counters.
    Counted(String),
    /// Traffic into a box that has no counters (not programmed, or its node is not answering).
    Uncounted,
    /// Into a fan-out point: no arrow, the count is on the point's way out.
    Connector,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Source,
    Headend,
    Replica,
    Decap,
    /// Where a stage fans out to its replicas (drawn as a point).
    Fan,
}

fn edge(c: &Value) -> Edge {
    if c.is_null() {
        Edge::Uncounted
    } else {
        Edge::Counted(format!("{} pkts, {} drops", c["packets"], c["drops"]))
    }
}

fn graph(t: &Value) -> Graph {
    let mut g = Graph {
        title: format!("{}: Ready={} ({})", s(&t["chain"]), t["ready"].as_str().unwrap_or("?"), t["reason"].as_str().unwrap_or("?")),
        boxes: Vec::new(),
        edges: Vec::new(),
    };
    // Headend nodes: those counting the chain, and the nodes of its sources.
    let sources = t["sources"].as_array().cloned().unwrap_or_default();
    let headends = t["headends"].as_array().cloned().unwrap_or_default();
    let mut nodes: Vec<String> = headends.iter().map(|h| s(&h["node"]).to_string()).collect();
    for src in &sources {
        if !nodes.iter().any(|n| n == s(&src["node"])) {
            nodes.push(s(&src["node"]).to_string());
        }
    }
    let mut stage = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (src, head) = (format!("s{i}"), format!("h{i}"));
        let pods: Vec<String> = sources.iter().filter(|x| s(&x["node"]) == node).map(|x| s(&x["pod"]).to_string()).collect();
        let count = headends.iter().find(|h| s(&h["node"]) == node).cloned().unwrap_or(Value::Null);
        if !pods.is_empty() {
            g.boxes.push((src.clone(), pods, Kind::Source));
            g.edges.push((src, head.clone(), edge(&count)));
        }
        g.boxes.push((head.clone(), vec![format!("headend {node}")], Kind::Headend));
        stage.push(head);
    }
    let hops = t["hops"].as_array().cloned().unwrap_or_default();
    for (i, h) in hops.iter().enumerate() {
        let replicas: Vec<(String, Vec<String>, Value)> = h["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(j, r)| {
                let mut label = vec![
                    format!("{}: {}", i + 1, s(&h["function"])),
                    format!("pod {}", s(&r["pod"])),
                    format!("{} {}", s(&r["node"]), s(&r["sid"])),
                ];
                if let Some(f) = r["function"].as_str() {
                    label.push(format!("[{f}]"));
                }
                (format!("r{}_{j}", i + 1), label, r["counters"].clone())
            })
            .collect();
        stage = fan_in(&mut g, &stage, &format!("f{}", i + 1), replicas, Kind::Replica);
    }
    if t["decap"].is_object() {
        let d = &t["decap"];
        let decap = vec![("d".to_string(), vec![format!("decap {}", s(&d["node"])), s(&d["sid"]).to_string()], d["counters"].clone())];
        fan_in(&mut g, &stage, "fd", decap, Kind::Decap);
    }
    g
}

/// Connects every box of `from` to each of `to` with the counters of the box entered; through a
/// fan-out point when both sides hold several boxes, so each count is drawn once. Returns `to`'s ids.
fn fan_in(g: &mut Graph, from: &[String], fan: &str, to: Vec<(String, Vec<String>, Value)>, kind: Kind) -> Vec<String> {
    let through = from.len() > 1 && to.len() > 1;
    if through {
        g.boxes.push((fan.to_string(), Vec::new(), Kind::Fan));
        g.edges.extend(from.iter().map(|f| (f.clone(), fan.to_string(), Edge::Connector)));
    }
    let mut ids = Vec::new();
    for (id, label, count) in to {
        if through {
            g.edges.push((fan.to_string(), id.clone(), edge(&count)));
        } else {
            g.edges.extend(from.iter().map(|f| (f.clone(), id.clone(), edge(&count))));
        }
        g.boxes.push((id.clone(), label, kind));
        ids.push(id);
    }
    ids
}

fn dot_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz: `srv6pipes trace CHAIN -o dot | dot -Tsvg > chain.svg`.
pub fn dot(t: &Value) -> String {
    let g = graph(t);
    let mut out = format!("digraph {} {{\n", dot_quote(s(&t["chain"])));
    let _ = writeln!(out, "  label={}; labelloc=t; rankdir=LR;", dot_quote(&g.title));
    out.push_str("  node [shape=box, style=rounded, fontname=\"monospace\"];\n  edge [fontname=\"monospace\", fontsize=10];\n");
    for (id, label, kind) in &g.boxes {
        let attrs = match kind {
            Kind::Source => "shape=ellipse",
            Kind::Headend => "style=\"rounded,filled\", fillcolor=\"#e8f0fe\"",
            Kind::Replica => "",
            Kind::Decap => "style=\"rounded,filled\", fillcolor=\"#e6f4ea\"",
            Kind::Fan => "shape=point",
        };
        let label = label.iter().map(|l| l.replace('\\', "\\\\").replace('"', "\\\"")).collect::<Vec<_>>().join("\\n");
        let sep = if attrs.is_empty() { "" } else { ", " };
        let _ = writeln!(out, "  {id} [label=\"{label}\"{sep}{attrs}];");
    }
    for (from, to, label) in &g.edges {
        let _ = match label {
            Edge::Counted(l) => writeln!(out, "  {from} -> {to} [label={}];", dot_quote(l)),
            Edge::Uncounted => writeln!(out, "  {from} -> {to};"),
            Edge::Connector => writeln!(out, "  {from} -> {to} [arrowhead=none];"),
        };
    }
    out.push_str("}\n");
    out
}

fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;")
}

/// Mermaid, for Markdown docs: a ```mermaid block's content.
pub fn mermaid(t: &Value) -> String {
    let g = graph(t);
    let mut out = format!("---\ntitle: \"{}\"\n---\nflowchart LR\n", mermaid_text(&g.title));
    for (id, label, kind) in &g.boxes {
        let label = label.iter().map(|l| mermaid_text(l)).collect::<Vec<_>>().join("<br/>");
        let _ = match kind {
            Kind::Source => writeln!(out, "  {id}([\"{label}\"])"),
            Kind::Fan => writeln!(out, "  {id}(( ))"),
            Kind::Headend | Kind::Replica | Kind::Decap => writeln!(out, "  {id}[\"{label}\"]"),
        };
    }
    for (from, to, label) in &g.edges {
        let _ = match label {
            Edge::Counted(l) => writeln!(out, "  {from} -->|\"{}\"| {to}", mermaid_text(l)),
            Edge::Uncounted => writeln!(out, "  {from} --> {to}"),
            Edge::Connector => writeln!(out, "  {from} --- {to}"),
        };
    }
    out
}

/// SVG drawn by Graphviz's `dot` from [`dot`].
pub fn svg(t: &Value) -> anyhow::Result<String> {
    let mut child = match Command::new("dot").arg("-Tsvg").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("-o svg needs Graphviz's dot (apt-get install graphviz); -o dot prints the graph it would draw")
        }
        Err(e) => return Err(e).context("run dot"),
    };
    child.stdin.take().expect("piped").write_all(dot(t).as_bytes()).context("write to dot")?;
    let out = child.wait_with_output().context("run dot")?;
    if !out.status.success() {
        bail!("dot -Tsvg: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).context("dot's SVG")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(packets: u64, drops: u64) -> Value {
        json!({"packets": packets, "bytes": packets * 100, "drops": drops})
    }

    /// Two sources on n1, a firewall with two replicas on two nodes, an ids with one.
    fn trace() -> Value {
        json!({
            "chain": "default/web \"x\"", "ready": "True", "reason": "Programmed",
            "sources": [{"pod": "default/client", "node": "n1"}, {"pod": "default/client2", "node": "n1"}],
            "headends": [{"node": "n1", "packets": 12, "bytes": 1200, "drops": 0}],
            "hops": [
                {"function": "firewall", "replicas": [
                    {"pod": "default/fw-a", "node": "n1", "sid": "fcbb:bb00:1:e001::", "function": null, "counters": c(7, 0)},
                    {"pod": "default/fw-b", "node": "n2", "sid": "fcbb:bb00:2:e001::", "function": null, "counters": c(5, 1)}]},
                {"function": "ids", "replicas": [
                    {"pod": "default/ids", "node": "n2", "sid": "fcbb:bb00:2:e002::", "function": "xor", "counters": c(11, 0)}]}
            ],
            "decap": {"sid": "fcbb:bb00:2:d6::", "node": "n2", "counters": c(11, 0)}
        })
    }

    #[test]
    fn dot_draws_every_stage_with_its_counters() {
        let d = dot(&trace());
        assert!(d.starts_with("digraph \"default/web \\\"x\\\"\" {\n"), "{d}");
        for want in [
            "s0 [label=\"default/client\\ndefault/client2\", shape=ellipse];",
            "s0 -> h0 [label=\"12 pkts, 0 drops\"];",
            "h0 -> r1_0 [label=\"7 pkts, 0 drops\"];",
            "h0 -> r1_1 [label=\"5 pkts, 1 drops\"];",
            "r1_0 -> r2_0 [label=\"11 pkts, 0 drops\"];",
            "r1_1 -> r2_0 [label=\"11 pkts, 0 drops\"];",
            "r2_0 [label=\"2: ids\\npod default/ids\\nn2 fcbb:bb00:2:e002::\\n[xor]\"];",
            "r2_0 -> d [label=\"11 pkts, 0 drops\"];",
            "d [label=\"decap n2\\nfcbb:bb00:2:d6::\"",
        ] {
            assert!(d.contains(want), "{want:?} not in\n{d}");
        }
        assert_eq!(d.matches(" -> ").count(), 6, "{d}");
    }

    #[test]
    fn many_to_many_goes_through_one_fan_out_point() {
        let mut t = trace();
        t["headends"] = json!([{"node": "n1", "packets": 3, "bytes": 1, "drops": 0}, {"node": "n3", "packets": 4, "bytes": 1, "drops": 0}]);
        let d = dot(&t);
        for want in [
            "f1 [label=\"\", shape=point];",
            "h0 -> f1 [arrowhead=none];",
            "h1 -> f1 [arrowhead=none];",
            "f1 -> r1_1 [label=\"5 pkts, 1 drops\"];",
        ] {
            assert!(d.contains(want), "{want:?} not in\n{d}");
        }
        assert!(!d.contains("s1"), "n3 has no source pod: no source box\n{d}");
    }

    #[test]
    fn mermaid_is_a_flowchart_with_escaped_labels() {
        let m = mermaid(&trace());
        assert!(m.starts_with("---\ntitle: \"default/web #quot;x#quot;: Ready=True (Programmed)\"\n---\nflowchart LR\n"), "{m}");
        for want in
            ["  s0([\"default/client<br/>default/client2\"])", "  h0 -->|\"7 pkts, 0 drops\"| r1_0", "  r2_0 -->|\"11 pkts, 0 drops\"| d"]
        {
            assert!(m.contains(want), "{want:?} not in\n{m}");
        }
    }

    #[test]
    fn an_unprogrammed_chain_still_draws_without_counters() {
        let t = json!({"chain": "default/c", "ready": "False", "reason": "NoReplicas", "sources": [{"pod": "default/a", "node": "n1"}],
                       "headends": [], "hops": [], "decap": null});
        let d = dot(&t);
        assert!(d.contains("  s0 -> h0;\n"), "an uncounted edge: {d}");
        assert!(text(&t).contains("chain default/c: Ready=False (NoReplicas)\n  source    n1    default/a\n"), "{}", text(&t));
    }
}
