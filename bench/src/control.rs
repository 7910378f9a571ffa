//! Control-plane latency.
//! - CNI ADD of srv6pipes-cni against Debian's ptp and bridge, all with host-local IPAM, called
//!   exactly as a runtime calls them (in the node's netns, CNI_* environment, configuration on
//!   stdin), into fresh network namespaces, and host-local alone (the IPAM they exec). Every
//!   attachment is deleted (DEL) afterwards; srv6pipes-cni's DEL is timed too, and its ADD's
//!   steps (its `SRV6PIPES_CNI_PROFILE` line). Then srv6pipes-cni's ADDs again while the daemon
//!   applies programs of 10,000 SIDs back to back (and how long those take).
//! - A ServiceChain applied with kubectl -> its first steered packet, with many chains present,
//!   in the kube-mode lab ([`KubeLab`]) that the TCP part (`tcp.rs`) runs in too.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::sys;
use crate::topo::{self, sid_packets, Bench, Kind};

pub struct CniSamples {
    pub srv6pipes_ms: Vec<f64>,
    /// srv6pipes-cni's DELs of those attachments.
    pub srv6pipes_del_ms: Vec<f64>,
    /// Each step of srv6pipes-cni's ADDs, by step (steps overlap: IPAM, the registration and the
    /// pod's routing run side by side).
    pub steps_ms: std::collections::BTreeMap<String, Vec<f64>>,
    pub ptp_ms: Vec<f64>,
    pub bridge_ms: Vec<f64>,
    /// host-local alone (the IPAM both plugins exec): the part of an ADD that is not theirs.
    pub ipam_ms: Vec<f64>,
    /// srv6pipes-cni ADDs while the daemon applies large programs back to back.
    pub during_program_ms: Vec<f64>,
    /// Those programs (10,000 SIDs, alternating with 9,999), request to answer.
    pub program_ms: Vec<f64>,
}

fn plugin(name: &str, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [bin_dir.join(name), PathBuf::from("/usr/lib/cni").join(name), PathBuf::from("/opt/cni/bin").join(name)];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("CNI plugin {name} not found (apt-get install containernetworking-plugins; cargo build --release)"))
}

/// One CNI call as a runtime makes it: its time and its stderr.
fn cni(node_ns: &str, program: &Path, command: &str, netns: &str, id: &str, conf: &serde_json::Value) -> anyhow::Result<(f64, String)> {
    let mut cmd = sys::command(node_ns, program, false)?;
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", sys::netns_path(netns))
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id}"))
        .env("SRV6PIPES_CNI_PROFILE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("run {}", program.display()))?;
    child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{} {command} {id}: {} {}", program.display(), String::from_utf8_lossy(&out.stdout).trim(), stderr.trim());
    }
    Ok((ms, stderr))
}

/// The steps of srv6pipes-cni's ADD from its profile line on stderr.
fn add_steps(stderr: &str) -> Vec<(String, f64)> {
    let line = stderr.lines().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v["cni_add_steps_ms"].is_object()));
    let Some(v) = line else { return Vec::new() };
    v["cni_add_steps_ms"].as_object().into_iter().flatten().filter_map(|(k, ms)| Some((k.clone(), ms.as_f64()?))).collect()
}

/// ptp's ADDs: each waits for DAD (~1.8 s, its p50 and p99 alike), so 100 took three minutes
/// of a full run idle, to compare with ADDs 200 times faster: taken in the first 30 rounds.
const PTP_SAMPLES: usize = 30;

/// `n` ADDs and DELs of srv6pipes-cni, bridge and host-local alone (ptp: [`PTP_SAMPLES`] of
/// them), alternating, each into its own fresh netns; then srv6pipes-cni's again while the
/// daemon applies large programs.
pub fn cni_add(b: &mut Bench, n: usize, sut_cpu: usize) -> anyhow::Result<CniSamples> {
    let lane = b.lane("cni", Kind::Srv6pipes { ad_age_ms: 1000 }, sut_cpu)?;
    let socket = lane.socket.clone().expect("daemon");
    let ipam = |subnet: &str, dir: &str| json!({"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": b.dir.join(dir).display().to_string()});
    let ours = json!({"cniVersion": "1.0.0", "name": "bench-srv6pipes", "type": "srv6pipes-cni",
                      "socket": socket.display().to_string(), "ipam": ipam("fd00:cc::/64", "ipam-srv6pipes")});
    let ptp = json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": false,
                     "ipam": ipam("fd00:cd::/64", "ipam-ptp")});
    let bridge = json!({"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": "cnibr0",
                        "ipam": ipam("fd00:cf::/64", "ipam-bridge")});
    let ipam_only = json!({"cniVersion": "1.0.0", "name": "bench-ipam", "type": "host-local", "ipam": ipam("fd00:ce::/64", "ipam-only")});
    let (our_bin, ptp_bin, bridge_bin, ipam_bin) = (
        plugin("srv6pipes-cni", &b.bin_dir)?,
        plugin("ptp", &b.bin_dir)?,
        plugin("bridge", &b.bin_dir)?,
        plugin("host-local", &b.bin_dir)?,
    );
    let mut s = CniSamples {
        srv6pipes_ms: Vec::new(),
        srv6pipes_del_ms: Vec::new(),
        steps_ms: Default::default(),
        ptp_ms: Vec::new(),
        bridge_ms: Vec::new(),
        ipam_ms: Vec::new(),
        during_program_ms: Vec::new(),
        program_ms: Vec::new(),
    };
    // One ADD and DEL of `bin` into a fresh netns: the ADD's time and stderr, the DEL's time.
    let add_del = |b: &mut Bench, which: &str, i: usize, bin: &Path, conf: &serde_json::Value| -> anyhow::Result<((f64, String), f64)> {
        let netns = format!("{}-c{which}{i}", b.tag);
        sys::ip(None, &format!("netns add {netns}"))?;
        b.cleanup.netns(&netns);
        // As a runtime leaves a sandbox before calling its plugins.
        sys::ip(Some(&netns), "link set lo up")?;
        let id = format!("bench-{which}{i}");
        let add = cni(&lane.node_ns, bin, "ADD", &netns, &id, conf)?;
        let (del_ms, _) = cni(&lane.node_ns, bin, "DEL", &netns, &id, conf)?;
        sys::ip(None, &format!("netns del {netns}"))?;
        Ok((add, del_ms))
    };
    for i in 0..n {
        let ((ms, stderr), del_ms) = add_del(b, "s", i, &our_bin, &ours)?;
        s.srv6pipes_ms.push(ms);
        s.srv6pipes_del_ms.push(del_ms);
        for (step, ms) in add_steps(&stderr) {
            s.steps_ms.entry(step).or_default().push(ms);
        }
        if i < PTP_SAMPLES {
            s.ptp_ms.push(add_del(b, "p", i, &ptp_bin, &ptp)?.0 .0);
        }
        s.bridge_ms.push(add_del(b, "b", i, &bridge_bin, &bridge)?.0 .0);
        s.ipam_ms.push(add_del(b, "h", i, &ipam_bin, &ipam_only)?.0 .0);
    }
    // The same ADDs while the daemon applies programs of 10,000 SIDs back to back (each differs
    // from the last): the node is locked only for their map updates.
    let stop = Arc::new(AtomicBool::new(false));
    let programs = {
        let (stop, socket, k) = (stop.clone(), socket.clone(), lane.k);
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let mut ms = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                topo::program_decaps(&socket, k, 10_000 - (ms.len() % 2) as u16)?;
                ms.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(ms)
        })
    };
    let during = (|| -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..n {
            s.during_program_ms.push(add_del(b, "d", i, &our_bin, &ours)?.0 .0);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    s.program_ms = programs.join().map_err(|_| anyhow::anyhow!("the program thread panicked"))??;
    during?;
    topo::program_decaps(&socket, lane.k, 0)?;
    Ok(s)
}

/// The kube-mode lab: two nodes; on n1 a client (chained) and a client2 (never chained), on n2
/// a server (iperf3), one VNF on each node.
const CHAIN_LAB: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: ["fd00:10:1::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: ["fd00:10:2::/64"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: n1
  containers: [{name: main, image: none, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client2, labels: {app: direct}}
spec:
  nodeName: n1
  containers: [{name: main, image: none, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: n2
  containers: [{name: main, image: none, command: ["iperf3", "-s"]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: vnf1
  labels: {vnf: fw1}
  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes}
spec:
  nodeName: n1
  containers: [{name: main, image: none, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: vnf2
  labels: {vnf: fw2}
  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes}
spec:
  nodeName: n2
  containers: [{name: main, image: none, command: ["sleep", "infinity"]}]
"#;
/// Where the server's node's pods live (the measured chains' destination).
const SERVER_PREFIX: &str = "fd00:10:2::/64";

/// A chain from the client through `functions` (VNF labels fw1, fw2) to `destination`.
fn chain_yaml(name: &str, destination: &str, functions: &[&str]) -> String {
    let f: Vec<String> =
        functions.iter().map(|f| format!("{{name: {f}, podSelector: {{matchLabels: {{vnf: {f}}}}}, proxy: Dynamic}}")).collect();
    format!(
        "apiVersion: srv6pipes.io/v1alpha1\nkind: ServiceChain\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         sources: {{podSelector: {{matchLabels: {{app: client}}}}}}\n  match: {{destinationPrefixes: [\"{destination}\"]}}\n  \
         functions: [{}]\n",
        f.join(", ")
    )
}

/// A kube-mode lab (`srv6pipes lab up --kubeconfig`) on a throwaway API server
/// (scripts/apiserver), with `background` chains programmed, each to its own prefix, so each
/// is a headend entry on n1. Torn down by the bench's cleanup.
pub struct KubeLab {
    pub background: usize,
    dir: PathBuf,
    lab: String,
    kubeconfig: PathBuf,
    /// The daemons' sockets, n1 and n2.
    pub(crate) sockets: [PathBuf; 2],
    pub(crate) client_ns: String,
    pub(crate) client2_ns: String,
    pub(crate) server_ip: String,
    /// A process in n1's VNF's netns (its pod command), to read net1's counters through.
    vnf1_pid: u64,
    operator_cpu: ProcessCpu,
    apiserver_cpu: ProcessCpu,
    etcd_cpu: ProcessCpu,
    /// Each growth of the background chains, in order.
    pub growth: Vec<Growth>,
}

/// Chains a kubectl process creates at a time when growing (one `create -f` of a file of them).
const BATCH: usize = 250;
/// kubectl processes creating chains at once. One creates a chain at a time: with the
/// operator writing every chain's status meanwhile, growing to 10,000 chains spent 230 of its
/// 264 s creating them, the operator 8 s of CPU; four at once, 114 of 238 s (2026-12-07).
const CREATORS: usize = 4;

/// The host's CPU ticks from /proc/stat ([`cpu_ticks`] of its `cpu` line).
fn host_ticks() -> anyhow::Result<(u64, u64)> {
    cpu_ticks(&std::fs::read_to_string("/proc/stat")?, "cpu").context("/proc/stat: no cpu line of eight counters")
}

/// The ticks of `/proc/stat` line `cpu` (`cpu` for the host, `cpu1` for CPU 1): (busy, all)
/// of user to steal (guest time is counted in user already); busy is all but idle and iowait.
pub(crate) fn cpu_ticks(stat: &str, cpu: &str) -> Option<(u64, u64)> {
    let fields = stat.lines().map(str::split_whitespace).find_map(|mut f| (f.next() == Some(cpu)).then_some(f))?;
    let ticks: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let all: u64 = ticks.iter().sum();
    (ticks.len() == 8).then(|| (all - ticks[3] - ticks[4], all))
}

/// One growth of the lab's background chains: how long it took and what the lab used
/// meanwhile (where the 10,000-chain part's minutes go).
pub struct Growth {
    pub from: usize,
    pub to: usize,
    pub seconds: f64,
    /// Of which creating the chains ([`KubeLab::create_background`]).
    pub create_seconds: f64,
    pub used: Usage,
}

/// What the lab used: counters read at one moment ([`KubeLab::usage`]), or the difference
/// between two readings ([`Usage::until`]).
pub struct Usage {
    /// The operator's CPU time.
    pub operator_cpu_s: f64,
    /// The API server's and etcd's.
    pub control_plane_cpu_s: f64,
    /// The host's CPU ticks, busy and all ([`host_ticks`]).
    host: (u64, u64),
    /// The operator's writes by kind ([`operator_writes_by_kind`]).
    pub writes: BTreeMap<&'static str, u64>,
}

impl Usage {
    /// What was used from this reading to `later`.
    fn until(&self, later: &Usage) -> Usage {
        let ((busy0, all0), (busy1, all1)) = (self.host, later.host);
        let host = (busy1.saturating_sub(busy0), all1.saturating_sub(all0));
        let writes = later.writes.iter().map(|(k, n)| (*k, n.saturating_sub(self.writes.get(k).copied().unwrap_or(0)))).collect();
        Usage {
            operator_cpu_s: later.operator_cpu_s - self.operator_cpu_s,
            control_plane_cpu_s: later.control_plane_cpu_s - self.control_plane_cpu_s,
            host,
            writes,
        }
    }

    /// The share of the host's CPU time that was busy (not idle or waiting for I/O): of the
    /// time between two readings for a difference ([`Usage::until`]), since boot for one.
    pub fn host_busy(&self) -> f64 {
        self.host.0 as f64 / self.host.1.max(1) as f64
    }
}

impl KubeLab {
    pub fn up(b: &mut Bench, background: usize) -> anyhow::Result<Self> {
        let dir = b.dir.join("kube");
        std::fs::create_dir_all(&dir)?;
        let api = dir.join("api");
        let mut down = Command::new("scripts/apiserver");
        down.arg("down").arg(&api);
        b.cleanup.command(down);
        sys::run(Command::new("scripts/apiserver").arg("up").arg(&api))?;
        let kubeconfig = api.join("kubeconfig");
        let lab = format!("{}-kube", b.tag);
        let srv6pipes = b.bin_dir.join("srv6pipes");
        let lab_cmd = |args: &[&str]| {
            let mut c = Command::new(&srv6pipes);
            c.args(["lab", "--name", &lab]).args(args);
            c
        };
        b.cleanup.command(lab_cmd(&["down"]));
        let manifest = dir.join("lab.yaml");
        std::fs::write(&manifest, CHAIN_LAB)?;
        sys::run(&mut lab_cmd(&["up", "-f", &manifest.display().to_string(), "--kubeconfig", &kubeconfig.display().to_string()]))?;
        let status: serde_json::Value = serde_json::from_str(&sys::run(&mut lab_cmd(&["status", "-o", "json"]))?)?;
        let item =
            |list: &str, n: &str| status[list].as_array().and_then(|a| a.iter().find(|x| x["name"] == n)).cloned().unwrap_or_default();
        let text = |v: &serde_json::Value, what: &str| v.as_str().map(String::from).with_context(|| format!("{what} in lab status"));
        let (n1, n2) = (item("nodes", "n1"), item("nodes", "n2"));
        let mut k = Self {
            background: 0,
            sockets: [text(&n1["daemon"]["socket"], "n1's socket")?.into(), text(&n2["daemon"]["socket"], "n2's socket")?.into()],
            client_ns: text(&item("pods", "client")["netns"], "client's netns")?,
            client2_ns: text(&item("pods", "client2")["netns"], "client2's netns")?,
            server_ip: text(&item("pods", "server")["ips"][0], "server's address")?,
            vnf1_pid: item("pods", "vnf1")["pid"].as_u64().context("vnf1's pid in lab status")?,
            operator_cpu: Default::default(),
            apiserver_cpu: Default::default(),
            etcd_cpu: Default::default(),
            growth: Vec::new(),
            dir,
            lab,
            kubeconfig,
        };
        k.grow(background)?;
        Ok(k)
    }

    /// Adds background chains up to `total` ([`CREATORS`] kubectl processes at a time), then
    /// waits until n1 has programmed them all and every chain is Ready (the operator's status
    /// writes done).
    pub fn grow(&mut self, total: usize) -> anyhow::Result<()> {
        let from = self.background;
        let baseline = self.usage();
        let started = Instant::now();
        if total > from {
            eprintln!("kube lab: {from} -> {total} background chains");
        }
        self.create_background(total)?;
        let create_seconds = started.elapsed().as_secs_f64();
        let timeout = Duration::from_secs(600 + total as u64 / 10);
        // Every 2 s: each look lists every chain or slice, which loads the API server and the
        // CPUs the operator needs.
        let every = Duration::from_secs(2);
        let waited = self.wait(&format!("n1 to program {total} chains"), timeout, every, &|| self.programmed(total)).and_then(|()| {
            self.wait(&format!("{total} chains to be Ready"), timeout, every, &|| {
                Ok(self.readiness()?.iter().filter(|(k, _)| k.starts_with("True/")).map(|(_, n)| n).sum::<usize>() == total)
            })
        });
        if let Err(e) = waited {
            return Err(e.context(self.post_mortem()));
        }
        self.background = total;
        let seconds = started.elapsed().as_secs_f64();
        if total <= from {
            return Ok(());
        }
        // Best effort: the chains are there whether or not what they cost could be read.
        match baseline.and_then(|b| Ok(b.until(&self.usage()?))) {
            Ok(used) => {
                let growth = Growth { from, to: total, seconds, create_seconds, used };
                eprintln!(
                    "kube lab: {total} background chains Ready and programmed in {seconds:.0} s ({create_seconds:.0} s creating them; CPU: operator {:.0} s, API server and etcd {:.0} s, host {:.0} % busy; operator writes {:?})",
                    growth.used.operator_cpu_s,
                    growth.used.control_plane_cpu_s,
                    growth.used.host_busy() * 100.0,
                    growth.used.writes
                );
                self.growth.push(growth);
            }
            Err(e) => eprintln!("kube lab: {total} background chains Ready and programmed in {seconds:.0} s; not recorded: {e:#}"),
        }
        Ok(())
    }

    /// What the lab has used so far (see [`Usage`]).
    fn usage(&self) -> anyhow::Result<Usage> {
        Ok(Usage {
            operator_cpu_s: self.operator_cpu_ms()? / 1000.0,
            control_plane_cpu_s: self.control_plane_cpu_ms()? / 1000.0,
            host: host_ticks()?,
            writes: operator_writes_by_kind(&self.kubeconfig)?,
        })
    }

    /// Creates background chains `self.background..total`: [`CREATORS`] kubectl processes at a
    /// time, each a batch of [`BATCH`].
    fn create_background(&self, total: usize) -> anyhow::Result<()> {
        let firsts: Vec<usize> = (self.background..total).step_by(BATCH).collect();
        for (wave, firsts) in firsts.chunks(CREATORS).enumerate() {
            let mut files = Vec::new();
            for (k, &first) in firsts.iter().enumerate() {
                let file = self.dir.join(format!("background-{k}.yaml"));
                let docs: Vec<String> = (first..total.min(first + BATCH))
                    .map(|i| chain_yaml(&format!("bg-{i}"), &format!("fd00:99:{i:x}::/64"), &["fw1"]))
                    .collect();
                std::fs::write(&file, docs.join("---\n"))?;
                files.push(file.display().to_string());
            }
            let mut children = Vec::new();
            for file in &files {
                match self.kubectl(&["create", "-f", file]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
                    Ok(child) => children.push(child),
                    Err(e) => {
                        // None left creating chains behind the error.
                        for mut c in children {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        return Err(e).context("run kubectl");
                    }
                }
            }
            // Every creator waited for before any failure is told.
            let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output()).collect();
            for out in outs {
                let out = out.context("wait for kubectl")?;
                if !out.status.success() {
                    bail!("kubectl create, wave {wave} of chains from {}: {}", firsts[0], String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        Ok(())
    }

    /// The chains by their Ready condition's status and reason ("True/Programmed",
    /// "False/ProgramFailed"; "/" for a chain without the condition yet), with counts.
    fn readiness(&self) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        let ready = r#"{.status.conditions[?(@.type=="Ready")]}"#.replace('}', "");
        let path = format!("jsonpath={{range .items[*]}}{ready}.status}}/{ready}.reason}}{{\"\\n\"}}{{end}}");
        let out = sys::run(&mut self.kubectl(&["get", "servicechains", "-o", &path]))?;
        let mut by = std::collections::BTreeMap::new();
        for line in out.lines() {
            *by.entry(line.to_string()).or_insert(0) += 1;
        }
        Ok(by)
    }

    /// What is known when growing failed: the chains' readiness, whether the operator runs,
    /// and where the lab's logs were kept (copied: the bench's cleanup removes the lab).
    fn post_mortem(&self) -> String {
        let readiness = self.readiness().map_or_else(|e| format!("unknown ({e:#})"), |r| format!("{r:?}"));
        let operator = self.operator_cpu_ms().map_or_else(|e| format!("{e:#}"), |ms| format!("running, {:.0} s CPU", ms / 1000.0));
        let kept = std::env::temp_dir().join(format!("srv6pipes-{}-logs", self.lab));
        let _ = std::fs::remove_dir_all(&kept);
        let logs = format!("/run/srv6pipes/labs/{}/logs", self.lab);
        let copied = Command::new("cp").arg("-r").arg(&logs).arg(&kept).status().is_ok_and(|s| s.success());
        let logs = if copied { format!("logs kept in {}", kept.display()) } else { format!("{logs} not copied") };
        format!("chains by readiness {readiness}; operator {operator}; {logs}")
    }

    /// CPU time the lab's operator has used (see [`ProcessCpu`]).
    fn operator_cpu_ms(&self) -> anyhow::Result<f64> {
        let pattern = format!("srv6pipes-operator --kubeconfig {}", self.kubeconfig.display());
        let pid = sys::run(Command::new("pgrep").args(["-f", &pattern]))?;
        let pid = pid.split_whitespace().next().context("the lab's operator is not running")?;
        self.operator_cpu.ms(pid.parse()?)
    }

    /// CPU time the lab's API server and etcd have used (their pid files, scripts/apiserver's).
    fn control_plane_cpu_ms(&self) -> anyhow::Result<f64> {
        let mut ms = 0.0;
        for (process, cpu) in [("apiserver", &self.apiserver_cpu), ("etcd", &self.etcd_cpu)] {
            let file = self.kubeconfig.with_file_name(format!("{process}.pid"));
            let pid = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            ms += cpu.ms(pid.trim().parse().with_context(|| format!("{}: not a pid", file.display()))?)?;
        }
        Ok(ms)
    }

    fn operator_writes(&self) -> anyhow::Result<u64> {
        operator_writes(&self.kubeconfig)
    }
}

/// CPU time a process has used: every thread's (/proc/PID/task/*/schedstat, in ns), those that
/// have exited since an earlier call included with what they had used then. (Summing only the
/// live threads went backwards when one exited: tokio's blocking threads come and go.)
#[derive(Default)]
pub struct ProcessCpu {
    threads: std::cell::RefCell<std::collections::HashMap<String, u64>>,
}

impl ProcessCpu {
    pub fn ms(&self, pid: u32) -> anyhow::Result<f64> {
        let mut threads = self.threads.borrow_mut();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                threads.insert(task.file_name().to_string_lossy().into_owned(), ns);
            }
        }
        Ok(threads.values().sum::<u64>() as f64 / 1e6)
    }
}

/// Writes the API server of `kubeconfig` has served of the kinds only the operator writes:
/// program slices (not their status: the daemons'), chain status and finalizer patches (not
/// the chain's create or delete: the user's), Events, Node patches (locators), program
/// deletions. From the API server's `apiserver_request_total`; Lease renewals are left out.
pub fn operator_writes(kubeconfig: &Path) -> anyhow::Result<u64> {
    Ok(operator_writes_by_kind(kubeconfig)?.values().sum())
}

/// [`operator_writes`] by kind: "slices" (program slices and programs), "chain_status" (chain
/// status and finalizer patches), "events", "nodes".
pub fn operator_writes_by_kind(kubeconfig: &Path) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let metrics = sys::run(Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(["get", "--raw", "/metrics"]))?;
    let mut by = BTreeMap::new();
    for (kind, n) in metrics.lines().filter_map(operator_write) {
        *by.entry(kind).or_insert(0) += n;
    }
    Ok(by)
}

/// The kind and count of one `apiserver_request_total` sample line if it is a write only the
/// operator makes (see [`operator_writes`]).
fn operator_write(line: &str) -> Option<(&'static str, u64)> {
    let rest = line.strip_prefix("apiserver_request_total{")?;
    let (labels, value) = rest.split_once("} ")?;
    let label = |k: &str| labels.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'));
    let (group, resource, sub, verb) = (label("group")?, label("resource")?, label("subresource").unwrap_or(""), label("verb")?);
    let write = matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE");
    let kind = match (group, resource, sub) {
        ("srv6pipes.io", "nodeprogramslices", "") | ("srv6pipes.io", "nodeprograms", "") => Some("slices"),
        ("srv6pipes.io", "servicechains", _) if matches!(verb, "PUT" | "PATCH" | "APPLY") => Some("chain_status"),
        ("events.k8s.io", "events", _) => Some("events"),
        ("", "nodes", "") if matches!(verb, "PATCH" | "APPLY") => Some("nodes"),
        _ => None,
    };
    Some((kind.filter(|_| write)?, value.trim().parse::<f64>().ok()? as u64))
}

/// What one change costs the operator.
pub struct ChangeCost {
    /// API writes per change (see [`operator_writes`]).
    pub writes: Vec<f64>,
    /// Operator CPU per change, ms.
    pub cpu_ms: Vec<f64>,
}

/// Costs of `samples` changes with the lab's background chains present: each sample creates a
/// chain (one change) and deletes it (another), and counts from just before the kubectl call
/// until the operator has written nothing for 2 s (the chain Ready, or gone).
pub fn change_cost(k: &KubeLab, samples: usize) -> anyhow::Result<ChangeCost> {
    let mut out = ChangeCost { writes: Vec::new(), cpu_ms: Vec::new() };
    let quiet = || -> anyhow::Result<()> {
        let mut last = (k.operator_writes()?, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(120);
        while last.1.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(200));
            let now = k.operator_writes()?;
            if now != last.0 {
                last = (now, Instant::now());
            }
            if Instant::now() > deadline {
                bail!("change cost: the operator kept writing for 2 minutes");
            }
        }
        Ok(())
    };
    quiet()?;
    for i in 0..samples {
        for create in [true, false] {
            let (writes, cpu) = (k.operator_writes()?, k.operator_cpu_ms()?);
            if create {
                k.create("probe", &["fw1"])?;
                k.wait(&format!("the probe chain Ready (sample {i})"), Duration::from_secs(120), Duration::from_millis(200), &|| {
                    let ready = sys::run(&mut k.kubectl(&[
                        "get",
                        "servicechain",
                        "probe",
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ]))?;
                    Ok(ready == "True")
                })?;
            } else {
                k.delete("probe")?;
            }
            quiet()?;
            out.writes.push((k.operator_writes()? - writes) as f64);
            out.cpu_ms.push(k.operator_cpu_ms()? - cpu);
            eprintln!(
                "  change {} ({}): {} writes, {:.0} ms operator CPU",
                2 * i + usize::from(!create) + 1,
                if create { "create" } else { "delete" },
                out.writes.last().unwrap_or(&0.0),
                out.cpu_ms.last().unwrap_or(&0.0)
            );
        }
    }
    Ok(out)
}

impl KubeLab {
    fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        c
    }

    /// n1's program (its slices) has exactly `headends` chains and its daemon reports every
    /// slice applied.
    pub(crate) fn programmed(&self, headends: usize) -> anyhow::Result<bool> {
        let list = sys::run(&mut self.kubectl(&["get", "nodeprogramslices", "-l", "srv6pipes.io/node=n1", "-o", "json"]))?;
        let slices: serde_json::Value = serde_json::from_str(&list)?;
        let items = slices["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        let count: usize = items.iter().map(|p| p["spec"]["tables"]["headends"].as_array().map_or(0, |h| h.len())).sum();
        Ok(!items.is_empty() && count == headends && items.iter().all(|p| p["status"]["observedGeneration"] == p["metadata"]["generation"]))
    }

    /// Waits until `f` holds, looking `every` so often.
    pub(crate) fn wait(&self, what: &str, timeout: Duration, every: Duration, f: &dyn Fn() -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !f()? {
            if Instant::now() > deadline {
                bail!("kube lab: {what} within {timeout:?}");
            }
            std::thread::sleep(every);
        }
        Ok(())
    }

    /// Creates chain `name` through `functions` for the server's prefix.
    pub(crate) fn create(&self, name: &str, functions: &[&str]) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, chain_yaml(name, SERVER_PREFIX, functions))?;
        sys::run(&mut self.kubectl(&["create", "-f", &file.display().to_string()])).map(drop)
    }

    /// Deletes chain `name` and waits until n1's program no longer has it.
    pub(crate) fn delete(&self, name: &str) -> anyhow::Result<()> {
        sys::run(&mut self.kubectl(&["delete", "servicechain", name, "--timeout=60s"]))?;
        self.wait(&format!("n1 to unprogram chain {name}"), Duration::from_secs(60), Duration::from_millis(200), &|| {
            self.programmed(self.background)
        })
    }
}

pub struct ChainApply {
    /// `kubectl create` of the chain started -> the VNF's SID counted a packet of the flow.
    pub ms: Vec<f64>,
    /// Of which `kubectl create` itself (process start to exit).
    pub kubectl_ms: Vec<f64>,
}

/// Packets `ifname` received in the netns of process `pid` (/proc/PID/net/dev: a file read,
/// cheap enough to poll every millisecond, unlike the daemon's full stats).
fn rx_packets(pid: u64, ifname: &str) -> anyhow::Result<u64> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).with_context(|| format!("read /proc/{pid}/net/dev"))?;
    dev.lines()
        .find_map(|l| {
            l.trim_start().strip_prefix(ifname)?.strip_prefix(':').map(|rest| rest.split_whitespace().nth(1).map(str::parse::<u64>))
        })
        .flatten()
        .transpose()?
        .with_context(|| format!("no {ifname} in /proc/{pid}/net/dev"))
}

/// Chain applied -> first steered packet. The client pings the server every 2 ms, unchained.
/// Each sample creates a chain for the server's prefix through n1's VNF with kubectl and times
/// until the VNF's net1 receives a packet that n1's SIDs counted (the background chains carry
/// nothing), then deletes it.
pub fn chain_apply(k: &KubeLab, samples: usize) -> anyhow::Result<ChainApply> {
    let mut ping = sys::command(&k.client_ns, "ping", false)?;
    ping.args(["-6", "-q", "-i", "0.002", &k.server_ip]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut ping = ping.spawn().context("run ping")?;
    let result = (|| {
        let mut out = ChainApply { ms: Vec::new(), kubectl_ms: Vec::new() };
        for i in 0..samples {
            let before = sid_packets(&k.sockets[0])?;
            let mut rx = rx_packets(k.vnf1_pid, "net1")?;
            std::thread::sleep(Duration::from_millis(100));
            if sid_packets(&k.sockets[0])? != before {
                bail!("chain apply: n1's SIDs count packets with no chain for the flow (sample {i})");
            }
            let start = Instant::now();
            k.create("probe", &["fw1"])?;
            out.kubectl_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            let steered = loop {
                let (now, at) = (rx_packets(k.vnf1_pid, "net1")?, start.elapsed());
                if at > Duration::from_secs(60) {
                    bail!("chain apply: no packet steered within 60 s of creating the chain (sample {i})");
                }
                // Something reached the VNF: steered if the proxy SID counted it (its counter
                // moves before the packet is passed on), else a stray (neighbor discovery).
                if now != rx {
                    if sid_packets(&k.sockets[0])? != before {
                        break at;
                    }
                    rx = now;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            out.ms.push(steered.as_secs_f64() * 1000.0);
            eprintln!("  chain apply sample {}: {:.0} ms", i + 1, steered.as_secs_f64() * 1000.0);
            k.delete("probe")?;
        }
        Ok(out)
    })();
    let _ = ping.kill();
    let _ = ping.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::{cpu_ticks, operator_write};

    #[test]
    fn a_cpus_ticks_are_read_from_its_own_line() {
        let stat = "cpu  100 1 50 900 10 2 3 4 5 6\ncpu0 60 0 30 400 5 1 2 2 5 6\ncpu1 40 1 20 500 5 1 1 2 0 0\nintr 1 2\n";
        assert_eq!(cpu_ticks(stat, "cpu"), Some((160, 1070)));
        assert_eq!(cpu_ticks(stat, "cpu1"), Some((65, 570)));
        assert_eq!(cpu_ticks(stat, "cpu2"), None);
        assert_eq!(cpu_ticks("cpu0 1 2 3\n", "cpu0"), None);
    }

    #[test]
    fn only_the_operators_writes_count() {
        let line = |group: &str, resource: &str, sub: &str, verb: &str| {
            format!(
                "apiserver_request_total{{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"{group}\",resource=\"{resource}\",scope=\"resource\",subresource=\"{sub}\",verb=\"{verb}\",version=\"v1\"}} 7"
            )
        };
        for (l, counted) in [
            (line("srv6pipes.io", "nodeprogramslices", "", "APPLY"), Some(("slices", 7))),
            (line("srv6pipes.io", "nodeprogramslices", "", "DELETE"), Some(("slices", 7))),
            (line("srv6pipes.io", "nodeprogramslices", "status", "APPLY"), None),
            (line("srv6pipes.io", "servicechains", "status", "APPLY"), Some(("chain_status", 7))),
            (line("srv6pipes.io", "servicechains", "", "PATCH"), Some(("chain_status", 7))),
            (line("srv6pipes.io", "servicechains", "", "POST"), None),
            (line("srv6pipes.io", "servicechains", "", "DELETE"), None),
            (line("srv6pipes.io", "nodeprogramslices", "", "LIST"), None),
            (line("events.k8s.io", "events", "", "POST"), Some(("events", 7))),
            (line("", "nodes", "", "PATCH"), Some(("nodes", 7))),
            (line("coordination.k8s.io", "leases", "", "PUT"), None),
            (line("srv6pipes.io", "nodesidtables", "", "APPLY"), None),
            ("apiserver_request_duration_seconds_bucket{le=\"1\"} 3".to_string(), None),
        ] {
            assert_eq!(operator_write(&l), counted, "{l}");
        }
    }
}
