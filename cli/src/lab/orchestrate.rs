//! The lab's orchestration: `lab up`, `apply`, `down` and `restart-node` build and tear down
//! nodes and pods as network namespaces, run the real primary CNI (ptp + host-local),
//! srv6pipes-cni and srv6pipes-node, and program the nodes with what the pure compiler makes of
//! the lab's chains (or, in kube mode, register the lab with an API server and let the operator
//! do it). The arguments, the read-only views and `exec` are in `mod.rs`.

use super::*;
// ---------------------------------------------------------------------------------------- up

pub(super) fn up(name: &str, dir: &Path, file: &Path, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
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

/// The datapath attaches with tcx: Linux 6.6 or newer.
const KERNEL_MIN: (u32, u32) = (6, 6);

/// Whether kernel release `release` (as `uname -r` prints it: "6.1.0-18-amd64") is at least
/// `min`; a release that does not parse counts as new enough (the attach then says).
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= min,
        _ => true,
    }
}

pub(super) fn preflight(kube: bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (network namespaces, eBPF)");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !kernel_at_least(release.trim(), KERNEL_MIN) {
        bail!("Linux {} is too old: the datapath attaches with tcx, Linux {}.{} or newer", release.trim(), KERNEL_MIN.0, KERNEL_MIN.1);
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

pub(super) fn cni_path() -> Vec<PathBuf> {
    let from_env = std::env::var("CNI_PATH").unwrap_or_default();
    from_env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).chain(["/usr/lib/cni".into(), "/opt/cni/bin".into()]).collect()
}

pub(super) fn cni_plugin(kind: &str) -> anyhow::Result<PathBuf> {
    cni_path()
        .into_iter()
        .map(|d| d.join(kind))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("CNI plugin {kind} not found in {:?} (apt-get install containernetworking-plugins)", cni_path()))
}

pub(super) fn build(st: &mut LabState, m: &Manifest, dir: &Path) -> anyhow::Result<()> {
    let mut progress = crate::progress::Progress::new("lab up", 2 * m.nodes.len() + 2 * m.pods.len() + 3);
    progress.step("underlay");
    let underlay = format!("{}-underlay", st.name);
    sys::ip(&["netns", "add", &underlay])?;
    st.underlay_netns = Some(underlay.clone());
    st.save(dir)?;
    sys::ip(&["-n", &underlay, "link", "add", "name", "br0", "type", "bridge"])?;
    sys::ip(&["-n", &underlay, "link", "set", "br0", "up"])?;

    for (i, n) in m.nodes.iter().enumerate() {
        progress.step(&format!("node {}", n.name));
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
        progress.step(&format!("node daemon {}", st.nodes[i].name));
        start_daemon(st, dir, i)?;
    }
    for p in &m.pods {
        progress.step(&format!("pod {}/{}", p.namespace, p.name));
        create_pod(st, dir, p)?;
    }
    progress.step("duplicate address detection");
    wait_for_dad(st)?;
    for i in 0..st.pods.len() {
        progress.step(&format!("start pod {}", st.pods[i].name));
        start_pod(st, dir, i)?;
    }
    progress.step(if cluster.is_some() { "chains to the API server" } else { "programming the nodes" });
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
pub(super) fn start_kube(st: &mut LabState, dir: &Path, kubeconfig: &Path) -> anyhow::Result<kube::Cluster> {
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
pub(super) fn sync_kube(st: &LabState, cluster: &kube::Cluster, chains: &[srv6pipes_crds::ServiceChain]) -> anyhow::Result<()> {
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

pub(super) fn chains_or_warn(st: &LabState) -> Vec<srv6pipes_crds::ServiceChain> {
    lab_chains(st).unwrap_or_else(|e| {
        eprintln!("srv6pipes: warning: chains unavailable: {e:#}");
        Vec::new()
    })
}

/// The chains of the lab: from its API server in kube mode.
pub(super) fn lab_chains(st: &LabState) -> anyhow::Result<Vec<srv6pipes_crds::ServiceChain>> {
    match &st.kubeconfig {
        Some(k) => kube::Cluster::connect(k)?.chains(),
        None => Ok(st.chains.clone()),
    }
}

/// IPv6 addresses are unusable while duplicate address detection runs (~1-2 s): ptp's gateway
/// address on the node would not answer neighbour solicitations yet. Wait until none is
/// tentative, so traffic works as soon as `up` returns.
pub(super) fn wait_for_dad(st: &LabState) -> anyhow::Result<()> {
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

pub(super) fn create_node(st: &mut LabState, dir: &Path, underlay: &str, index: usize, n: &LabNode) -> anyhow::Result<()> {
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

pub(super) fn start_daemon(st: &mut LabState, dir: &Path, i: usize) -> anyhow::Result<()> {
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

pub(super) fn create_pod(st: &mut LabState, dir: &Path, p: &LabPod) -> anyhow::Result<()> {
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
pub(super) fn primary_conf(node: &NodeState, dir: &Path) -> Value {
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

pub(super) fn srv6pipes_conf(node: &NodeState, pod: &PodState) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": manifest::NETWORK_NAME,
        "type": "srv6pipes-cni",
        "socket": node.socket.display().to_string(),
        "interfaces": if pod.pair { "pair" } else { "single" },
    })
}

/// Runs a CNI plugin exactly as a runtime does: in the node's netns, CNI_* env, config on stdin.
pub(super) fn cni(pod: &PodState, node: &NodeState, command: &str, ifname: &str, conf: &Value) -> anyhow::Result<Value> {
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

pub(super) fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"].as_array().into_iter().flatten().filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok()).collect()
}

pub(super) fn start_pod(st: &mut LabState, dir: &Path, i: usize) -> anyhow::Result<()> {
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
pub(super) fn resolve_command(program: &str) -> String {
    let ours = crate::bin_dir().join(program);
    if program.starts_with("srv6pipes-") && !program.contains('/') && ours.exists() {
        ours.display().to_string()
    } else {
        program.to_string()
    }
}

/// Compiles every chain with the pure compiler and hands each node daemon its tables.
pub(super) fn program(st: &mut LabState, dir: &Path) -> anyhow::Result<()> {
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
            generation: c.metadata.generation,
        })
        .collect();
    let peers: Vec<Peer> = st.nodes.iter().map(|p| Peer { node: p.name.clone(), locator: p.locator, underlay: p.underlay6 }).collect();
    let planned = srv6::plan::plan(&world, &peers, &chains);
    for n in &st.nodes {
        let program = planned.program(&n.name);
        node_api::call(&n.socket, &Request::Program(program), DAEMON_TIMEOUT).with_context(|| format!("program node {}", n.name))?;
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    for c in &mut st.chains {
        let key = (c.metadata.namespace.clone().unwrap_or_default(), c.metadata.name.clone().unwrap_or_default());
        let v = planned.verdicts.get(&key).expect("compiled every chain");
        c.status = Some(v.status(now.clone()));
    }
    st.save(dir)?;
    let failed: Vec<String> = planned
        .verdicts
        .values()
        .filter(|v| !v.ready)
        .map(|v| format!("{}/{}: {:?}: {}", v.namespace, v.name, v.reason, v.message))
        .collect();
    if !failed.is_empty() {
        bail!("chains not programmed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

pub(super) fn node_sids(n: &NodeState) -> anyhow::Result<NodeSids> {
    match node_api::call(&n.socket, &Request::Sids, DAEMON_TIMEOUT).with_context(|| format!("node {}", n.name))? {
        Response::Sids(s) => Ok(s),
        other => bail!("node {}: unexpected answer {other:?}", n.name),
    }
}

pub(super) fn node_stats(n: &NodeState) -> anyhow::Result<NodeStats> {
    match node_api::call(&n.socket, &Request::Stats, DAEMON_TIMEOUT).with_context(|| format!("node {}", n.name))? {
        Response::Stats(s) => Ok(s),
        other => bail!("node {}: unexpected answer {other:?}", n.name),
    }
}

// ------------------------------------------------------------------------------------- apply

pub(super) fn apply(dir: &Path, file: &Path) -> anyhow::Result<()> {
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

pub(super) fn down(name: &str, dir: &Path) -> anyhow::Result<()> {
    let Some(st) = LabState::load(dir)? else {
        eprintln!("lab {name} is not up (no state in {})", dir.display());
        return Ok(());
    };
    teardown(&st, dir)?;
    eprintln!("lab {name} is down");
    Ok(())
}

/// Removes everything in `st`, best effort: every step runs, errors are reported together.
pub(super) fn teardown(st: &LabState, dir: &Path) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    };
    // Read before any daemon stops: what is left in the lab's namespaces once their own
    // processes are stopped is stopped before each namespace is deleted.
    let procs = sys::processes_by_netns();
    for p in st.pods.iter().filter(|p| !p.external) {
        if let Some(pid) = p.pid {
            sys::stop_group(pid);
        }
        // Without its node's netns (deleted by hand, or by a sweep of a killed run's netns) the
        // plugins, which run in it, cannot run; what they would undo goes with the pod's netns
        // and the node's daemon, both removed below, and the state directory.
        if let Some(node) = st.node(&p.node).filter(|n| sys::netns_exists(&n.netns)) {
            for ifname in &p.chain_ifaces {
                note(cni(p, node, "DEL", ifname, &srv6pipes_conf(node, p)).map(|_| ()));
            }
            if p.primary {
                note(cni(p, node, "DEL", "eth0", &primary_conf(node, dir)).map(|_| ()));
            }
        }
        if sys::netns_exists(&p.netns) {
            sys::stop_netns_processes(&p.netns, &procs);
            note(sys::ip(&["netns", "del", &p.netns]));
        }
    }
    if let Some(pid) = st.operator_pid {
        sys::stop_group(pid);
    }
    // The daemons first: a daemon publishes its SID table again when it goes.
    for pid in st.nodes.iter().filter_map(|n| n.daemon_pid) {
        sys::stop_group(pid);
    }
    if let Some(k) = &st.kubeconfig {
        // An API server that is gone already must not keep the lab's own resources alive.
        if let Err(e) = kube::Cluster::connect(k).and_then(|c| c.unregister(st)) {
            eprintln!("srv6pipes: warning: could not unregister the lab's Nodes and Pods from the API server: {e:#}");
        }
    }
    for n in &st.nodes {
        if let Some(pid) = n.forwarder_pid {
            sys::stop_group(pid);
        }
        if sys::netns_exists(&n.netns) {
            sys::stop_netns_processes(&n.netns, &procs);
            note(sys::ip(&["netns", "del", &n.netns]));
        }
    }
    if let Some(u) = &st.underlay_netns {
        if sys::netns_exists(u) {
            sys::stop_netns_processes(u, &procs);
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

pub(super) fn restart_node(dir: &Path, node: &str, kill: bool) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_tcx_are_refused() {
        assert!(!kernel_at_least("6.1.0-18-amd64", KERNEL_MIN), "Debian 12's");
        assert!(!kernel_at_least("5.15.0-91-generic", KERNEL_MIN));
        assert!(kernel_at_least("6.6.0", KERNEL_MIN));
        assert!(kernel_at_least("6.12.48+deb13-amd64", KERNEL_MIN));
        assert!(kernel_at_least("7.0", KERNEL_MIN));
        assert!(kernel_at_least("unknown", KERNEL_MIN), "the attach says why");
    }
}
