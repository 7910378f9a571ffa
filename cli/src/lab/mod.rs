//! `srv6pipes lab`: nodes and pods as network namespaces, the real primary CNI (ptp +
//! host-local), the real srv6pipes-cni and srv6pipes-node, chains compiled by the pure compiler.
//! Here: the arguments, the lab's status and view (what `crate::view` renders) and `exec`; the
//! orchestration (up, apply, down, restart-node) is in `orchestrate.rs`, the lab file in
//! `manifest.rs`, its persisted state in `state.rs`, kube mode in `kube.rs`, processes and
//! namespaces in `sys.rs`.

mod kube;
mod manifest;
mod orchestrate;
mod state;
mod sys;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use srv6::compiler::{ChainRef, NodeInfo, PodInfo, World};
use srv6::node_api::{self, NodeSids, NodeStats, Peer, Request, Response};

use crate::view::{self, Registration, View, ViewNode, ViewPod};
use manifest::{LabNode, LabPod, Manifest};
use orchestrate::*;
use state::{LabState, NodeState, PodState};

const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Each node daemon's Prometheus endpoint, inside its node's netns.
pub const METRICS_ADDR: &str = "[::]:9464";

#[derive(Args)]
pub struct LabArgs {
    #[command(flatten)]
    which: Which,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create nodes, pods and chains from a YAML file (v1 Node, v1 Pod, ServiceChain) and
    /// return once every chain is programmed. On failure, everything made is removed.
    Up {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Kube mode: register the file's Nodes and Pods in this API server (the lab plays the
        /// kubelets), run the node daemons and srv6pipes-operator against it, and send the
        /// file's ServiceChains there; `kubectl apply`/`delete` of chains then steer. The
        /// server must be on a loopback address (nodes reach it through forwarders).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Add ServiceChains (replacing those of the same name) and Pods to a running lab, then
    /// recompile and reprogram every node. Pods annotated srv6pipes.io/lab-external: "true" are
    /// attached by a container runtime (e.g. podman) rather than by the lab.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Remove every netns, link, route, pin, process and file the lab made.
    Down,
    /// Nodes (locator, underlay), pods (node, IPs), SIDs with counters, chains with status.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Restart a node's daemon (SIGTERM, or SIGKILL with --kill) and wait until it serves
    /// again. Traffic keeps flowing meanwhile: programs, maps and links stay pinned.
    RestartNode {
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// (internal) Relay ADDRESS inside NETNS to ADDRESS here: a kube-mode node's way to a
    /// loopback API server.
    #[command(hide = true)]
    ForwardApi { netns: PathBuf, address: std::net::SocketAddr },
    /// Run a command in a pod's network namespace (POD or NAMESPACE/POD), or a node's (--node).
    /// A pod's command sees the pod's own /sys (`/sys/class/net/net1/statistics/...`), as with
    /// `ip netns exec`; a node's sees the host's /sys, bpffs pins included.
    Exec {
        #[arg(long, conflicts_with = "pod")]
        node: Option<String>,
        #[arg(required_unless_present = "node")]
        pod: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Which lab: the flags every lab-facing command shares.
#[derive(Args, Clone)]
pub struct Which {
    /// Lab name; prefixes every network namespace the lab creates.
    #[arg(long = "name", alias = "lab", global = true, env = "SRV6PIPES_LAB", default_value = "lab")]
    pub name: String,
    /// State directory [default: /run/srv6pipes/labs/<name>].
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
}

impl Which {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || self.name.len() > 24 {
            bail!("lab name {:?}: use letters, digits and '-' (at most 24)", self.name);
        }
        Ok(self.state_dir.clone().unwrap_or_else(|| Path::new("/run/srv6pipes/labs").join(&self.name)))
    }
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let dir = args.which.dir()?;
    let name = &args.which.name;
    match args.command {
        LabCommand::Up { file, kubeconfig } => up(name, &dir, &file, kubeconfig).map(|_| ExitCode::SUCCESS),
        LabCommand::ForwardApi { netns, address } => kube::forward(&netns, address).map(|_| ExitCode::SUCCESS),
        LabCommand::Apply { file } => apply(&dir, &file).map(|_| ExitCode::SUCCESS),
        LabCommand::Down => down(name, &dir).map(|_| ExitCode::SUCCESS),
        LabCommand::Status { output } => status(&dir, output).map(|_| ExitCode::SUCCESS),
        LabCommand::Exec { node, pod, command } => exec(&dir, node, pod, &command),
        LabCommand::RestartNode { node, kill } => restart_node(&dir, &node, kill).map(|_| ExitCode::SUCCESS),
    }
}

fn load(dir: &Path) -> anyhow::Result<LabState> {
    LabState::load(dir)?.ok_or_else(|| anyhow!("no lab state in {} (is the lab up?)", dir.display()))
}

// ------------------------------------------------------------------------------------ status

fn status(dir: &Path, format: Format) -> anyhow::Result<()> {
    let st = load(dir)?;
    let v = lab_view(&st);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status_json(&st, &v))?),
        Format::Text => print!("{}", status_text(&st, &v)),
    }
    Ok(())
}

/// The lab as `crate::view` shows it: its nodes and pods, its chains (from its API server in
/// kube mode), and each daemon's counters over its socket.
pub fn lab_view(st: &LabState) -> View {
    let mut v = View { chains: chains_or_warn(st), ..Default::default() };
    for n in &st.nodes {
        let registrations = match node_sids(n).and_then(|sids| Ok((sids, node_stats(n)?))) {
            Ok((sids, stats)) => {
                v.stats.insert(n.name.clone(), stats);
                sids.registrations
                    .into_iter()
                    .map(|r| Registration { pod: format!("{}/{}", r.pod_namespace, r.pod_name), interface: r.interface, sid: r.sid })
                    .collect()
            }
            Err(e) => {
                v.unreachable.insert(n.name.clone(), format!("{e:#}"));
                Vec::new()
            }
        };
        v.nodes.push(ViewNode { name: n.name.clone(), locator: n.locator, registrations });
    }
    v.pods = st
        .pods
        .iter()
        .map(|p| ViewPod { namespace: p.namespace.clone(), name: p.name.clone(), node: p.node.clone(), labels: p.labels.clone() })
        .collect();
    v
}

fn status_json(st: &LabState, v: &View) -> Value {
    let stats = view::stats_doc(v);
    json!({
        "name": st.name,
        "nodes": st.nodes.iter().map(|n| json!({
            "name": n.name,
            "locator": n.locator.to_string(),
            "underlay": {"ipv6": n.underlay6.to_string(), "ipv4": n.underlay4.to_string()},
            "podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "netns": n.netns,
            "daemon": {"pid": n.daemon_pid, "running": n.daemon_pid.is_some_and(sys::alive), "socket": n.socket},
        })).collect::<Vec<_>>(),
        "pods": st.pods.iter().map(|p| json!({
            "namespace": p.namespace, "name": p.name, "node": p.node,
            "ips": p.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "chainInterfaces": p.chain_ifaces,
            "netns": (!p.external).then_some(&p.netns),
            "pid": p.pid,
            "running": p.pid.is_some_and(sys::alive),
        })).collect::<Vec<_>>(),
        "sids": stats["sids"],
        "streams": stats["streams"],
        "drops": stats["drops"],
        "events": stats["events"],
        "chains": v.chains,
    })
}

fn status_text(st: &LabState, v: &View) -> String {
    use std::fmt::Write;
    let mut out = "NODE        LOCATOR               UNDERLAY          DAEMON\n".to_string();
    for n in &st.nodes {
        let d = if n.daemon_pid.is_some_and(sys::alive) { "running" } else { "DOWN" };
        let _ = writeln!(out, "{:<11} {:<21} {:<17} {d}", n.name, n.locator.to_string(), n.underlay6.to_string());
    }
    out.push_str("\nPOD                   NODE        IPS\n");
    for p in &st.pods {
        let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
        let chain = if p.chain_ifaces.is_empty() { String::new() } else { format!("  (+{})", p.chain_ifaces.join(",")) };
        let _ = writeln!(out, "{:<21} {:<11} {}{chain}", format!("{}/{}", p.namespace, p.name), p.node, ips.join(","));
    }
    out.push('\n');
    out.push_str(&view::sids_text(&view::sid_rows(v)));
    out.push_str(&view::streams_text(&view::stream_rows(v)));
    out.push('\n');
    out.push_str(&view::chains_text(&v.chains, true));
    for (node, stats) in &v.stats {
        let drops: Vec<String> = stats.drops.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        if !drops.is_empty() {
            let _ = write!(out, "\ndrops on {node}: {}\n", drops.join(" "));
        }
    }
    out
}

// --------------------------------------------------------------------- what the CLI reads

/// The lab addressed by `which`, when one is up there.
pub fn is_up(which: &Which) -> anyhow::Result<bool> {
    Ok(LabState::load(&which.dir()?)?.is_some())
}

/// Each node of the lab with its daemon's socket (`srv6pipes monitor`).
pub fn node_sockets(which: &Which) -> anyhow::Result<Vec<(String, PathBuf)>> {
    Ok(load(&which.dir()?)?.nodes.into_iter().map(|n| (n.name, n.socket)).collect())
}

/// The lab's view for `srv6pipes stats|sids|trace|status`.
pub fn view(which: &Which) -> anyhow::Result<View> {
    Ok(lab_view(&load(&which.dir()?)?))
}

/// The lab's chains (from its API server in kube mode), for `srv6pipes chains|wait`.
pub fn chains(which: &Which) -> anyhow::Result<Vec<srv6pipes_crds::ServiceChain>> {
    lab_chains(&load(&which.dir()?)?)
}

/// `srv6pipes status` on a lab: what `lab status` prints (YAML too).
pub fn print_status(which: &Which, output: view::Output) -> anyhow::Result<()> {
    let st = load(&which.dir()?)?;
    let v = lab_view(&st);
    match output {
        view::Output::Text | view::Output::Wide => print!("{}", status_text(&st, &v)),
        _ => print!("{}", view::structured(&status_json(&st, &v), output)?.expect("a structured format")),
    }
    Ok(())
}

// -------------------------------------------------------------------------------------- exec

fn exec(dir: &Path, node: Option<String>, pod: Option<String>, command: &[String]) -> anyhow::Result<ExitCode> {
    let st = load(dir)?;
    let mut cmd = match (node, pod) {
        (Some(n), _) => sys::in_netns(&st.node(&n).ok_or_else(|| anyhow!("no node {n} in lab {}", st.name))?.netns, &command[0])?,
        (None, Some(p)) => {
            let (ns, name) = p.split_once('/').map(|(a, b)| (Some(a), b)).unwrap_or((None, p.as_str()));
            let found: Vec<&PodState> = st.pods.iter().filter(|x| x.name == name && ns.is_none_or(|ns| x.namespace == ns)).collect();
            match found.as_slice() {
                [one] => sys::in_pod_view(&one.netns, &command[0])?,
                [] => bail!("no pod {p} in lab {}", st.name),
                _ => bail!("pod name {p} is ambiguous: use NAMESPACE/POD"),
            }
        }
        (None, None) => bail!("name a pod or --node"),
    };
    let status = cmd.args(&command[1..]).status().with_context(|| format!("run {:?}", command[0]))?;
    // Killed by a signal: 128 + its number, as a shell says.
    let code = status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
