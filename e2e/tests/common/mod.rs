//! Helpers shared by the end-to-end tests (each test binary uses a subset).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cargo target profile directory holding the workspace's binaries:
/// target/<profile>/deps/<test>-<hash>  ->  target/<profile>.
pub fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The checkout the tests run in: cargo's run-time CARGO_MANIFEST_DIR first, since a test
/// binary reused from a shared target directory may have been built in another checkout.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().unwrap().to_path_buf()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn has_tool(tool: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The directory of the Kubernetes tools scripts/kube-build builds (once, cached) for
/// `components`: None, with the reason printed, only where they cannot be built (no Go).
pub fn kube_build(components: &[&str]) -> Option<PathBuf> {
    let out = Command::new(repo_root().join("scripts/kube-build")).args(components).output().expect("run scripts/kube-build");
    if !out.status.success() && !has_tool("go") {
        eprintln!("SKIPPED: {components:?} not built, and building them needs Go (scripts/kube-build)");
        return None;
    }
    assert!(out.status.success(), "scripts/kube-build {components:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A loopback address with a TCP port free now, below the kernel's ephemeral range (as
/// scripts/apiserver picks its ports): a port inside it, freed for a process to bind later,
/// could meanwhile be taken by any outgoing connection.
pub fn free_loopback_port() -> std::net::SocketAddr {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|l| l.parse().ok()).filter(|l| *l > 11_000).unwrap_or(32_768);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() ^ std::process::id();
    (0u32..)
        .map(|i| {
            std::net::SocketAddr::from((
                [127, 0, 0, 1],
                10_000 + ((seed.wrapping_add(i.wrapping_mul(7_919))) % (low as u32 - 10_000)) as u16,
            ))
        })
        .find(|a| std::net::TcpListener::bind(a).is_ok())
        .expect("a free port")
}

/// The Helm CLI (scripts/kube-build helm).
pub fn helm() -> Option<PathBuf> {
    kube_build(&["helm"]).map(|bin| bin.join("helm"))
}

/// Why this machine cannot run a lab, if it cannot.
pub fn missing_lab_prerequisite(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if let Some(t) = tools.iter().chain(&["ip", "sysctl"]).find(|t| !has_tool(t)) {
        return Some(format!("{t} is not installed"));
    }
    if !["/usr/lib/cni/ptp", "/opt/cni/bin/ptp"].iter().any(|p| Path::new(p).exists()) {
        return Some("CNI plugins (ptp, host-local) are not installed".into());
    }
    None
}

/// Skips the calling test, saying why, when the lab cannot run here.
#[macro_export]
macro_rules! require_lab {
    ($($tool:expr),*) => {
        if let Some(why) = common::missing_lab_prerequisite(&[$($tool),*]) {
            eprintln!("SKIPPED: the lab needs root and its tools: {why}");
            return;
        }
    };
}

/// A lab with a unique name and state dir, always taken down (even when the test panics).
pub struct Lab {
    pub name: String,
    pub state: PathBuf,
}

impl Lab {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}-{}-{}", std::process::id() % 100_000, tag, N.fetch_add(1, Ordering::SeqCst));
        let state = std::env::temp_dir().join(format!("srv6pipes-e2e-{name}"));
        let bin = target_dir().join("srv6pipes");
        assert!(bin.exists(), "{} missing: run `cargo build --workspace` first", bin.display());
        Self { name, state }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(target_dir().join("srv6pipes"));
        c.arg("lab").arg("--name").arg(&self.name).arg("--state-dir").arg(&self.state).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run srv6pipes")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "srv6pipes lab {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// `srv6pipes lab CMD -f FILE` with `yaml` as the file.
    pub fn run_yaml(&self, cmd: &str, yaml: &str) -> Output {
        static N: AtomicU32 = AtomicU32::new(0);
        let file = self.state.with_extension(format!("{}.yaml", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&file, yaml).unwrap();
        let out = self.run(&[cmd, "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        out
    }

    /// Packet counters of the rules of a VNF's nftables table (e.g. "ip6 vnf"), in order.
    pub fn nft_counters(&self, pod: &str, table: &str) -> Vec<u64> {
        let mut args = vec!["nft", "-j", "list", "table"];
        args.extend(table.split_whitespace());
        let out = self.exec(pod, &args);
        assert!(out.status.success(), "nft in {pod}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule"))
            .map(|r| r["expr"].as_array().unwrap().iter().find_map(|e| e.get("counter")).expect("a counter")["packets"].as_u64().unwrap())
            .collect()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "-o", "json"])).expect("status json")
    }

    pub fn netns(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .map(str::to_string)
            .collect()
    }

    pub fn pin_root(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/srv6pipes/lab-{}", self.name))
    }
}

impl Drop for Lab {
    /// Takes the lab down; when the test failed, first keeps its logs (daemons, operator, pods)
    /// beside the state dir, since `lab down` removes them, and says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.state.with_extension("logs");
            let _ = std::fs::remove_dir_all(&kept);
            let copied = Command::new("cp").arg("-r").arg(self.state.join("logs")).arg(&kept).status();
            if copied.is_ok_and(|s| s.success()) {
                eprintln!("lab {}: logs kept in {}", self.name, kept.display());
            }
        }
        let _ = self.run(&["down"]);
    }
}

pub fn pod_ip(status: &Value, pod: &str, v6: bool) -> String {
    status["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod).unwrap_or_else(|| panic!("pod {pod} in status"))["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .find(|i| i.contains(':') == v6)
        .unwrap_or_else(|| panic!("pod {pod} has an IPv{} address", if v6 { 6 } else { 4 }))
}

pub fn sid_packets(status: &Value, node: &str, behavior: &str) -> u64 {
    status["sids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node"] == node && s["behavior"] == behavior)
        .map(|s| s["packets"].as_u64().unwrap())
        .sum()
}

fn ping_out(lab: &Lab, from: &str, to: &str, count: u32) -> Output {
    let c = count.to_string();
    let fam = if to.contains(':') { "-6" } else { "-4" };
    lab.exec(from, &["ping", fam, "-c", &c, "-i", "0.2", "-W", "2", to])
}

/// Whether every one of `count` pings from `from` to `to` was answered (ping itself exits 0 if
/// any one was). What ping said is printed when one was not.
pub fn ping(lab: &Lab, from: &str, to: &str, count: u32) -> bool {
    let out = ping_out(lab, from, to, count);
    let said = String::from_utf8_lossy(&out.stdout);
    // " 0%": "100% packet loss" has no space before its last 0.
    let every = out.status.success() && said.contains(" 0% packet loss");
    if !every {
        eprintln!("ping {from} -> {to}: {said}{}", String::from_utf8_lossy(&out.stderr));
    }
    every
}

/// Whether `count` pings from `from` to `to` were sent and none was answered (ping exits 1 then;
/// 2 when it could not send, which proves nothing).
pub fn no_reply(lab: &Lab, from: &str, to: &str, count: u32) -> bool {
    let out = ping_out(lab, from, to, count);
    let said = String::from_utf8_lossy(&out.stdout);
    let none = out.status.code() == Some(1) && said.contains(" 100% packet loss");
    if !none {
        eprintln!("ping {from} -> {to}: {said}{}", String::from_utf8_lossy(&out.stderr));
    }
    none
}

/// The examples' `server` pod answers "hello from server" on TCP 8080: once it listens, connect
/// from `from` to `addr` (IPv4 or IPv6) and return what it said.
pub fn hello(lab: &Lab, from: &str, addr: &str) -> String {
    wait_for("the server to listen on 8080", Duration::from_secs(10), || {
        !lab.exec("server", &["ss", "-Hltn", "sport", "=", ":8080"]).stdout.is_empty()
    });
    let target = if addr.contains(':') { format!("TCP6:[{addr}]:8080") } else { format!("TCP4:{addr}:8080") };
    // Read-only (-u): a client that also sent a line could have it arrive after the server
    // closed, which answers with a reset that may discard the greeting unread.
    let out = lab.exec(from, &["socat", "-u", "-T", "10", &format!("{target},connect-timeout=10"), "-"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// srv6pipes' drops on every node, by reason (only the non-zero ones).
pub fn drops(lab: &Lab) -> Vec<(String, String, u64)> {
    let st = lab.status();
    st["drops"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(node, reasons)| reasons.as_object().unwrap().iter().map(move |(r, n)| (node.clone(), r.clone(), n.as_u64().unwrap())))
        .filter(|(_, _, n)| *n > 0)
        .collect()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status row of the proxy SID of `pod` (NAMESPACE/NAME).
pub fn sid_of<'a>(status: &'a Value, pod: &str) -> &'a Value {
    status["sids"].as_array().unwrap().iter().find(|s| s["pod"] == pod).unwrap_or_else(|| panic!("a SID of {pod}"))
}

/// A chain `name` from the server pods back to `prefix`, through the firewall then the ids.
pub fn back_chain(prefix: &str) -> String {
    format!(
        r#"
apiVersion: srv6pipes.io/v1alpha1
kind: ServiceChain
metadata: {{name: back, namespace: default}}
spec:
  sources: {{podSelector: {{matchLabels: {{app: server}}}}}}
  match: {{destinationPrefixes: ["{prefix}"]}}
  functions:
    - {{name: firewall, podSelector: {{matchLabels: {{vnf: firewall}}}}}}
    - {{name: ids, podSelector: {{matchLabels: {{vnf: ids}}}}}}
"#
    )
}

/// A throwaway etcd + kube-apiserver (scripts/apiserver) on free loopback ports, stopped and
/// removed on drop. `None`, with the reason printed, only where it cannot run at all.
pub struct ApiServer {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    pub fn start(tag: &str) -> Option<ApiServer> {
        kube_build(&["kube-apiserver", "etcd"])?;
        let dir = std::env::temp_dir().join(format!("srv6pipes-apiserver-{}-{tag}", std::process::id()));
        let out = Command::new(repo_root().join("scripts/apiserver")).arg("up").arg(&dir).output().expect("run scripts/apiserver");
        let server = ApiServer { kubeconfig: dir.join("kubeconfig"), dir };
        assert!(out.status.success(), "scripts/apiserver up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Some(server)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().expect("run kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn k(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(["apply", "-f", "-"]);
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A leading document marker: kubectl would read flow-style YAML ("{...}") as JSON.
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("---\n{yaml}").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
    }

    /// An object as JSON, or None when it does not exist.
    pub fn get(&self, what: &[&str]) -> Option<Value> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "json", "--show-managed-fields"]);
        let out = self.kubectl(&args);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("kubectl json"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/apiserver")).arg("down").arg(&self.dir).output();
    }
}

/// A sequenced UDP stream (`seqflow`) from one pod to another's port 9000.
pub struct Stream {
    send: Child,
    recv: Child,
}

impl Stream {
    /// `(sender, receiver)` pods; `addr` is the receiver's address; `args` go to `seqflow send`
    /// (`--rate`, `--seconds`, and optionally `--flows`, `--size`, `--gso`).
    pub fn start(lab: &Lab, (from, to): (&str, &str), addr: &str, args: &[&str]) -> Self {
        let seqflow = target_dir().join("seqflow");
        let seqflow = seqflow.to_str().unwrap();
        let bind = if addr.contains(':') { "[::]:9000" } else { "0.0.0.0:9000" };
        let mut recv = lab
            .cmd(&["exec", to, "--", seqflow, "recv", "--bind", bind, "--idle-exit", "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(recv.stderr.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        let target = if addr.contains(':') { format!("[{addr}]:9000") } else { format!("{addr}:9000") };
        let mut cmd = vec!["exec", from, "--", seqflow, "send", "--to", &target];
        cmd.extend_from_slice(args);
        let send = lab.cmd(&cmd).stdout(Stdio::piped()).spawn().unwrap();
        Self { send, recv }
    }

    /// Whether the sender still runs: what a test did meanwhile overlapped the traffic.
    pub fn sending(&mut self) -> bool {
        matches!(self.send.try_wait(), Ok(None))
    }

    /// (the sender's report, the receiver's report)
    pub fn finish(self) -> (Value, Value) {
        let sent = serde_json::from_slice(&self.send.wait_with_output().unwrap().stdout).unwrap();
        let got = serde_json::from_slice(&self.recv.wait_with_output().unwrap().stdout).unwrap();
        (sent, got)
    }
}

/// iperf3 from the client to `server` (`reverse`: the server sends), `extra` arguments; the
/// receiver's report.
pub fn iperf3(lab: &Lab, server: &str, reverse: bool, extra: &[&str]) -> Value {
    assert!(lab.exec("server", &["iperf3", "-s", "-D", "-1"]).status.success());
    wait_for("iperf3 to listen", Duration::from_secs(5), || !lab.exec("server", &["ss", "-Hltn", "sport", "=", ":5201"]).stdout.is_empty());
    let mut args = vec!["iperf3", "-c", server, "-t", "2", "-J"];
    if reverse {
        args.push("-R");
    }
    args.extend_from_slice(extra);
    let out = lab.exec("client", &args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(out.status.success(), "iperf3 to {server} (reverse {reverse}): {report}");
    report["end"]["sum_received"].clone()
}

/// Prometheus' own linter (`promtool check metrics`) accepts `text`: names, suffixes, units,
/// help. Skips, saying so, where promtool is not installed (scripts/deps installs Debian's
/// prometheus).
pub fn promtool_check(text: &str) {
    let spawned =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut lint = match spawned {
        Ok(lint) => lint,
        Err(e) => return eprintln!("skipping promtool check metrics: {e} (scripts/deps installs Debian's prometheus)"),
    };
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// The metric names the chart's Grafana dashboard queries (histograms by their `_bucket`).
pub fn dashboard_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("charts/srv6pipes/dashboards/srv6pipes.json")).unwrap();
    let mut names: Vec<String> =
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("srv6pipes_")).map(String::from).collect();
    names.sort();
    names.dedup();
    names
}

/// A directory of the test's own, removed when dropped (also when the test fails).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir(what: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("srv6pipes-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}
