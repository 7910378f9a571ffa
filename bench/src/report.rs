//! The run's results as JSON (every sample kept), a markdown table and a PNG plot (gnuplot).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::stats::{at_least, at_most, percentile, ratios, summarize, Summary, Verdict};

/// Wall time of a run's parts, each lap from the end of the previous one (what makes the full
/// run's bound of 50 minutes visible part by part).
pub struct Laps {
    last: std::time::Instant,
    pub laps: Vec<(String, f64)>,
}

impl Laps {
    pub fn start() -> Self {
        Laps { last: std::time::Instant::now(), laps: Vec::new() }
    }

    /// Records the seconds since the previous lap (or the start) as `part`'s.
    pub fn lap(&mut self, part: &str) {
        let now = std::time::Instant::now();
        self.laps.push((part.to_string(), now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }
}

/// Seconds by part, as the JSON's `part_seconds` has them.
pub fn seconds(laps: &[(String, f64)]) -> Value {
    Value::Object(laps.iter().map(|(k, s)| (k.clone(), json!((s * 10.0).round() / 10.0))).collect())
}

pub struct Target {
    pub name: String,
    pub what: String,
    pub bound: f64,
    pub at_least: bool,
    pub value: Summary,
}

impl Target {
    pub fn verdict(&self) -> Verdict {
        if self.at_least {
            at_least(&self.value, self.bound)
        } else {
            at_most(&self.value, self.bound)
        }
    }
}

pub fn medians(s: &BTreeMap<String, Vec<f64>>) -> Value {
    s.iter().map(|(k, v)| (k.clone(), json!(summarize(v).median))).collect::<serde_json::Map<_, _>>().into()
}

pub fn details(s: &BTreeMap<String, Vec<f64>>) -> Value {
    s.iter().map(|(k, v)| (k.clone(), json!(summarize(v)))).collect::<serde_json::Map<_, _>>().into()
}

pub fn latency(ms: &[f64]) -> Value {
    json!({"p50": percentile(ms, 50.0), "p99": percentile(ms, 99.0), "max": percentile(ms, 100.0), "samples": ms})
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())));
    json!({
        "cpu_model": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernel": nix::sys::utsname::uname().ok().map(|u| u.release().to_string_lossy().into_owned()),
        "memory_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
    })
}

fn fmt_s(s: &Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

fn fmt_r(s: &Summary) -> String {
    format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max)
}

/// SRv6 pipes' tables: HTTP through a proxy, a router VNF and two xor proxies; lossy links;
/// each function's MB/s; the idle proxy's memory; failures.
pub fn stream_tables(md: &mut String, st: &Value) {
    if st.is_null() {
        return;
    }
    let sum = |v: &Value| serde_json::from_value::<Summary>(v.clone()).ok();
    let cell = |v: &Value| sum(v).map(|s| fmt_s(&s)).unwrap_or_else(|| "failed".into());
    let ratio = |v: &Value| sum(v).map(|s| fmt_r(&s)).unwrap_or_else(|| "–".into());
    let _ = writeln!(md, "\n| SRv6 pipes (wrk, 200 clients) | proxy (identity) | router VNF (End.AD) | two proxies (xor) | proxy ÷ router | two xor ÷ router |\n|---|---|---|---|---|---|");
    for (key, what) in [("http_1k_rps", "1 KB objects, requests/s"), ("http_10m_mbps", "10 MB objects, Mbit/s")] {
        let t = &st[key];
        let d = &t["detail"];
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} | {} |",
            cell(&d["proxy"]),
            cell(&d["router"]),
            cell(&d["two_proxies_xor"]),
            ratio(&t["proxy/router"]),
            ratio(&t["two_proxies_xor/router"])
        );
    }
    let l = &st["lossy_mbps"];
    let _ = writeln!(md, "\n| 1 % loss on every link, Mbit/s | direct | through the proxy | proxy ÷ direct |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| one connection, 10 MB objects | {} | {} | {} |",
        cell(&l["detail"]["direct"]),
        cell(&l["detail"]["proxy"]),
        ratio(&l["proxy/direct"])
    );
    let f: Vec<String> = st["functions_mbps"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {}", v.as_f64().map_or("failed".into(), |x| format!("{x:.0}"))))
        .collect();
    let _ = writeln!(md, "\nStream functions, MB/s of plain text on one core: {}.", f.join(", "));
    let _ = writeln!(
        md,
        "\nOne proxy holding {} idle connections: VmRSS {} MB.",
        st["idle_connections"],
        st["idle_10k_rss_mb"].as_f64().map_or("not measured".into(), |x| format!("{x:.1}"))
    );
    for failure in st["failures"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "\nFailed trial: {}", failure.as_str().unwrap_or_default());
    }
}

/// The run's line (date, machine, pinning), its retried trials and the host's noise.
fn heading(md: &mut String, r: &Value) {
    let m = &r["machine"];
    let _ = writeln!(md, "Run {} ({}), {} repetitions per point; {} on {} CPUs, kernel {}; generator on CPU {}, system under test on CPU {}; generator ceiling {:.0} kpps.\n",
        r["date"].as_str().unwrap_or("?"), if r["quick"].as_bool() == Some(true) { "quick smoke run: not a measurement" } else { "full" },
        r["method"]["repetitions"], m["cpu_model"].as_str().unwrap_or("?"), m["cpus"], m["kernel"].as_str().unwrap_or("?"),
        r["pinning"]["generator_cpu"], r["pinning"]["sut_cpu"], r["generator_ceiling_kpps"]["median"].as_f64().unwrap_or(0.0));
    let _ = writeln!(
        md,
        "PDR trials that failed by little (< 20 % lost) and were run again: {}, of which passed: {}.\n",
        r["method"]["trials_retried"], r["method"]["trials_rescued"]
    );
    let noise = |at: &str| {
        let n = &r["host_noise"][at];
        format!(
            "4 MiB median {} ns a load (floor {}, 90th percentile {}), {} of the steps noise; L1 median {} ns",
            n["l3_ns"]["median"], n["l3_ns"]["floor"], n["l3_ns"]["p90"], n["l3_noisy_share"], n["l1_ns"]["median"]
        )
    };
    let _ = writeln!(
        md,
        "The host's noise, a pointer chase in L1 and one through 4 MiB (the shared L3) on the SUT CPU with nothing else running, {} s: at the start {}; at the end {}.\n",
        r["host_noise"]["start"]["seconds"],
        noise("start"),
        noise("end")
    );
}

/// srv6pipes' programs' ns per run, per scenario and per point of the VNF sweeps.
fn bpf_tables(md: &mut String, r: &Value) {
    for (key, title) in [
        ("bpf_ns_per_run", "scenario"),
        ("bpf_ns_per_run_by_vnfs", "End.AD, VNFs"),
        ("bpf_ns_per_run_installed", "End.AD through the last installed, VNFs (last: SIDs)"),
        ("bpf_ns_per_run_installed_one", "End.AD through one VNF installed, same rounds"),
    ] {
        let Some(m) = r[key].as_object().filter(|m| !m.is_empty()) else { continue };
        let _ = writeln!(md, "\n| {title} | srv6pipes BPF programs, ns per run |\n|---|---|");
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.to_string()));
        for k in keys {
            let progs: Vec<String> =
                m[k].as_object().into_iter().flatten().map(|(p, ns)| format!("{p} {:.0}", ns.as_f64().unwrap_or(0.0))).collect();
            let _ = writeln!(md, "| {k} | {} |", progs.join(", "));
        }
    }
}

/// Control-plane latencies (p50, p99) and TCP goodput through the chain.
fn control_tables(md: &mut String, r: &Value) {
    let _ = writeln!(md, "\n| control plane | p50 ms | p99 ms | samples |\n|---|---|---|---|");
    for k in [
        "cni_add_ms",
        "cni_del_ms",
        "ptp_add_ms",
        "bridge_add_ms",
        "host_local_add_ms",
        "cni_add_during_program_ms",
        "program_10k_sids_ms",
        "chain_apply_ms",
        "chain_apply_kubectl_ms",
        "chain_apply_10k_ms",
    ] {
        let v = &r[k];
        if v.is_null() {
            let _ = writeln!(md, "| {k} | – | – | not measured |");
        } else {
            let _ = writeln!(
                md,
                "| {k} | {:.2} | {:.2} | {} |",
                v["p50"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0),
                v["samples"].as_array().map_or(0, |a| a.len())
            );
        }
    }
    let t = &r["tcp_goodput_mbps"];
    if !t.is_null() {
        let d = |k: &str| serde_json::from_value::<Summary>(t["detail"][k].clone()).map(|s| fmt_s(&s)).unwrap_or_default();
        let ratio = serde_json::from_value::<Summary>(t["ratio"].clone()).map(|s| fmt_r(&s)).unwrap_or_default();
        let _ = writeln!(md, "\n| TCP (iperf3) | Mbit/s, median (min–max) | ÷ unchained |\n|---|---|---|");
        let _ = writeln!(md, "| unchained | {} | |\n| two-VNF chain | {} | {ratio} |", d("unchained"), d("chained"));
    }
}

/// The markdown report: data plane with ratios, sweeps, control plane, targets.
pub fn markdown(r: &Value, pdr: &BTreeMap<String, Vec<f64>>, sweeps: &[(&str, &BTreeMap<String, Vec<f64>>)], targets: &[Target]) -> String {
    let mut md = String::new();
    heading(&mut md, r);
    let _ = writeln!(md, "| scenario | PDR kpps, median (min–max) | ÷ plain (a) | ÷ kernel proxy (b) |\n|---|---|---|---|");
    let (a, b) = (&pdr["plain"], pdr.get(crate::dataplane::KERNEL_PROXY));
    for (k, v) in pdr {
        let vs_kernel = b.map_or_else(|| "–".to_string(), |b| fmt_r(&ratios(v, b)));
        let _ = writeln!(md, "| {k} | {} | {} | {vs_kernel} |", fmt_s(&summarize(v)), fmt_r(&ratios(v, a)));
    }
    for (what, why) in r["unavailable"].as_object().into_iter().flatten() {
        let _ = writeln!(md, "\nNot measured: {what}: {}", why.as_str().unwrap_or_default());
    }
    bpf_tables(&mut md, r);
    for failure in r["dataplane_failures"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "\nFailed trial: {}", failure.as_str().unwrap_or_default());
    }
    for (title, s) in sweeps.iter().filter(|(_, s)| !s.is_empty()) {
        let _ = writeln!(md, "\n| {title} | PDR kpps, median (min–max) |\n|---|---|");
        let mut keys: Vec<&String> = s.keys().collect();
        keys.sort_by_key(|k| k.parse::<u64>().unwrap_or(u64::MAX));
        for k in keys {
            let _ = writeln!(md, "| {k} | {} |", fmt_s(&summarize(&s[k])));
        }
    }
    control_tables(&mut md, r);
    stream_tables(&mut md, &r["stream"]);
    let _ = writeln!(md, "\n| target | bar | measured, median (min–max) | verdict |\n|---|---|---|---|");
    for t in targets {
        let _ =
            writeln!(md, "| {} | {} {} | {} | {:?} |", t.what, if t.at_least { "≥" } else { "≤" }, t.bound, fmt_r(&t.value), t.verdict());
    }
    md
}

/// Two panels: PDR per scenario with its spread; PDR against the number of VNFs, one line per
/// series (median, the first with its spread).
pub fn plot(
    dir: &Path,
    stem: &str,
    pdr: &BTreeMap<String, Vec<f64>>,
    series: &[(&str, &BTreeMap<String, Vec<f64>>)],
) -> anyhow::Result<()> {
    let mut bars = String::new();
    for (i, (k, v)) in pdr.iter().enumerate() {
        let s = summarize(v);
        let _ = writeln!(bars, "{i} \"{k}\" {} {} {}", s.median, s.min, s.max);
    }
    let mut points: Vec<u64> = series.iter().flat_map(|(_, s)| s.keys().filter_map(|k| k.parse().ok())).collect();
    points.sort_unstable();
    points.dedup();
    let mut lines = String::new();
    for n in points {
        let _ = write!(lines, "{n}");
        for (i, (_, s)) in series.iter().enumerate() {
            match s.get(&n.to_string()).map(|v| summarize(v)) {
                Some(x) if i == 0 => write!(lines, " {} {} {}", x.median, x.min, x.max),
                Some(x) => write!(lines, " {}", x.median),
                None if i == 0 => write!(lines, " NaN NaN NaN"),
                None => write!(lines, " NaN"),
            }
            .expect("write to a String");
        }
        lines.push('\n');
    }
    let plots: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, (title, _))| match i {
            0 => format!("'{stem}.scaling.dat' using 1:2:3:4 with yerrorlines title '{title}'"),
            _ => format!("'' using 1:{} with linespoints title '{title}'", i + 4),
        })
        .collect();
    std::fs::write(dir.join(format!("{stem}.bars.dat")), bars)?;
    std::fs::write(dir.join(format!("{stem}.scaling.dat")), lines)?;
    let script = format!(
        "set terminal pngcairo size 1200,500 noenhanced\nset output '{stem}.png'\nset multiplot layout 1,2\n\
         set title 'PDR at 0.5% loss (median, min-max)'\nset ylabel 'kpps'\nset style fill solid 0.5\nset boxwidth 0.6\nset xtics rotate by -30\nset yrange [0:*]\n\
         plot '{stem}.bars.dat' using 1:3:xtic(2) with boxes notitle, '' using 1:3:4:5 with yerrorbars lc rgb 'black' pt 0 notitle\n\
         set title 'PDR vs VNFs on the node (SIDs installed)'\nset logscale x\nset xtics norotate\nset xlabel 'VNFs (last point: SIDs)'\nset datafile missing 'NaN'\n\
         plot {}\nunset multiplot\n",
        plots.join(", ")
    );
    std::fs::write(dir.join(format!("{stem}.gp")), &script)?;
    let out = std::process::Command::new("gnuplot")
        .arg(format!("{stem}.gp"))
        .current_dir(dir)
        .output()
        .context("run gnuplot (apt-get install gnuplot-nox)")?;
    if !out.status.success() {
        bail!("gnuplot: {}", String::from_utf8_lossy(&out.stderr));
    }
    for ext in ["bars.dat", "scaling.dat", "gp"] {
        let _ = std::fs::remove_file(dir.join(format!("{stem}.{ext}")));
    }
    Ok(())
}

/// Replaces what is between the markers in docs/performance.md with `md`.
pub fn update_doc(doc: &Path, md: &str) -> anyhow::Result<()> {
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else { bail!("{} lacks the {begin} / {end} markers", doc.display()) };
    let updated = format!("{}{begin}\n{md}{}", &text[..b], &text[e..]);
    std::fs::write(doc, updated)?;
    Ok(())
}
