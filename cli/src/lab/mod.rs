//! `srv6pipes lab`: nodes and pods as network namespaces, the real primary CNI (ptp +
//! host-local), the real srv6pipes-cni and srv6pipes-node, chains compiled by the pure compiler.

mod kube;
mod manifest;
mod state;
mod sys;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use srv6::compiler::{self, ChainRef, NodeInfo, PodInfo, World};
use srv6::node_api::{self, NodeProgram, NodeSids, NodeStats, Peer, Request, Response};

use crate::view::{self, Registration, View, ViewNode, ViewPod};
use manifest::{LabNode, LabPod, Manifest};
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

// ---------------------------------------------------------------------------------------- up

fn up(name: &str, dir: &Path, file: &Path, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
    if LabState::load(dir)?.is_some() {
        bail!("lab {name} is already up (state in {}); run `srv6pipes lab down` first", dir.display());
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let manifest = manifest::parse(&text, &[]).with_context(|| format!("{}", file.display()))?;
    preflight(kubeconfig.is_some())?;
    let kubeconfig = match kubeconfig {
        Some(k) => Some(std::fs::canonicalize(&k).with_context(|| format!("kubeconfig {}", k.display()))?),
        None => None,
    };
    // Creating the state directory is the lock: two `up`s of one lab cannot both get here.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("lab {name}: {} exists (another `lab up` is running, or remove it)", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
    }
    for sub in ["nodes", "logs", "ipam"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut st = LabState {
        name: name.into(),
        pin_root: Path::new("/sys/fs/bpf/srv6pipes").join(format!("lab-{name}")),
        kubeconfig,
        ..Default::default()
    };
    st.save(dir)?;
    if let Err(e) = build(&mut st, &manifest, dir) {
        eprintln!("srv6pipes: lab up failed, removing what it made");
        if let Err(d) = teardown(&st, dir) {
            eprintln!("srv6pipes: cleanup: {d:#}");
        }
        return Err(e);
    }
    print!("{}", status_text(&st, &lab_view(&st)));
    Ok(())
}

fn preflight(kube: bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (network namespaces, eBPF)");
    }
    let operator = kube.then_some("srv6pipes-operator");
    for bin in ["srv6pipes-node", "srv6pipes-cni"].into_iter().chain(operator) {
        if !crate::bin_dir().join(bin).exists() {
            bail!("{bin} not found next to srv6pipes in {}", crate::bin_dir().display());
        }
    }
    cni_plugin("ptp")?;
    cni_plugin("host-local")?;
    Ok(())
}

fn cni_path() -> Vec<PathBuf> {
    let from_env = std::env::var("CNI_PATH").unwrap_or_default();
    from_env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).chain(["/usr/lib/cni".into(), "/opt/cni/bin".into()]).collect()
}

fn cni_plugin(kind: &str) -> anyhow::Result<PathBuf> {
    cni_path()
        .into_iter()
        .map(|d| d.join(kind))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("CNI plugin {kind} not found in {:?} (apt-get install containernetworking-plugins)", cni_path()))
}

fn build(st: &mut LabState, m: &Manifest, dir: &Path) -> anyhow::Result<()> {
    let underlay = format!("{}-underlay", st.name);
    sys::ip(&["netns", "add", &underlay])?;
    st.underlay_netns = Some(underlay.clone());
    st.save(dir)?;
    sys::ip(&["-n", &underlay, "link", "add", "name", "br0", "type", "bridge"])?;
    sys::ip(&["-n", &underlay, "link", "set", "br0", "up"])?;

    for (i, n) in m.nodes.iter().enumerate() {
        create_node(st, dir, &underlay, i + 1, n)?;
    }
    for n in &st.nodes {
        for peer in st.nodes.iter().filter(|p| p.name != n.name) {
            for cidr in &peer.pod_cidrs {
                let via = match cidr {
                    ipnet::IpNet::V6(_) => peer.underlay6.to_string(),
                    ipnet::IpNet::V4(_) => peer.underlay4.to_string(),
                };
                sys::ip(&["-n", &n.netns, "route", "add", &cidr.to_string(), "via", &via, "dev", "eth0"])?;
            }
        }
    }
    let cluster = match st.kubeconfig.clone() {
        Some(k) => Some(start_kube(st, dir, &k)?),
        None => None,
    };
    for i in 0..st.nodes.len() {
        start_daemon(st, dir, i)?;
    }
    for p in &m.pods {
        create_pod(st, dir, p)?;
    }
    wait_for_dad(st)?;
    for i in 0..st.pods.len() {
        start_pod(st, dir, i)?;
    }
    match cluster {
        Some(c) => sync_kube(st, &c, &m.chains),
        None => {
            st.chains = m.chains.clone();
            program(st, dir)
        }
    }
}

/// Kube mode: CRDs, the lab's Nodes, a forwarder to the API server in each node's netns, and
/// the operator.
fn start_kube(st: &mut LabState, dir: &Path, kubeconfig: &Path) -> anyhow::Result<kube::Cluster> {
    let address = kube::api_address(kubeconfig)?;
    let cluster = kube::Cluster::connect(kubeconfig)?;
    cluster.apply_crds()?;
    for i in 0..st.nodes.len() {
        let n = st.nodes[i].clone();
        cluster.register_node(&st.name, &n)?;
        let mut cmd = std::process::Command::new(crate::bin_dir().join("srv6pipes"));
        cmd.args(["lab", "forward-api"]).arg(sys::netns_path(&n.netns)).arg(address.to_string());
        let log = dir.join("logs").join(format!("forward-{}.log", n.name));
        st.nodes[i].forwarder_pid = Some(sys::spawn_detached(cmd, &log)?);
        st.save(dir)?;
    }
    let mut cmd = std::process::Command::new(crate::bin_dir().join("srv6pipes-operator"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(["--lease-namespace", "default", "--cluster-block", manifest::CLUSTER_BLOCK]);
    st.operator_pid = Some(sys::spawn_detached(cmd, &dir.join("logs").join("operator.log"))?);
    st.save(dir)?;
    Ok(cluster)
}

/// Kube mode: registers every pod (Running, Ready, IPs), applies `chains`, and waits for the
/// operator's verdict on them.
fn sync_kube(st: &LabState, cluster: &kube::Cluster, chains: &[srv6pipes_crds::ServiceChain]) -> anyhow::Result<()> {
    for p in st.pods.iter().filter(|p| !p.external) {
        let node = st.node(&p.node).expect("pods sit on lab nodes");
        cluster.register_pod(&st.name, p, node)?;
    }
    for c in chains {
        cluster.apply_chain(c)?;
    }
    let reported = cluster.wait_reported(chains, Duration::from_secs(30))?;
    let failed: Vec<String> = reported
        .iter()
        .filter_map(|c| {
            let ready = c.status.as_ref()?.conditions.iter().find(|x| x.type_ == "Ready")?;
            (ready.status != "True")
                .then(|| format!("{}: {}: {}", c.metadata.name.as_deref().unwrap_or_default(), ready.reason, ready.message))
        })
        .collect();
    if !failed.is_empty() {
        bail!("chains not programmed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn chains_or_warn(st: &LabState) -> Vec<srv6pipes_crds::ServiceChain> {
    lab_chains(st).unwrap_or_else(|e| {
        eprintln!("srv6pipes: warning: chains unavailable: {e:#}");
        Vec::new()
    })
}

/// The chains of the lab: from its API server in kube mode.
fn lab_chains(st: &LabState) -> anyhow::Result<Vec<srv6pipes_crds::ServiceChain>> {
    match &st.kubeconfig {
        Some(k) => kube::Cluster::connect(k)?.chains(),
        None => Ok(st.chains.clone()),
    }
}

/// IPv6 addresses are unusable while duplicate address detection runs (~1-2 s): ptp's gateway
/// address on the node would not answer neighbour solicitations yet. Wait until none is
/// tentative, so traffic works as soon as `up` returns.
fn wait_for_dad(st: &LabState) -> anyhow::Result<()> {
    let start = Instant::now();
    let pods = st.pods.iter().filter(|p| !p.external).map(|p| p.netns.as_str());
    let namespaces: Vec<&str> = st.nodes.iter().map(|n| n.netns.as_str()).chain(pods).collect();
    loop {
        let mut tentative = Vec::new();
        for ns in &namespaces {
            let out = std::process::Command::new("ip").args(["-n", ns, "-6", "addr", "show", "tentative"]).output()?;
            if !out.stdout.is_empty() {
                tentative.push(*ns);
            }
        }
        if tentative.is_empty() {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("IPv6 addresses still tentative (duplicate address detection) in {tentative:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_node(st: &mut LabState, dir: &Path, underlay: &str, index: usize, n: &LabNode) -> anyhow::Result<()> {
    let netns = format!("{}-{}", st.name, n.name);
    sys::ip(&["netns", "add", &netns])?;
    st.nodes.push(NodeState {
        name: n.name.clone(),
        netns: netns.clone(),
        locator: n.locator,
        underlay6: n.underlay6,
        underlay4: n.underlay4,
        pod_cidrs: n.pod_cidrs.clone(),
        socket: dir.join("nodes").join(&n.name).join("node.sock"),
        daemon_pid: None,
        forwarder_pid: None,
    });
    st.save(dir)?;
    let port = format!("ul{index}");
    sys::ip(&["-n", underlay, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
    sys::ip(&["-n", underlay, "link", "set", &port, "master", "br0", "up"])?;
    sys::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    sys::ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
    sys::ip(&["-n", &netns, "addr", "add", &format!("{}/64", n.underlay6), "dev", "eth0", "nodad"])?;
    sys::ip(&["-n", &netns, "addr", "add", &format!("{}/24", n.underlay4), "dev", "eth0"])?;
    // A node routes for its pods (kindnet-style); the daemon sets IPv6 forwarding itself.
    let out = sys::in_netns(&netns, "sysctl")?.args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]).output()?;
    if !out.status.success() {
        bail!("node {}: sysctl: {}", n.name, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn start_daemon(st: &mut LabState, dir: &Path, i: usize) -> anyhow::Result<()> {
    let n = st.nodes[i].clone();
    let node_dir = dir.join("nodes").join(&n.name);
    std::fs::create_dir_all(&node_dir)?;
    let mut cmd = sys::in_netns(&n.netns, crate::bin_dir().join("srv6pipes-node"))?;
    if let Some(k) = &st.kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.args(["--node-name", &n.name, "--locator", &n.locator.to_string(), "--uplink", "eth0"])
        .arg("--socket")
        .arg(&n.socket)
        .arg("--state-dir")
        .arg(&node_dir)
        .arg("--pin-root")
        .arg(&st.pin_root)
        .args(["--cluster-block", manifest::CLUSTER_BLOCK])
        .args(["--metrics-addr", METRICS_ADDR]);
    let log = dir.join("logs").join(format!("node-{}.log", n.name));
    let pid = sys::spawn_detached(cmd, &log)?;
    st.nodes[i].daemon_pid = Some(pid);
    st.save(dir)?;
    let start = Instant::now();
    loop {
        match node_api::call(&n.socket, &Request::Sids, DAEMON_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(_) if sys::alive(pid) && start.elapsed() < READY_TIMEOUT => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => bail!("node daemon of {} did not come up: {e}\n{}", n.name, sys::tail(&log, 15)),
        }
    }
}

fn create_pod(st: &mut LabState, dir: &Path, p: &LabPod) -> anyhow::Result<()> {
    let node = st.node(&p.node).expect("checked by the manifest").clone();
    let netns = if p.external { String::new() } else { format!("{}-{}-{}", st.name, p.namespace, p.name) };
    let who = format!("pod {}/{}", p.namespace, p.name);
    if !p.external {
        sys::ip(&["netns", "add", &netns]).with_context(|| who.clone())?;
    }
    let idx = st.pods.len();
    st.pods.push(PodState {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        node: p.node.clone(),
        netns: netns.clone(),
        container_id: format!("{}-{}-{}", st.name, p.namespace, p.name),
        labels: p.labels.clone(),
        ips: Vec::new(),
        primary: false,
        chain_ifaces: Vec::new(),
        pair: p.pair,
        external: p.external,
        command: p.command.clone(),
        pid: None,
    });
    st.save(dir)?;
    if p.external {
        return Ok(());
    }
    sys::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    st.pods[idx].primary = true;
    st.save(dir)?;
    let result = cni(&st.pods[idx], &node, "ADD", "eth0", &primary_conf(&node, dir)).with_context(|| format!("{who}: ptp ADD"))?;
    st.pods[idx].ips = result_ips(&result);
    st.save(dir)?;
    for ifname in &p.chain_ifaces {
        st.pods[idx].chain_ifaces.push(ifname.clone());
        st.save(dir)?;
        cni(&st.pods[idx], &node, "ADD", ifname, &srv6pipes_conf(&node, &st.pods[idx]))
            .with_context(|| format!("{who}: srv6pipes-cni ADD {ifname}"))?;
    }
    Ok(())
}

/// Debian's real ptp + host-local, ranges from the node's podCIDRs, as a runtime would call it.
fn primary_conf(node: &NodeState, dir: &Path) -> Value {
    let ranges: Vec<Value> = node.pod_cidrs.iter().map(|c| json!([{"subnet": c.to_string()}])).collect();
    let routes: Vec<Value> =
        node.pod_cidrs.iter().map(|c| json!({"dst": if matches!(c, ipnet::IpNet::V6(_)) { "::/0" } else { "0.0.0.0/0" }})).collect();
    json!({
        "cniVersion": "1.0.0",
        "name": "lab-primary",
        "type": "ptp",
        "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": ranges, "routes": routes,
                 "dataDir": dir.join("ipam").join(&node.name).display().to_string()}
    })
}

fn srv6pipes_conf(node: &NodeState, pod: &PodState) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": manifest::NETWORK_NAME,
        "type": "srv6pipes-cni",
        "socket": node.socket.display().to_string(),
        "interfaces": if pod.pair { "pair" } else { "single" },
    })
}

/// Runs a CNI plugin exactly as a runtime does: in the node's netns, CNI_* env, config on stdin.
fn cni(pod: &PodState, node: &NodeState, command: &str, ifname: &str, conf: &Value) -> anyhow::Result<Value> {
    let kind = conf["type"].as_str().unwrap_or_default();
    let program = if kind == "srv6pipes-cni" { crate::bin_dir().join(kind) } else { cni_plugin(kind)? };
    let mut cmd = sys::in_netns(&node.netns, &program)?;
    let cni_path = cni_path().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", sys::netns_path(&pod.netns))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name));
    let out = sys::run_with_stdin(cmd, conf.to_string().as_bytes())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        bail!(
            "{kind} {command} failed (code {}): {} {}",
            err["code"],
            err["msg"].as_str().unwrap_or(stdout.trim()),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).context("CNI result")? })
}

fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"].as_array().into_iter().flatten().filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok()).collect()
}

fn start_pod(st: &mut LabState, dir: &Path, i: usize) -> anyhow::Result<()> {
    let p = st.pods[i].clone();
    if p.external || p.pid.is_some() {
        return Ok(());
    }
    let command = &p.command;
    let mut cmd = sys::in_netns(&p.netns, resolve_command(&command[0]))?;
    cmd.args(&command[1..]);
    let log = dir.join("logs").join(format!("pod-{}-{}.log", p.namespace, p.name));
    let pid = sys::spawn_detached(cmd, &log).with_context(|| format!("start pod {}/{}: {:?}", p.namespace, p.name, command))?;
    st.pods[i].pid = Some(pid);
    st.save(dir)
}

/// A pod's `srv6pipes-*` command (e.g. `srv6pipes-stream`, a stream proxy) is the binary beside
/// `srv6pipes`, as the image would have it; anything else is looked up in PATH.
fn resolve_command(program: &str) -> String {
    let ours = crate::bin_dir().join(program);
    if program.starts_with("srv6pipes-") && !program.contains('/') && ours.exists() {
        ours.display().to_string()
    } else {
        program.to_string()
    }
}

/// Compiles every chain with the pure compiler and hands each node daemon its tables.
fn program(st: &mut LabState, dir: &Path) -> anyhow::Result<()> {
    let mut world = World::default();
    for n in &st.nodes {
        world.nodes.push(NodeInfo { name: n.name.clone(), locator: n.locator, pod_cidrs: n.pod_cidrs.clone() });
        let sids = node_sids(n)?;
        world.registrations.extend(sids.registrations);
    }
    for p in &st.pods {
        let alive = p.external || p.pid.is_some_and(sys::alive);
        world.pods.push(PodInfo {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: p.node.clone(),
            labels: p.labels.clone(),
            ips: p.ips.clone(),
            ready: alive,
        });
    }
    let chains: Vec<ChainRef> = st
        .chains
        .iter()
        .map(|c| ChainRef {
            namespace: c.metadata.namespace.as_deref().unwrap_or("default"),
            name: c.metadata.name.as_deref().unwrap_or_default(),
            spec: &c.spec,
        })
        .collect();
    let compiled = compiler::compile(&world, &chains);
    for n in &st.nodes {
        let tables = compiled.nodes.get(&n.name).cloned().unwrap_or_default();
        let peers = st
            .nodes
            .iter()
            .filter(|p| p.name != n.name)
            .map(|p| Peer { node: p.name.clone(), locator: p.locator, underlay: p.underlay6 })
            .collect();
        node_api::call(&n.socket, &Request::Program(NodeProgram { tables, peers }), DAEMON_TIMEOUT)
            .with_context(|| format!("program node {}", n.name))?;
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    for c in &mut st.chains {
        let v = compiled
            .chains
            .iter()
            .find(|v| Some(&v.name) == c.metadata.name.as_ref() && Some(&v.namespace) == c.metadata.namespace.as_ref())
            .expect("compiled every chain");
        c.status = Some(v.status(c.metadata.generation, now.clone()));
    }
    st.save(dir)?;
    let failed: Vec<String> =
        compiled.chains.iter().filter(|v| !v.ready).map(|v| format!("{}/{}: {:?}: {}", v.namespace, v.name, v.reason, v.message)).collect();
    if !failed.is_empty() {
        bail!("chains not programmed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn node_sids(n: &NodeState) -> anyhow::Result<NodeSids> {
    match node_api::call(&n.socket, &Request::Sids, DAEMON_TIMEOUT).with_context(|| format!("node {}", n.name))? {
        Response::Sids(s) => Ok(s),
        other => bail!("node {}: unexpected answer {other:?}", n.name),
    }
}

fn node_stats(n: &NodeState) -> anyhow::Result<NodeStats> {
    match node_api::call(&n.socket, &Request::Stats, DAEMON_TIMEOUT).with_context(|| format!("node {}", n.name))? {
        Response::Stats(s) => Ok(s),
        other => bail!("node {}: unexpected answer {other:?}", n.name),
    }
}

// ------------------------------------------------------------------------------------- apply

fn apply(dir: &Path, file: &Path) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let known: Vec<String> = st.nodes.iter().map(|n| n.name.clone()).collect();
    let m = manifest::parse(&text, &known).with_context(|| format!("{}", file.display()))?;
    if !m.nodes.is_empty() {
        bail!("lab apply takes Pods and ServiceChains; nodes come from `lab up`");
    }
    for p in &m.pods {
        if !st.pods.iter().any(|x| x.namespace == p.namespace && x.name == p.name) {
            create_pod(&mut st, dir, p).with_context(|| format!("pod {}/{}", p.namespace, p.name))?;
        }
    }
    wait_for_dad(&st)?;
    for i in 0..st.pods.len() {
        start_pod(&mut st, dir, i)?;
    }
    if let Some(k) = &st.kubeconfig {
        let result = sync_kube(&st, &kube::Cluster::connect(k)?, &m.chains);
        print!("{}", status_text(&st, &lab_view(&st)));
        return result;
    }
    for c in m.chains {
        let same = |x: &srv6pipes_crds::ServiceChain| x.metadata.name == c.metadata.name && x.metadata.namespace == c.metadata.namespace;
        match st.chains.iter_mut().find(|x| same(x)) {
            Some(old) => *old = c,
            None => st.chains.push(c),
        }
    }
    let result = program(&mut st, dir);
    print!("{}", status_text(&st, &lab_view(&st)));
    result
}

// -------------------------------------------------------------------------------------- down

fn down(name: &str, dir: &Path) -> anyhow::Result<()> {
    let Some(st) = LabState::load(dir)? else {
        eprintln!("lab {name} is not up (no state in {})", dir.display());
        return Ok(());
    };
    teardown(&st, dir)?;
    eprintln!("lab {name} is down");
    Ok(())
}

/// Removes everything in `st`, best effort: every step runs, errors are reported together.
fn teardown(st: &LabState, dir: &Path) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    };
    for p in st.pods.iter().filter(|p| !p.external) {
        if let Some(pid) = p.pid {
            sys::stop_group(pid);
        }
        let Some(node) = st.node(&p.node) else { continue };
        for ifname in &p.chain_ifaces {
            note(cni(p, node, "DEL", ifname, &srv6pipes_conf(node, p)).map(|_| ()));
        }
        if p.primary && sys::netns_exists(&node.netns) {
            note(cni(p, node, "DEL", "eth0", &primary_conf(node, dir)).map(|_| ()));
        }
        if sys::netns_exists(&p.netns) {
            note(sys::ip(&["netns", "del", &p.netns]));
        }
    }
    if let Some(pid) = st.operator_pid {
        sys::stop_group(pid);
    }
    if let Some(k) = &st.kubeconfig {
        // An API server that is gone already must not keep the lab's own resources alive.
        if let Err(e) = kube::Cluster::connect(k).and_then(|c| c.unregister(st)) {
            eprintln!("srv6pipes: warning: could not unregister the lab's Nodes and Pods from the API server: {e:#}");
        }
    }
    for n in &st.nodes {
        if let Some(pid) = n.daemon_pid {
            sys::stop_group(pid);
        }
        if let Some(pid) = n.forwarder_pid {
            sys::stop_group(pid);
        }
        if sys::netns_exists(&n.netns) {
            note(sys::ip(&["netns", "del", &n.netns]));
        }
    }
    if let Some(u) = &st.underlay_netns {
        if sys::netns_exists(u) {
            note(sys::ip(&["netns", "del", u]));
        }
    }
    match std::fs::remove_dir_all(&st.pin_root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("remove pins {}: {e}", st.pin_root.display())),
    }
    // The shared parent goes too once no lab or daemon pins anything in it.
    if let Some(parent) = st.pin_root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    if errors.is_empty() {
        return match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", dir.display())),
            _ => Ok(()),
        };
    }
    // Keep the state so a second `down` can finish the job.
    Err(anyhow!("lab down left errors:\n  {}", errors.join("\n  ")))
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

fn restart_node(dir: &Path, node: &str, kill: bool) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    let i = st.nodes.iter().position(|n| n.name == node).ok_or_else(|| anyhow!("no node {node} in lab {}", st.name))?;
    if let Some(pid) = st.nodes[i].daemon_pid.take() {
        if kill {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        sys::stop_group(pid);
    }
    st.save(dir)?;
    start_daemon(&mut st, dir, i)
}

// --------------------------------------------------------------------- what the CLI reads

/// The lab addressed by `which`, when one is up there.
pub fn is_up(which: &Which) -> anyhow::Result<bool> {
    Ok(LabState::load(&which.dir()?)?.is_some())
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
    Ok(ExitCode::from(status.code().unwrap_or(128).clamp(0, 255) as u8))
}
