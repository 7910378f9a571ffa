//! srv6pipes-node: the per-node daemon. Owns the node's SRv6 locator, allocates proxy SIDs,
//! loads and attaches the eBPF datapath, installs headend policies, decapsulation SIDs and routes
//! to other nodes' locators, and serves the CNI plugin on a unix socket.

mod kube;
mod metrics;
mod monitor;
mod net;
mod node;
mod repair;
mod server;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::Ipv6Net;
use srv6::sid::Locator;
use srv6pipes_probe::Health;

/// srv6pipes node daemon.
///
/// Runs in the node's network namespace (on a Kubernetes node: the host, as a hostNetwork
/// DaemonSet; in the lab: each node's netns). Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN
/// for bpffs). State that must survive restarts (SID allocations, the last programming) lives in
/// --state-dir; maps are pinned under --pin-root/<node>.
///
/// Example on a plain host:
///   srv6pipes-node --node-name n1 --locator fcbb:bb00:1::/48 --uplink eth0 \
///     --socket /run/srv6pipes/node.sock --state-dir /var/lib/srv6pipes
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-node", version)]
pub struct Args {
    /// This node's name (used in logs, pin paths and SID registrations).
    #[arg(long, env = "SRV6PIPES_NODE_NAME")]
    pub node_name: String,
    /// This node's SRv6 locator, e.g. fcbb:bb00:1::/48 (FUNCT is the next 16 bits). Required
    /// without --kube; in kube mode it comes from the Node's srv6pipes.io/locator annotation
    /// (and, when given too, must agree with it).
    #[arg(long, required_unless_present_any = ["kube", "kubeconfig"])]
    pub locator: Option<Locator>,
    /// Kube mode: publish this node's SIDs as the NodeSidTable named --node-name and program
    /// what the operator publishes in that node's NodeProgramSlices (instead of taking programs
    /// on the socket). Credentials: --kubeconfig, else KUBECONFIG, ~/.kube/config, in-cluster.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig for kube mode (implies --kube).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The underlay interface facing other nodes; SRv6 to local SIDs arrives here. Required
    /// without --kube; in kube mode the default is the interface holding the Node's InternalIP.
    #[arg(long, required_unless_present_any = ["kube", "kubeconfig"])]
    pub uplink: Option<String>,
    /// Unix socket served to the CNI plugin and the lab (created with mode 0600).
    #[arg(long, default_value = srv6::node_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for state that survives restarts.
    #[arg(long, default_value = "/var/lib/srv6pipes")]
    pub state_dir: PathBuf,
    /// bpffs directory under which this node's maps are pinned (in <pin-root>/<node-name>).
    #[arg(long, default_value = "/sys/fs/bpf/srv6pipes")]
    pub pin_root: PathBuf,
    /// The cluster's locator block: the SR domain whose sources may use this node's SIDs.
    #[arg(long, default_value = "fcbb:bb00::/32")]
    pub cluster_block: Ipv6Net,
    /// Serve Prometheus metrics (per SID, per chain, drops by reason) on this address, e.g.
    /// 0.0.0.0:9464, at /metrics.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve /healthz, /readyz and /stats on this address, e.g. [::]:9465 (kubelet's probes,
    /// and `srv6pipes trace|stats` through the API server; the metrics address answers them
    /// too). /readyz: the datapath is loaded and, in kube mode, the node's current program is
    /// applied (the answer says what is missing); /healthz: the main loop runs (it has not
    /// stalled for 30 s); /stats: the node's counters as JSON (read-only).
    #[arg(long)]
    pub health_addr: Option<std::net::SocketAddr>,
    /// End.AD learning interval in milliseconds: a VNF's cached headers are re-learnt from
    /// inbound packets at most this often (0: on every packet, compare before write), by the
    /// kernel's tick clock: below one tick (1-10 ms by CONFIG_HZ), once per tick.
    #[arg(long, default_value_t = 1000)]
    pub ad_age_ms: u64,
    /// End.AD per-flow cache entries one chain may hold (of 65,536 shared by all), so no chain
    /// can flush the others' flows; beyond it a chain's new flows use the per-interface cache.
    /// 0: no quota.
    #[arg(long, default_value_t = 16384)]
    pub flow_quota: u32,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Kube mode: the DaemonSet this daemon runs in. On SIGTERM the daemon asks the API server
    /// for it: when it is gone or being deleted, or its watch saw it deleted (the release's
    /// deletion may take this daemon's credentials in the same pass; a refused identity alone
    /// never counts), srv6pipes is being uninstalled, and the daemon removes what it put on the node before it
    /// exits: the CNI configuration (with --cni-bin-dir and --cni-conf-dir), the routes to other
    /// nodes' locators, its pinned programs, maps and links, its state and its socket. Any other
    /// SIGTERM (a pod restart, an upgrade, an API server out of reach) leaves all of it, so
    /// traffic keeps flowing.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub daemonset: Option<kube::DaemonSetRef>,
    /// With --daemonset: the host's CNI plugin directory as mounted here (uninstall removes
    /// srv6pipes-cni from it, unless pods still attached need it for their DEL).
    #[arg(long, requires_all = ["daemonset", "cni_conf_dir"])]
    pub cni_bin_dir: Option<PathBuf>,
    /// With --daemonset: the host's CNI configuration directory as mounted here (uninstall
    /// removes srv6pipes-cni's conflist entries from it).
    #[arg(long, requires_all = ["daemonset", "cni_bin_dir"])]
    pub cni_conf_dir: Option<PathBuf>,
    /// The srv6pipes-cni binary that runs the CNI uninstall (the image's copy).
    #[arg(long, default_value = "/opt/srv6pipes/cni/srv6pipes-cni")]
    pub cni_installer: PathBuf,
    /// Kube mode: the network (NetworkAttachmentDefinition, or the name pods' annotation gives in
    /// chained mode) that this node's srv6pipes-cni serves.
    #[arg(long, default_value = "srv6pipes")]
    pub network: String,
    /// Kube mode: after starting, delete this node's pods that ask for --network but came up
    /// without it (started before srv6pipes-cni was installed here: a sandbox gets its CNI ADD
    /// once), when a controller makes them again; name the others in the log. Needs `list` and
    /// `delete` of pods (the chart's admission policy limits a daemon's deletes to its node).
    #[arg(long)]
    pub repair_pods: bool,
    /// The live monitor's limit (`srv6pipes monitor`): at most this many events per second per
    /// CPU; the rest are counted (`monitor_limited` in `srv6pipes stats`). 0: no limit.
    #[arg(long, default_value_t = 1000)]
    pub monitor_rate: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    srv6pipes_probe::init_logging(args.log_json);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let health = Arc::new(Health::new(Duration::from_secs(30), "starting: the node's locator and datapath are not ready yet"));
        let late = server::Late::default();
        if let Some(addr) = args.health_addr {
            let (health, late) = (health.clone(), late.clone());
            srv6pipes_probe::spawn(addr, "/healthz, /readyz, /stats and /monitor", move |target: String| {
                let (health, late) = (health.clone(), late.clone());
                async move { late.answer(&target, &health).await }
            })
            .await?;
        }
        let kube_mode = args.kube || args.kubeconfig.is_some();
        if args.daemonset.is_some() && !kube_mode {
            anyhow::bail!("--daemonset needs kube mode (--kube or --kubeconfig)");
        }
        let (plane, locator, uplink) = if kube_mode {
            let (mut plane, locator) = kube::KubePlane::connect(args.kubeconfig.as_deref(), &args.node_name, args.locator).await?;
            plane.repair_network = args.repair_pods.then(|| args.network.clone());
            let uplink = match &args.uplink {
                Some(u) => u.clone(),
                None => net::interface_with_address(&plane.internal_ips).await?.with_context(|| {
                    format!("no interface holds node {}'s InternalIP {:?}: set --uplink", args.node_name, plane.internal_ips)
                })?,
            };
            (server::ControlPlane::Kube(Box::new(plane)), locator, uplink)
        } else {
            let uplink = args.uplink.clone().expect("clap requires --uplink without --kube");
            (server::ControlPlane::Local, args.locator.expect("clap requires --locator without --kube"), uplink)
        };
        locator.within(args.cluster_block).context("locator")?;
        let node = node::Node::start(&args, locator, uplink).await.with_context(|| format!("start node {}", args.node_name))?;
        let departure = args.daemonset.clone().map(|daemonset| server::Departure {
            daemonset,
            cni: args.cni_bin_dir.clone().zip(args.cni_conf_dir.clone()).map(|(bin_dir, conf_dir)| node::CniUninstall {
                installer: args.cni_installer.clone(),
                bin_dir,
                conf_dir,
            }),
        });
        server::serve(
            &args.socket,
            server::Http { metrics: args.metrics_addr, health, late, monitor_rate: args.monitor_rate },
            node,
            plane,
            departure,
        )
        .await
    })
}
