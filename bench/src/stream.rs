//! SRv6 pipes' benchmark (`stream` in the results), the seed's experiments side by side in one
//! lab (two nodes, `srv6pipes lab`): Debian's nginx on n2 serves 1 KB and 10 MB objects to wrk
//! (200 connections) on n1, through
//! - one `srv6pipes-stream` proxy doing `identity` (n1) — `proxy`,
//! - the same hop served by a plain forwarding VNF behind End.AD (n1) — `router`,
//! - two proxies doing `xor` (n1, then n2 undoing it) — `two_proxies_xor`,
//!
//! then, with 1 % loss on every link (a tc-BPF program of our own: this kernel has no netem),
//! one transfer direct versus through the proxy (`lossy_mbps`); each function's MB/s on one
//! core, in process (`functions_mbps`); and the proxy's VmRSS holding 10,000 idle connections
//! (`idle_10k_rss_mb`). Repetitions alternate the variants; a trial that fails is recorded in
//! `failures` and the run goes on.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::stats;
use crate::sys;
use crate::topo::Bench;

static LOSS_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loss.bpf.o"));

pub struct Plan {
    pub reps: usize,
    /// wrk's duration per trial.
    pub secs: u32,
    /// wrk's duration per trial on the lossy links: long enough that a lost SYN (retransmitted
    /// after 1 s) still leaves time to transfer.
    pub lossy_secs: u32,
    /// Connections held open for the RSS measurement.
    pub idle: usize,
    /// MiB each function is timed over.
    pub fn_mib: usize,
}

/// The lab: client, router VNF and proxy `pipe-a` on n1; nginx and proxy `pipe-b` on n2. One
/// server port per variant, so the variants differ only in their chain.
fn lab_yaml(www: &std::path::Path) -> String {
    let nginx = www.join("nginx.conf").display().to_string();
    let pod = |name: &str, node: &str, labels: &str, chain: bool, command: &str| {
        let net = if chain { "\n  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes}" } else { "" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}{net}\nspec:\n  nodeName: {node}\n  containers: [{{name: main, image: busybox, command: [{command}]}}]\n"
        )
    };
    let chain = |name: &str, port: u16, functions: &str| {
        format!(
            "apiVersion: srv6pipes.io/v1alpha1\nkind: ServiceChain\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  sources: {{podSelector: {{matchLabels: {{app: client}}}}}}\n  match: {{destinationPrefixes: [\"fd00:20:2::/64\"], protocol: TCP, destinationPorts: [\"{port}\"]}}\n  functions: [{functions}]\n"
        )
    };
    let xor = |app: &str| {
        format!("{{name: xor-{app}, podSelector: {{matchLabels: {{app: {app}}}}}, stream: {{function: xor, args: {{key: 5a17}}}}}}")
    };
    [
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [\"fd00:20:1::/64\"]}\n".to_string(),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nspec: {podCIDRs: [\"fd00:20:2::/64\"]}\n".to_string(),
        pod("client", "n1", "app: client", false, "\"sleep\", \"infinity\""),
        pod("server", "n2", "app: server", false, &format!("\"nginx\", \"-c\", \"{nginx}\", \"-g\", \"daemon off;\"")),
        pod("pipe-a", "n1", "app: pipe-a", true, "\"srv6pipes-stream\""),
        pod("pipe-b", "n2", "app: pipe-b", true, "\"srv6pipes-stream\""),
        pod("router", "n1", "vnf: router", true, "\"sleep\", \"infinity\""),
        chain("proxy", 8001, "{name: identity, podSelector: {matchLabels: {app: pipe-a}}, stream: {function: identity}}"),
        chain("router", 8002, "{name: router, podSelector: {matchLabels: {vnf: router}}}"),
        chain("two-proxies-xor", 8003, &format!("{}, {}", xor("pipe-a"), xor("pipe-b"))),
    ]
    .join("---\n")
}

/// nginx on ports 8001..8004 (8004: no chain) serving `www`: `/1k` and `/10m`.
fn nginx_conf(www: &std::path::Path, connections: usize) -> String {
    let w = www.display();
    format!(
        "worker_processes 1;\nworker_rlimit_nofile {};\npid {w}/nginx.pid;\nerror_log {w}/error.log;\nevents {{ worker_connections {}; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n  client_body_temp_path {w}/tmp;\n  proxy_temp_path {w}/tmp;\n  \
         fastcgi_temp_path {w}/tmp;\n  uwsgi_temp_path {w}/tmp;\n  scgi_temp_path {w}/tmp;\n  \
         server {{ listen [::]:8001; listen [::]:8002; listen [::]:8003; listen [::]:8004; root {w}; }}\n}}\n",
        connections * 2 + 1024,
        connections + 1024
    )
}

struct Lab {
    name: String,
    client_ns: String,
    server: String,
    proxy_pid: u64,
    netns: BTreeMap<String, String>,
}

impl Lab {
    fn up(b: &mut Bench, idle: usize) -> anyhow::Result<Self> {
        let www = b.dir.join("www");
        std::fs::create_dir_all(www.join("tmp"))?;
        std::fs::write(www.join("1k"), vec![b'k'; 1000])?;
        std::fs::write(www.join("10m"), vec![b'm'; 10_000_000])?;
        std::fs::write(www.join("nginx.conf"), nginx_conf(&www, idle))?;
        let manifest = b.dir.join("pipes.yaml");
        std::fs::write(&manifest, lab_yaml(&www))?;
        let name = format!("{}-pipes", b.tag);
        let cmd = lab_cmd(b, &name);
        let mut down = cmd(&["down"]);
        down.stdout(std::process::Stdio::null());
        b.cleanup.command(down);
        sys::run(&mut cmd(&["up", "-f", &manifest.display().to_string()]))?;
        let status: Value = serde_json::from_str(&sys::run(&mut cmd(&["status", "-o", "json"]))?)?;
        let pod = |n: &str| status["pods"].as_array().and_then(|a| a.iter().find(|p| p["name"] == n)).cloned().unwrap_or_default();
        let netns: BTreeMap<String, String> = status["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["netns"].as_str()?.to_string())))
            .collect();
        let lab = Self {
            client_ns: netns.get("client").cloned().context("client's netns")?,
            server: pod("server")["ips"][0].as_str().context("server's address")?.to_string(),
            proxy_pid: pod("pipe-a")["pid"].as_u64().context("pipe-a's pid")?,
            netns,
            name,
        };
        lab.wait_listening()?;
        Ok(lab)
    }

    /// nginx on its ports, each proxy with its listeners.
    fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = |pod: &str, needle: &str, n: usize| -> bool {
            let Some(ns) = self.netns.get(pod) else { return false };
            let Ok(mut c) = sys::command(ns, "ss", false) else { return false };
            sys::run(c.arg("-Hltn")).map(|o| o.matches(needle).count() >= n).unwrap_or(false)
        };
        while !(listening("server", ":800", 4) && listening("pipe-a", ":4000", 2) && listening("pipe-b", ":4000", 1)) {
            if Instant::now() > deadline {
                bail!("the pipes lab's server and proxies are not listening");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn url(&self, port: u16, object: &str) -> String {
        format!("http://[{}]:{port}/{object}", self.server)
    }

    /// One wrk trial: (requests/s, goodput Mbit/s).
    fn wrk(&self, port: u16, object: &str, connections: usize, secs: u32) -> anyhow::Result<(f64, f64)> {
        let mut c = sys::command(&self.client_ns, "wrk", false)?;
        let threads = connections.min(2).to_string();
        // --timeout: 200 clients of 10 MB objects on two shared cores wait more than wrk's 2 s
        // default for a response, which wrk would count as an error.
        c.args(["-t", &threads, "-c", &connections.to_string(), "-d", &format!("{secs}s"), "--timeout", "30s", &self.url(port, object)]);
        let out = sys::run(&mut c)?;
        parse_wrk(&out).with_context(|| format!("wrk output: {out}"))
    }
}

fn lab_cmd(b: &Bench, name: &str) -> impl Fn(&[&str]) -> Command {
    let bin = b.bin_dir.join("srv6pipes");
    let name = name.to_string();
    move |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(["lab", "--name", &name]).args(args);
        c
    }
}

/// (requests/s, transfer in Mbit/s) from wrk's report; errors (non-2xx, socket errors) fail.
pub fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64)> {
    if let Some(l) = out.lines().find(|l| l.contains("Non-2xx") || l.trim_start().starts_with("Socket errors")) {
        bail!("wrk saw errors: {}", l.trim());
    }
    let field = |name: &str| out.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()));
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let transfer = field("Transfer/sec:").context("no Transfer/sec")?;
    let split = transfer.find(|c: char| c.is_ascii_alphabetic()).context("Transfer/sec unit")?;
    let (n, unit) = transfer.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("Transfer/sec unit {other}"),
    };
    Ok((rps, n.parse::<f64>()? * scale * 8.0 / 1e6))
}

/// What the run measured: samples by name, and what failed.
#[derive(Default)]
struct Samples {
    by: BTreeMap<String, Vec<f64>>,
    failures: Vec<String>,
}

impl Samples {
    fn record(&mut self, name: &str, r: anyhow::Result<f64>) {
        match r {
            Ok(v) => self.by.entry(name.into()).or_default().push(v),
            Err(e) => {
                eprintln!("stream: {name}: {e:#}");
                self.failures.push(format!("{name}: {e:#}"));
            }
        }
    }

    fn summary(&self, name: &str) -> Value {
        self.by.get(name).filter(|v| !v.is_empty()).map_or(Value::Null, |v| json!(stats::summarize(v)))
    }

    fn median(&self, name: &str) -> Value {
        self.by.get(name).filter(|v| !v.is_empty()).map_or(Value::Null, |v| json!(stats::median(v)))
    }

    /// The ratio of paired repetitions (only when both have every repetition).
    fn ratio(&self, a: &str, b: &str) -> Value {
        match (self.by.get(a), self.by.get(b)) {
            (Some(x), Some(y)) if x.len() == y.len() && !x.is_empty() => json!(stats::ratios(x, y)),
            _ => Value::Null,
        }
    }
}

pub fn run(b: &mut Bench, plan: &Plan) -> Value {
    let mut s = Samples::default();
    let functions = functions_mbps(plan.fn_mib);
    let lab = match Lab::up(b, plan.idle) {
        Ok(l) => l,
        Err(e) => {
            return json!({"failures": [format!("the pipes lab: {e:#}")], "functions_mbps": functions});
        }
    };
    let variants = [("proxy", 8001u16), ("router", 8002), ("two_proxies_xor", 8003)];
    for rep in 0..plan.reps {
        eprintln!("stream: repetition {}/{}", rep + 1, plan.reps);
        for (name, port) in variants {
            s.record(&format!("http_1k_rps.{name}"), lab.wrk(port, "1k", 200, plan.secs).map(|r| r.0));
            s.record(&format!("http_10m_mbps.{name}"), lab.wrk(port, "10m", 200, plan.secs).map(|r| r.1));
        }
    }
    let rss = idle_rss_mb(&lab, plan.idle);
    s.record("idle_rss_mb", rss);
    match add_loss(b, &lab) {
        Ok(()) => {
            for _ in 0..plan.reps {
                s.record("lossy_mbps.direct", lab.wrk(8004, "10m", 1, plan.lossy_secs).map(|r| r.1));
                s.record("lossy_mbps.proxy", lab.wrk(8001, "10m", 1, plan.lossy_secs).map(|r| r.1));
            }
        }
        Err(e) => s.failures.push(format!("lossy links: {e:#}")),
    }
    let per = |metric: &str| -> Value {
        json!({
            "proxy": s.median(&format!("{metric}.proxy")),
            "router": s.median(&format!("{metric}.router")),
            "two_proxies_xor": s.median(&format!("{metric}.two_proxies_xor")),
            "proxy/router": s.ratio(&format!("{metric}.proxy"), &format!("{metric}.router")),
            "two_proxies_xor/router": s.ratio(&format!("{metric}.two_proxies_xor"), &format!("{metric}.router")),
            "detail": {
                "proxy": s.summary(&format!("{metric}.proxy")),
                "router": s.summary(&format!("{metric}.router")),
                "two_proxies_xor": s.summary(&format!("{metric}.two_proxies_xor")),
            },
        })
    };
    json!({
        "http_1k_rps": per("http_1k_rps"),
        "http_10m_mbps": per("http_10m_mbps"),
        "lossy_mbps": {
            "direct": s.median("lossy_mbps.direct"),
            "proxy": s.median("lossy_mbps.proxy"),
            "proxy/direct": s.ratio("lossy_mbps.proxy", "lossy_mbps.direct"),
            "detail": {"direct": s.summary("lossy_mbps.direct"), "proxy": s.summary("lossy_mbps.proxy")},
        },
        "functions_mbps": functions,
        "idle_10k_rss_mb": s.median("idle_rss_mb"),
        "idle_connections": plan.idle,
        "failures": s.failures,
        "how": format!(
            "srv6pipes lab, two nodes; wrk -t2 -c200 -d{}s --timeout 30s from n1 to Debian's nginx on n2 (1 KB: requests/s; 10 MB: goodput), {} repetitions alternating the variants; proxy: one srv6pipes-stream identity hop on n1; router: the same hop as a forwarding VNF behind End.AD; two_proxies_xor: xor on n1, xor again on n2; lossy: 1% of the packets dropped at egress of every link (tc-BPF, GSO/TSO off there), one connection of 10 MB objects for {} s, direct vs through the proxy, no added delay; functions: in process, one core, 64 KiB reads, MB/s of the plain text; idle: VmRSS of the proxy holding {} connections idle for 5 s",
            plan.secs, plan.reps, plan.lossy_secs, plan.idle
        ),
    })
}

/// Each function's throughput on one core, in process, in MB/s of the plain text (what a
/// compressing or encoding function reads, what a decompressing or decoding one writes), over
/// `mib` MiB of text in 64 KiB reads.
fn functions_mbps(mib: usize) -> Value {
    let text: Vec<u8> = b"SRv6 pipes chain bytestream functions in transparent TCP proxies, like a Unix pipeline.\n"
        .iter()
        .copied()
        .cycle()
        .take(mib << 20)
        .collect();
    let compressed = |alg: &str| {
        let args = [("algorithm", alg), ("op", "compress")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (_, mut f) = srv6pipes_functions::build("compress", &args).expect("a function");
        srv6pipes_functions::run(f.as_mut(), &text, &[]).expect("compresses")
    };
    let (zstd, gzip) = (compressed("zstd"), compressed("gzip"));
    let base64 = {
        let (_, mut f) = srv6pipes_functions::build("base64", &[("op".to_string(), "encode".to_string())].into()).expect("base64");
        srv6pipes_functions::run(f.as_mut(), &text, &[]).expect("encodes")
    };
    /// (result name, function, arguments, input)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [u8]);
    let cases: [Case; 9] = [
        ("identity", "identity", &[], &text[..]),
        ("base64_encode", "base64", &[("op", "encode")], &text[..]),
        ("base64_decode", "base64", &[("op", "decode")], &base64[..]),
        ("replace", "replace", &[("from", "pipeline"), ("to", "pipe")], &text[..]),
        ("xor", "xor", &[("key", "5a17")], &text[..]),
        ("zstd_compress", "compress", &[("algorithm", "zstd"), ("op", "compress")], &text[..]),
        ("zstd_decompress", "compress", &[("algorithm", "zstd"), ("op", "decompress")], &zstd[..]),
        ("gzip_compress", "compress", &[("algorithm", "gzip"), ("op", "compress")], &text[..]),
        ("gzip_decompress", "compress", &[("algorithm", "gzip"), ("op", "decompress")], &gzip[..]),
    ];
    let mut out = serde_json::Map::new();
    for (name, function, args, input) in cases {
        let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (_, mut f) = srv6pipes_functions::build(function, &args).expect("a function");
        let cuts: Vec<usize> = (1..).map(|i| i * 65536).take_while(|c| *c < input.len()).collect();
        let start = Instant::now();
        let r = srv6pipes_functions::run(f.as_mut(), input, &cuts);
        let secs = start.elapsed().as_secs_f64();
        out.insert(name.into(), r.map_or(Value::Null, |_| json!(text.len() as f64 / 1e6 / secs)));
    }
    Value::Object(out)
}

/// The proxy's VmRSS (MB) while `n` connections through it sit idle for 5 s.
fn idle_rss_mb(lab: &Lab, n: usize) -> anyhow::Result<f64> {
    let to: std::net::SocketAddr = format!("[{}]:8001", lab.server).parse()?;
    let ns = lab.client_ns.clone();
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard.max(soft), hard)?;
    let conns = sys::in_netns(&ns, move || -> anyhow::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(TcpStream::connect_timeout(&to, Duration::from_secs(10)).with_context(|| format!("connection {i}"))?);
        }
        Ok(v)
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.proxy_pid))?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).context("VmRSS")?.trim().trim_end_matches("kB").trim().parse()?;
    drop(conns);
    std::thread::sleep(Duration::from_secs(1));
    Ok(kb / 1024.0)
}

/// 1 % loss at egress of every link the transfers cross: both ends of the client's, the
/// server's and the proxy's veths, and both nodes' uplinks (GSO and TSO off there, so that a
/// drop is one packet, not a burst).
fn add_loss(b: &Bench, lab: &Lab) -> anyhow::Result<()> {
    let obj = b.dir.join("loss.bpf.o");
    std::fs::write(&obj, LOSS_OBJECT)?;
    let obj = obj.display().to_string();
    let mut ends: Vec<(String, String)> = Vec::new();
    for (pod, ifname) in [("client", "eth0"), ("server", "eth0"), ("pipe-a", "net1")] {
        let ns = lab.netns.get(pod).with_context(|| format!("{pod}'s netns"))?;
        ends.push((ns.clone(), ifname.into()));
        // The node side: the veth's peer, found by its index in the node's netns.
        let link = sys::run(sys::command(ns, "ip", false)?.args(["-j", "link", "show", ifname]))?;
        let v: Value = serde_json::from_str(&link)?;
        let peer = v[0]["link_index"].as_u64().context("veth peer index")?;
        let node = if pod == "server" { "n2" } else { "n1" };
        let node_ns = format!("{}-{node}", lab.name);
        let names = sys::run(sys::command(&node_ns, "ip", false)?.args(["-j", "link", "show"]))?;
        let names: Value = serde_json::from_str(&names)?;
        let host = names.as_array().into_iter().flatten().find(|l| l["ifindex"].as_u64() == Some(peer)).context("veth peer")?;
        ends.push((node_ns, host["ifname"].as_str().context("peer name")?.to_string()));
    }
    for node in ["n1", "n2"] {
        ends.push((format!("{}-{node}", lab.name), "eth0".into()));
    }
    for (ns, dev) in ends {
        let _ = sys::run(sys::command(&ns, "ethtool", false)?.args(["-K", &dev, "gso", "off", "tso", "off"]));
        let _ = sys::run(sys::command(&ns, "tc", false)?.args(["qdisc", "add", "dev", &dev, "clsact"]));
        sys::run(sys::command(&ns, "tc", false)?.args([
            "filter",
            "add",
            "dev",
            &dev,
            "egress",
            "bpf",
            "da",
            "obj",
            &obj,
            "sec",
            "classifier",
        ]))
        .with_context(|| format!("loss on {dev} in {ns}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_parse_and_errors_fail() {
        let out = "Running 2s test @ http://[fd00:20:2::2]:8001/1k\n  2 threads and 200 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     4.10ms    1.20ms  20.00ms   80.00%\n  40000 requests in 2.00s, 45.00MB read\nRequests/sec:  20000.50\nTransfer/sec:     22.50MB\n";
        let (rps, mbps) = parse_wrk(out).unwrap();
        assert_eq!(rps, 20000.5);
        assert!((mbps - 22.5 * 1024.0 * 1024.0 * 8.0 / 1e6).abs() < 1e-6);
        assert!(parse_wrk(&format!("{out}  Socket errors: connect 0, read 3, write 0, timeout 0\n")).is_err());
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
    }

    #[test]
    fn the_lab_has_one_chain_per_variant() {
        let y = lab_yaml(std::path::Path::new("/w"));
        for port in ["8001", "8002", "8003"] {
            assert_eq!(y.matches(&format!("destinationPorts: [\"{port}\"]")).count(), 1);
        }
        assert!(!y.contains("8004"), "8004 is the direct path");
        assert!(y.contains("stream: {function: identity}") && y.matches("function: xor").count() == 2);
    }
}
