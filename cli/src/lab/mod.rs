//! `srv6pipes lab`: nodes and pods as network namespaces, the real primary CNI (ptp +
//! host-local), the real srv6pipes-cni and srv6pipes-node, chains compiled by the pure compiler.

mod kube;
mod manifest;
mod state;
mod sys;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use srv6::compiler::{self, ChainRef, NodeInfo, PodInfo, World};
use srv6::node_api::{self, NodeProgram, NodeSids, NodeStats, Peer, Request, Response};

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
    print_text(&st, dir);
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
        print_text(&st, dir);
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
    print_text(&st, dir);
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
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status_json(&st))?),
        Format::Text => print_text(&st, dir),
    }
    Ok(())
}

struct Live {
    sids: BTreeMap<String, NodeSids>,
    stats: BTreeMap<String, NodeStats>,
}

impl Live {
    /// Drops by reason, per node.
    fn drops(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.stats.iter().map(|(n, s)| (n.clone(), s.drops.iter().cloned().collect())).collect()
    }

    /// Datapath events (ICMP errors sent or rate limited, MSS clamps), per node.
    fn events(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.stats.iter().map(|(n, s)| (n.clone(), s.events.iter().cloned().collect())).collect()
    }
}

fn live(st: &LabState) -> Live {
    let mut l = Live { sids: BTreeMap::new(), stats: BTreeMap::new() };
    for n in &st.nodes {
        if let (Ok(s), Ok(c)) = (node_sids(n), node_stats(n)) {
            l.sids.insert(n.name.clone(), s);
            l.stats.insert(n.name.clone(), c);
        }
    }
    l
}

/// Per SID: node, behaviour, owner (pod:interface) and counters.
fn sid_rows(st: &LabState, live: &Live) -> Vec<Value> {
    let mut rows = Vec::new();
    for n in &st.nodes {
        let (Some(sids), Some(stats)) = (live.sids.get(&n.name), live.stats.get(&n.name)) else { continue };
        for c in &stats.sids {
            // A stream SID belongs to the interface whose LOC:FUNCT it carries.
            let funct = n.locator.stream_arg_of(c.sid).map(|a| a.funct);
            let owner = sids.registrations.iter().find(|r| n.locator.funct_of(r.sid) == funct);
            rows.push(json!({
                "node": n.name, "sid": c.sid.to_string(), "behavior": c.behavior, "function": c.function,
                "pod": owner.map(|r| format!("{}/{}", r.pod_namespace, r.pod_name)),
                "interface": owner.map(|r| r.interface.clone()),
                "packets": c.packets, "bytes": c.bytes, "drops": c.drops,
            }));
        }
    }
    rows
}

fn status_json(st: &LabState) -> Value {
    let live = live(st);
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
        "sids": sid_rows(st, &live),
        "streams": stream_rows(&live),
        "drops": live.drops(),
        "events": live.events(),
        "chains": chains_or_warn(st),
    })
}

fn print_sids(rows: &[Value]) {
    let width = rows.iter().filter_map(|r| r["sid"].as_str()).map(str::len).max().unwrap_or(0).max(23);
    println!("{:<width$} NODE        BEHAVIOR    OWNER                   PACKETS     BYTES  DROPS  FUNCTION", "SID");
    for r in rows {
        let owner = match (r["pod"].as_str(), r["interface"].as_str()) {
            (Some(p), Some(i)) => format!("{p}:{i}"),
            _ => "-".into(),
        };
        println!(
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
}

/// Every stream proxy's counters per SID (SRv6 pipes), as their nodes last heard them.
fn stream_rows(live: &Live) -> Vec<Value> {
    let mut rows = Vec::new();
    for (node, s) in &live.stats {
        for c in &s.streams {
            let mut v = serde_json::to_value(c).expect("counters serialize");
            v["node"] = json!(node);
            rows.push(v);
        }
    }
    rows
}

fn print_streams(rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\nSTREAM PROXY            FUNCTION                               ACTIVE  TOTAL FAILED   FWD IN  FWD OUT   REV IN  REV OUT  ERRORS"
    );
    for r in rows {
        let errors: Vec<String> = r["errors"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        let n = |k: &str| r[k].as_u64().unwrap_or_default();
        println!(
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
}

fn print_text(st: &LabState, _dir: &Path) {
    let live = live(st);
    println!("NODE        LOCATOR               UNDERLAY          DAEMON");
    for n in &st.nodes {
        let d = if n.daemon_pid.is_some_and(sys::alive) { "running" } else { "DOWN" };
        println!("{:<11} {:<21} {:<17} {d}", n.name, n.locator.to_string(), n.underlay6.to_string());
    }
    println!("\nPOD                   NODE        IPS");
    for p in &st.pods {
        let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
        let chain = if p.chain_ifaces.is_empty() { String::new() } else { format!("  (+{})", p.chain_ifaces.join(",")) };
        println!("{:<21} {:<11} {}{chain}", format!("{}/{}", p.namespace, p.name), p.node, ips.join(","));
    }
    println!();
    print_sids(&sid_rows(st, &live));
    print_streams(&stream_rows(&live));
    println!("\nCHAIN                 READY  REASON       PATH");
    for c in &chains_or_warn(st) {
        let s = c.status.clone().unwrap_or_default();
        let cond = s.conditions.first();
        let path = s.paths.first().map(|p| p.segments.join(" -> ")).unwrap_or_default();
        println!(
            "{:<21} {:<6} {:<12} {path}",
            format!("{}/{}", c.metadata.namespace.as_deref().unwrap_or_default(), c.metadata.name.as_deref().unwrap_or_default()),
            cond.map(|c| c.status.as_str()).unwrap_or("?"),
            cond.map(|c| c.reason.as_str()).unwrap_or("?"),
        );
    }
    for (node, stats) in &live.stats {
        let drops: Vec<String> = stats.drops.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        if !drops.is_empty() {
            println!("\ndrops on {node}: {}", drops.join(" "));
        }
    }
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

// ------------------------------------------------------------------------------ stats, trace

/// `srv6pipes stats`: per-SID and per-chain packets, bytes and drops, and drops by reason, for
/// every node of the lab.
pub fn stats(which: &Which, format: Format) -> anyhow::Result<()> {
    let st = load(&which.dir()?)?;
    let live = live(&st);
    let chains: Vec<Value> = live
        .stats
        .iter()
        .flat_map(|(node, s)| {
            s.chains.iter().map(move |c| json!({"node": node, "chain": c.chain, "packets": c.packets, "bytes": c.bytes, "drops": c.drops}))
        })
        .collect();
    let drops = live.drops();
    let sids = sid_rows(&st, &live);
    let streams = stream_rows(&live);
    match format {
        Format::Json => {
            let doc = json!({"sids": sids, "streams": streams, "chains": chains, "drops": drops, "events": live.events()});
            println!("{}", serde_json::to_string_pretty(&doc)?)
        }
        Format::Text => {
            print_sids(&sids);
            print_streams(&streams);
            println!("\nCHAIN                   HEADEND       PACKETS      BYTES  DROPS");
            for c in &chains {
                println!(
                    "{:<23} {:<11} {:>9} {:>10} {:>6}",
                    c["chain"].as_str().unwrap_or_default(),
                    c["node"].as_str().unwrap_or_default(),
                    c["packets"].as_u64().unwrap_or_default(),
                    c["bytes"].as_u64().unwrap_or_default(),
                    c["drops"].as_u64().unwrap_or_default()
                );
            }
            for (title, per_node) in [("DROPS BY REASON", &drops), ("EVENTS", &live.events())] {
                println!("\n{title}");
                for (node, counts) in per_node {
                    let nonzero: Vec<String> = counts.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
                    println!("{node:<11} {}", if nonzero.is_empty() { "none".into() } else { nonzero.join(" ") });
                }
            }
        }
    }
    Ok(())
}

/// `srv6pipes trace CHAIN`: the chain's path node by node (sources, headends, each hop's replicas
/// with their SIDs, the decapsulation) with live counters. The trace document of `chain` (NAME or NAMESPACE/NAME) in a lab: the `trace -o json` schema,
/// which `crate::trace` renders.
pub fn trace(which: &Which, chain: &str) -> anyhow::Result<Value> {
    let st = load(&which.dir()?)?;
    let (ns, name) = chain.split_once('/').unwrap_or(("default", chain));
    let c = &find_chain(&st, ns, name)?;
    let key = format!("{ns}/{name}");
    let live = live(&st);
    let status = c.status.clone().unwrap_or_default();
    let sid_counters = |node: &str, sid: &str| live.stats.get(node).and_then(|s| s.sids.iter().find(|x| x.sid.to_string() == sid));
    let counters = |node: &str, sid: &str| -> Value {
        sid_counters(node, sid).map_or(Value::Null, |x| json!({"packets": x.packets, "bytes": x.bytes, "drops": x.drops}))
    };
    // A stream SID: what its proxy applies (from its node), else what its ARG names.
    let function = |node: &str, sid: &str| -> Option<String> {
        sid_counters(node, sid).and_then(|x| x.function.clone()).or_else(|| {
            let (n, sid) = (st.nodes.iter().find(|n| n.name == node)?, srv6::sid::Sid(sid.parse().ok()?));
            srv6::pipes::decode(&n.locator, sid, None)
        })
    };
    let headends: Vec<Value> = live
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
                .map(|r| {
                    let f = function(&r.node, &r.sid);
                    json!({"pod": r.pod, "node": r.node, "sid": r.sid, "function": f, "counters": counters(&r.node, &r.sid)})
                })
                .collect();
            json!({"function": h.function, "replicas": replicas})
        })
        .collect();
    let decap = status.paths.first().and_then(|p| p.segments.last()).map(|sid| {
        let node = st.nodes.iter().find(|n| sid.parse().is_ok_and(|a| n.locator.contains(&a))).map(|n| n.name.clone()).unwrap_or_default();
        json!({"sid": sid, "node": node, "counters": counters(&node, sid)})
    });
    // The chain's source pods, where their node's headend steers them.
    let sources: Vec<Value> = st
        .pods
        .iter()
        .filter(|p| p.namespace == ns && srv6::selector::matches(&c.spec.sources.pod_selector, &p.labels).unwrap_or(false))
        .map(|p| json!({"pod": format!("{}/{}", p.namespace, p.name), "node": p.node}))
        .collect();
    let cond = status.conditions.first();
    Ok(json!({
        "chain": key,
        "ready": cond.map(|c| c.status.as_str()),
        "reason": cond.map(|c| c.reason.as_str()),
        "sources": sources,
        "headends": headends,
        "hops": hops,
        "decap": decap,
    }))
}

fn find_chain(st: &LabState, ns: &str, name: &str) -> anyhow::Result<srv6pipes_crds::ServiceChain> {
    lab_chains(st)?
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name) && c.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .ok_or_else(|| anyhow!("no chain {ns}/{name} in lab {}", st.name))
}

/// `srv6pipes wait`'s probe: the chain's Ready condition (status, reason, message) for its
/// current generation, or None while the operator has not reported on it.
pub fn ready_condition(which: &Which, chain: &str) -> anyhow::Result<Option<(bool, String, String)>> {
    let st = load(&which.dir()?)?;
    let (ns, name) = chain.split_once('/').unwrap_or(("default", chain));
    let c = find_chain(&st, ns, name)?;
    let status = c.status.unwrap_or_default();
    let current = st.kubeconfig.is_none() || status.observed_generation == c.metadata.generation;
    let ready = status.conditions.into_iter().find(|x| x.type_ == "Ready").filter(|_| current);
    Ok(ready.map(|x| (x.status == "True", x.reason, x.message)))
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
