//! srv6pipes-bench: every benchmark in one run on one machine, side by side. See
//! docs/performance.md for what is measured and how; `bench/run` builds and runs it.

mod alternate;
mod around;
mod control;
mod cost;
mod dataplane;
mod footprint;
mod noise;
mod packet;
mod report;
mod results;
mod search;
mod sim;
mod stats;
mod stream;
mod sweep;
mod sys;
mod targets;
mod tcp;
mod topo;
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Measures srv6pipes against plain IPv6 forwarding and the kernel-native static proxy (PDR at
/// 0.5 % loss, XDP live-frames generator), sweeps VNF count, SID table size, End.AD learning
/// and segment list length, TCP goodput through a chain, CNI ADD latency against Debian's ptp
/// and chain apply -> steered latency; writes <out>/<date>.json, latest.json, latest.md and
/// latest.png. Needs root; builds its own network namespaces and removes them.
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-bench", version)]
struct Args {
    /// Smoke run (about 10 minutes): 2 repetitions of short trials, small sweeps. Its numbers
    /// prove the benchmark works, not how fast anything is.
    #[arg(long)]
    quick: bool,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Repetitions per scenario (default: 5, or 2 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// CPU the generator runs on.
    #[arg(long, default_value_t = 1)]
    gen_cpu: usize,
    /// CPU the system under test (node, VNFs, sink) runs on, by RPS.
    #[arg(long, default_value_t = 0)]
    sut_cpu: usize,
    /// Run only these parts (comma-separated; in the full run's order, the data plane's first)
    /// and print their JSON; writes no files. For working on them without the whole run's 45
    /// minutes.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// With `--only pdr`: only these PDR scenarios (comma-separated keys: plain,
    /// kernel_static_proxy, end_ad, end_as, end_am, end_ad_ipv4, end_ad_age0,
    /// end_ad_monitor_none, end_ad_monitor_drops, end_ad_monitor_trace), e.g. to profile one.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// In the VNF sweep (`--only vnfs` or a full run): after its last point, a second lane with
    /// one VNF against the first, both in one stream at the PDR's edge as the last installed
    /// is, to calibrate that measure: as it is (a null change, `vnf_installed_alternating."null/N"`)
    /// and with the trace monitor attached (a known cost, `"trace/N"`); ~3 minutes more.
    #[arg(long)]
    null_lanes: bool,
    /// Nodes of the scale simulation (`--only sim`).
    #[arg(long, default_value_t = 1000)]
    sim_nodes: usize,
    /// ServiceChains of the scale simulation.
    #[arg(long, default_value_t = 100_000)]
    sim_chains: usize,
    /// Replicas of each function in the scale simulation (each node has 10 VNF pods).
    #[arg(long, default_value_t = 2)]
    sim_replicas: usize,
    /// Chains created and deleted one at a time after the scale simulation converged (each a
    /// sample of created -> Ready, writes and CPU per change).
    #[arg(long, default_value_t = 20)]
    sim_samples: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The PDR scenarios (plain, kernel proxy, End.AD/AS/AM, age 0, IPv4, monitor) and their
    /// BPF cost, in turns (see --scenario).
    Pdr,
    /// CNI ADD latency, srv6pipes-cni, ptp and bridge.
    Cni,
    /// Chain applied -> first steered packet, with many chains present.
    Chains,
    /// TCP goodput through a two-VNF chain and unchained.
    Tcp,
    /// SRv6 pipes: HTTP through stream proxies vs a router VNF, lossy links, functions, memory.
    Stream,
    /// The data plane's VNF-count sweep: End.AD spread and through the last installed, plain
    /// forwarding and the kernel proxy spread, side by side (a third of a full run).
    Vnfs,
    /// Three functions over three nodes, srv6pipes End.AD against plain forwarding.
    Chain3,
    /// The operator at cluster scale on a real API server, no daemons (not in full runs:
    /// 1,000 nodes and 100,000 chains by default, see --sim-nodes; docs/performance.md).
    Sim,
    /// The operator's memory by stage at the scale simulation's size, without an API server
    /// (not in full runs; sized by --sim-nodes, --sim-chains and --sim-replicas).
    Footprint,
    /// The host's noise: a pointer chase in L1 and one through 4 MiB (the L3 shared with the
    /// VM's neighbours) in turns on the SUT CPU for 60 s, before anything else runs. A full
    /// run samples it for 15 s at its start and at its end (`host_noise`).
    Noise,
}

/// The control-plane parts' results; each is run when asked for.
#[derive(Default)]
struct Control {
    cni: Option<control::CniSamples>,
    background_chains: usize,
    chains: Option<control::ChainApply>,
    /// What one change costs the operator, by background chains present.
    change: std::collections::BTreeMap<String, control::ChangeCost>,
    /// Chain applied -> steered with 10,000 chains present (full runs).
    chains_10k: Option<control::ChainApply>,
    /// Each growth of the kube lab's background chains.
    growth: Vec<control::Growth>,
    /// Why the 10,000-chain part did not complete (the run goes on without it).
    scale_failure: Option<String>,
    tcp: Option<tcp::Tcp>,
    stream: Option<serde_json::Value>,
    sim: Option<serde_json::Value>,
    footprint: Option<serde_json::Value>,
    /// Wall seconds of each part, in the order they ran.
    seconds: Vec<(String, f64)>,
}

/// Control cost and chain apply with 10,000 chains on n1 (4-7 minutes to create and program):
/// a failure is recorded (`scale_failure`) and the run goes on.
fn at_10k_chains(k: &mut control::KubeLab, c: &mut Control) {
    // Fewer samples than at 1,000 chains: this is the run's longest part already.
    let (changes, samples) = (3, 10);
    let scale = (|| {
        k.grow(10_000)?;
        eprintln!("control cost and chain apply: {changes} changes, {samples} samples with 10,000 chains present");
        anyhow::Ok((control::change_cost(k, changes)?, control::chain_apply(k, samples)?))
    })();
    match scale {
        Ok((cost, apply)) => {
            c.change.insert("10000".into(), cost);
            c.chains_10k = Some(apply);
        }
        Err(e) => {
            eprintln!("10,000 chains: {e:#}; recorded, going on");
            c.scale_failure = Some(format!("{e:#}"));
        }
    }
}

fn run_control(b: &mut topo::Bench, args: &Args, parts: &[Part]) -> anyhow::Result<Control> {
    let mut c = Control::default();
    let mut laps = report::Laps::start();
    if parts.contains(&Part::Cni) {
        // ptp waits ~1.8 s for DAD on every ADD: it takes 30 of them (`control::cni_add`).
        let n = if args.quick { 20 } else { 100 };
        eprintln!("CNI ADD: {n} x srv6pipes-cni, ptp and bridge");
        c.cni = Some(control::cni_add(b, n, args.sut_cpu)?);
        laps.lap("cni");
    }
    if parts.contains(&Part::Chains) || parts.contains(&Part::Tcp) {
        let (background, samples, reps, secs) = if args.quick { (100, 5, 2, 2) } else { (1000, 50, args.reps.unwrap_or(5), 5) };
        let changes = if args.quick { 2 } else { 10 };
        let mut k = control::KubeLab::up(b, 100)?;
        if parts.contains(&Part::Chains) {
            eprintln!("control cost: {changes} chains created and deleted with 100 chains present");
            c.change.insert("100".into(), control::change_cost(&k, changes)?);
        }
        k.grow(background)?;
        c.background_chains = background;
        if parts.contains(&Part::Chains) {
            eprintln!("chain apply: {samples} samples with {background} chains present");
            c.chains = Some(control::chain_apply(&k, samples)?);
        }
        laps.lap("chains");
        if parts.contains(&Part::Tcp) {
            eprintln!("TCP: {reps} x {secs} s iperf3, chained and unchained");
            c.tcp = Some(tcp::tcp(&k, reps, secs, (args.gen_cpu, args.sut_cpu))?);
            laps.lap("tcp");
        }
        if !args.quick && parts.contains(&Part::Chains) {
            at_10k_chains(&mut k, &mut c);
            laps.lap("chains_10k");
        }
        c.growth = std::mem::take(&mut k.growth);
    }
    if parts.contains(&Part::Stream) {
        let plan = if args.quick {
            stream::Plan { reps: 2, secs: 1, lossy_secs: 3, idle: 1000, fn_mib: 4 }
        } else {
            stream::Plan { reps: args.reps.unwrap_or(5), secs: 5, lossy_secs: 5, idle: 10_000, fn_mib: 64 }
        };
        eprintln!(
            "SRv6 pipes: {} x wrk through proxies and a router VNF, lossy links, functions, {} idle connections",
            plan.reps, plan.idle
        );
        c.stream = Some(stream::run(b, &plan));
        laps.lap("stream");
    }
    if parts.contains(&Part::Sim) {
        let size = sim::Size {
            nodes: args.sim_nodes,
            vnfs: 10,
            sources: 50,
            replicas: args.sim_replicas,
            chains: args.sim_chains,
            samples: args.sim_samples,
        };
        c.sim = Some(sim::run(b, &size)?);
        laps.lap("sim");
    }
    if parts.contains(&Part::Footprint) {
        let size =
            sim::Size { nodes: args.sim_nodes, vnfs: 10, sources: 50, replicas: args.sim_replicas, chains: args.sim_chains, samples: 0 };
        c.footprint = Some(footprint::run(&size)?);
        laps.lap("footprint");
    }
    c.seconds = laps.laps;
    Ok(c)
}

/// What the data plane measures: a smoke run's or a full run's.
fn dataplane_plan(args: &Args) -> dataplane::Plan {
    if args.quick {
        dataplane::Plan {
            reps: args.reps.unwrap_or(2),
            trial: Duration::from_millis(150),
            steps: 6,
            sut_cpu: args.sut_cpu,
            vnf_counts: vec![1, 10],
            table_sids: 0,
            seglist: vec![1, 6],
            cost_pps: 100_000.0,
            cost_trial: Duration::from_millis(500),
            cost_parts: 2,
            scenarios: args.scenario.clone(),
            null_lanes: args.null_lanes,
        }
    } else {
        dataplane::Plan {
            reps: args.reps.unwrap_or(5),
            trial: Duration::from_millis(500),
            steps: 8,
            sut_cpu: args.sut_cpu,
            vnf_counts: vec![1, 10, 100, 1000],
            table_sids: 10_000,
            // 3 and 5 add nothing the line through 1, 2, 4 and 6 does not show (and ~1 minute).
            seglist: vec![1, 2, 4, 6],
            cost_pps: 100_000.0,
            cost_trial: Duration::from_secs(2),
            cost_parts: 4,
            scenarios: args.scenario.clone(),
            null_lanes: args.null_lanes,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("srv6pipes-bench needs root (network namespaces, BPF, XDP)");
    }
    let bin_dir = std::env::current_exe()?.parent().context("bin dir")?.to_path_buf();
    sweep::stale(&bin_dir);
    sweep::on_signals(sweep::own_tag(), bin_dir)?;
    if !args.scenario.is_empty() && !args.only.contains(&Part::Pdr) {
        anyhow::bail!("--scenario picks PDR scenarios: it needs --only pdr (a full run measures them all)");
    }
    let plan = dataplane_plan(&args);
    if !args.only.is_empty() {
        let host_noise = if args.only.contains(&Part::Noise) { Some(noise::host(args.sut_cpu, Duration::from_secs(60))) } else { None };
        let mut b = topo::Bench::new(args.gen_cpu)?;
        // In the full run's order: the data plane first, then the control parts.
        let parts = dataplane::Parts {
            pdr: args.only.contains(&Part::Pdr),
            chain3: args.only.contains(&Part::Chain3),
            vnfs: args.only.contains(&Part::Vnfs),
        };
        let wanted = parts.pdr || parts.chain3 || parts.vnfs;
        if let Some(why) = wanted.then(traffic::live_frames_refused).flatten() {
            anyhow::bail!("the data plane parts cannot run: {why}");
        }
        let dp = if wanted { Some(dataplane::run_parts(&mut b, &plan, parts)?) } else { None };
        let teardown = if dp.is_some() { Some(b.drop_lanes()?) } else { None };
        let mut c = run_control(&mut b, &args, &args.only)?;
        if let Some(s) = teardown {
            c.seconds.insert(0, ("dataplane_teardown".into(), s));
        }
        let json = results::only(&plan, parts, dp.as_ref(), &c, host_noise);
        println!("{}", serde_json::to_string_pretty(&json)?);
        if let Some(st) = &c.stream {
            let mut md = String::new();
            report::stream_tables(&mut md, st);
            eprintln!("{md}");
        }
        return Ok(());
    }
    let noise_secs = Duration::from_secs(if args.quick { 2 } else { 15 });
    let noise_start = noise::host(args.sut_cpu, noise_secs);
    let mut b = topo::Bench::new(args.gen_cpu)?;
    // A kernel that refuses the generator: the data plane is recorded as unavailable, with why,
    // and the rest of the run goes on.
    let refused = traffic::live_frames_refused();
    let dp = match refused.map_or_else(|| dataplane::run(&mut b, &plan), |why| Ok(dataplane::Results::unavailable(why))) {
        Ok(dp) => dp,
        Err(e) => {
            if std::env::var_os("BENCH_KEEP").is_some() {
                eprintln!("{e:#}\nBENCH_KEEP: keeping netns {}-* for 10 minutes", b.tag);
                std::thread::sleep(Duration::from_secs(600));
            }
            return Err(e);
        }
    };
    let teardown = b.drop_lanes()?;
    let mut c = run_control(&mut b, &args, &[Part::Cni, Part::Chains, Part::Tcp, Part::Stream])?;
    c.seconds.insert(0, ("dataplane_teardown".into(), teardown));
    b.cleanup.run();
    let host_noise = serde_json::json!({"start": noise_start, "end": noise::host(args.sut_cpu, noise_secs)});
    write(&args, &plan, &dp, &c, host_noise, started)
}

/// Writes a run's document as `<date>.json` and `latest.json` in its output directory (`quick/`
/// for a quick run), made if need be; returns that directory.
fn save_json(args: &Args, date: &str, json: &serde_json::Value) -> anyhow::Result<std::path::PathBuf> {
    let out = if args.quick { args.out.join("quick") } else { args.out.clone() };
    std::fs::create_dir_all(&out)?;
    let text = serde_json::to_string_pretty(json)? + "\n";
    std::fs::write(out.join(format!("{date}.json")), &text)?;
    std::fs::write(out.join("latest.json"), &text)?;
    Ok(out)
}

/// The report of a run on a machine that cannot generate traffic: the control plane's, CNI's,
/// TCP's and the pipes' figures with their targets, and why the data plane has none (no plot:
/// it draws the data plane's).
fn write_without_dataplane(
    args: &Args,
    plan: &dataplane::Plan,
    c: &Control,
    why: &str,
    (date, host_noise, part_seconds, run_minutes): (String, serde_json::Value, Vec<(String, f64)>, f64),
) -> anyhow::Result<()> {
    let mut json = results::only(plan, dataplane::Parts { pdr: false, chain3: false, vnfs: false }, None, c, None);
    json.extend([
        ("date".to_string(), serde_json::json!(date)),
        ("quick".into(), serde_json::json!(args.quick)),
        ("machine".into(), report::machine()),
        ("host_noise".into(), host_noise),
        ("run_minutes".into(), serde_json::json!((run_minutes * 10.0).round() / 10.0)),
        ("part_seconds".into(), report::seconds(&part_seconds)),
        ("unavailable".into(), serde_json::json!({ dataplane::DATAPLANE: why })),
        ("dataplane_failures".into(), serde_json::json!([])),
    ]);
    let out = save_json(args, &date, &json.into())?;
    let mut md = format!(
        "# srv6pipes benchmark, {date}: no data plane figure\n\n{why}\n\n| target | median | bound | verdict |\n|---|---|---|---|\n"
    );
    for t in targets::control(c).iter().chain(&targets::end_to_end(None, c)) {
        md += &format!("| {} | {:.3} | {} {} | {:?} |\n", t.what, t.value.median, if t.at_least { "≥" } else { "≤" }, t.bound, t.verdict());
    }
    if let Some(st) = &c.stream {
        report::stream_tables(&mut md, st);
    }
    std::fs::write(out.join("latest.md"), &md)?;
    println!("{md}");
    eprintln!("results: {}/latest.json, latest.md (no plot: no data plane figure)", out.display());
    Ok(())
}

/// The parts' wall seconds, `bench/run`'s dependencies and release build first (it passes them in
/// `SRV6PIPES_BENCH_BUILD_SECONDS`), and the whole run's minutes.
fn run_time(dp: &dataplane::Results, c: &Control, started: std::time::Instant) -> (Vec<(String, f64)>, f64) {
    let build = std::env::var("SRV6PIPES_BENCH_BUILD_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
    let mut parts: Vec<(String, f64)> = build.map(|s| ("deps_and_build".to_string(), s)).into_iter().collect();
    parts.extend(dp.seconds.iter().chain(&c.seconds).cloned());
    let minutes = (build.unwrap_or(0.0) + started.elapsed().as_secs_f64()) / 60.0;
    (parts, minutes)
}

/// The full run's files: <out>/<date>.json and latest.json, latest.md and latest.png, and the
/// table in docs/performance.md.
fn write(
    args: &Args,
    plan: &dataplane::Plan,
    dp: &dataplane::Results,
    c: &Control,
    host_noise: serde_json::Value,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let date = String::from_utf8(std::process::Command::new("date").args(["-u", "+%F"]).output()?.stdout)?.trim().to_string();
    let (part_seconds, run_minutes) = run_time(dp, c, started);
    if let Some(why) = dp.unavailable.get(dataplane::DATAPLANE) {
        return write_without_dataplane(args, plan, c, why, (date, host_noise, part_seconds, run_minutes));
    }
    let targets = targets::all(dp, c, run_minutes);
    let result = results::full(args, plan, dp, c, results::Run { date: date.clone(), host_noise, part_seconds, run_minutes }, &targets);
    let p = &dp.pdr;
    let out = save_json(args, &date, &result)?;
    let md = report::markdown(
        &result,
        p,
        &[
            ("VNFs on the node (srv6pipes End.AD)", &dp.scaling),
            ("VNFs on the node (plain forwarding by destination)", &dp.plain_spread),
            ("VNFs on the node (kernel End.DX6 + ip rule)", &dp.kernel_scaling),
            ("VNFs installed, End.AD through the last (last point: SIDs)", &dp.installed),
            ("one VNF installed, in turns with the row above", &dp.installed_one),
            ("segments after the proxy", &dp.seglist),
        ],
        &targets,
    );
    std::fs::write(out.join("latest.md"), &md)?;
    report::plot(
        &out,
        "latest",
        p,
        &[
            ("srv6pipes End.AD, spread", &dp.scaling),
            ("plain forwarding, spread", &dp.plain_spread),
            ("kernel End.DX6 + ip rule, spread", &dp.kernel_scaling),
            ("End.AD through the last installed", &dp.installed),
        ],
    )?;
    let doc = std::path::Path::new("docs/performance.md");
    if !args.quick && doc.exists() {
        report::update_doc(doc, &md)?;
    }
    println!("{md}");
    eprintln!("results: {}/latest.json, latest.md, latest.png", out.display());
    Ok(())
}
