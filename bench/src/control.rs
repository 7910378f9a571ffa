//! Control-plane latency: CNI ADD of srv6pipes-cni against Debian's ptp, both with host-local
//! IPAM, called exactly as a runtime calls them (in the node's netns, CNI_* environment,
//! configuration on stdin), into fresh network namespaces. Only the ADD is timed; every
//! attachment is deleted (DEL) afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use crate::sys;
use crate::topo::{Bench, Kind};

pub struct CniSamples {
    pub srv6pipes_ms: Vec<f64>,
    pub ptp_ms: Vec<f64>,
}

fn plugin(name: &str, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [bin_dir.join(name), PathBuf::from("/usr/lib/cni").join(name), PathBuf::from("/opt/cni/bin").join(name)];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("CNI plugin {name} not found (apt-get install containernetworking-plugins; cargo build --release)"))
}

fn cni(node_ns: &str, program: &Path, command: &str, netns: &str, id: &str, conf: &serde_json::Value) -> anyhow::Result<f64> {
    let mut cmd = sys::command(node_ns, program, false)?;
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", sys::netns_path(netns))
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("run {}", program.display()))?;
    child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("{} {command} {id}: {} {}", program.display(), String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(ms)
}

/// `n` ADDs of each plugin, alternating, each into its own fresh netns.
pub fn cni_add(b: &mut Bench, n: usize, sut_cpu: usize) -> anyhow::Result<CniSamples> {
    let lane = b.lane("cni", Kind::Srv6pipes { ad_age_ms: 1000 }, sut_cpu)?;
    let socket = lane.socket.clone().expect("daemon");
    let ipam = |subnet: &str, dir: &str| json!({"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": b.dir.join(dir).display().to_string()});
    let ours = json!({"cniVersion": "1.0.0", "name": "bench-srv6pipes", "type": "srv6pipes-cni",
                      "socket": socket.display().to_string(), "ipam": ipam("fd00:cc::/64", "ipam-srv6pipes")});
    let ptp = json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": false,
                     "ipam": ipam("fd00:cd::/64", "ipam-ptp")});
    let (our_bin, ptp_bin) = (plugin("srv6pipes-cni", &b.bin_dir)?, plugin("ptp", &b.bin_dir)?);
    let mut s = CniSamples { srv6pipes_ms: Vec::new(), ptp_ms: Vec::new() };
    for i in 0..n {
        for (which, bin, conf) in [("s", &our_bin, &ours), ("p", &ptp_bin, &ptp)] {
            let netns = format!("{}-c{which}{i}", b.tag);
            sys::ip(None, &format!("netns add {netns}"))?;
            b.cleanup.netns(&netns);
            // As a runtime leaves a sandbox before calling its plugins.
            sys::ip(Some(&netns), "link set lo up")?;
            let id = format!("bench-{which}{i}");
            let ms = cni(&lane.node_ns, bin, "ADD", &netns, &id, conf)?;
            cni(&lane.node_ns, bin, "DEL", &netns, &id, conf)?;
            sys::ip(None, &format!("netns del {netns}"))?;
            if which == "s" { s.srv6pipes_ms.push(ms) } else { s.ptp_ms.push(ms) }
        }
    }
    Ok(s)
}
