//! `srv6pipes`: the operator-facing CLI. `srv6pipes lab ...` runs the embedded default: a lab of
//! network namespaces with the real node daemon, CNI plugin and eBPF datapath, no Kubernetes.
//! `status`, `chains`, `sids`, `stats`, `trace` and `wait` read a lab or a cluster alike
//! (`target.rs` says which). Installed as `kubectl-srv6pipes` (a link to this binary), it is
//! `kubectl srv6pipes ...`.

mod cluster;
mod lab;
mod monitor;
mod progress;
mod target;
mod trace;
mod view;
mod wait;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "srv6pipes", version, about = "srv6pipes: SRv6 service function chaining for SR-unaware VNFs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A local lab of network namespaces: nodes, pods, VNFs and chains from Kubernetes YAML.
    Lab(lab::LabArgs),
    /// Nodes (locator, SIDs, program, daemon) and every chain, of a lab or a cluster.
    Status {
        #[command(flatten)]
        target: target::Target,
        #[arg(short = 'o', long, value_enum, default_value_t = view::Output::Text)]
        output: view::Output,
    },
    /// ServiceChains with their Ready condition, functions and paths (`-o wide`: segments).
    Chains {
        #[command(flatten)]
        target: target::Target,
        #[arg(short = 'o', long, value_enum, default_value_t = view::Output::Text)]
        output: view::Output,
    },
    /// Every SID of every node: behaviour, owner (pod:interface) and live counters.
    Sids {
        #[command(flatten)]
        target: target::Target,
        #[arg(short = 'o', long, value_enum, default_value_t = view::Output::Text)]
        output: view::Output,
    },
    /// Per-SID and per-chain packets, bytes and drops (by reason) on every node.
    Stats {
        #[command(flatten)]
        target: target::Target,
        #[arg(short = 'o', long, value_enum, default_value_t = view::Output::Text)]
        output: view::Output,
    },
    /// A chain's path node by node — sources, headends, each hop's replicas and SIDs, the
    /// decapsulation — with live counters, as text, JSON or a picture (`-o dot`, `-o svg` with
    /// Graphviz installed, `-o mermaid` for docs). CHAIN is NAME or NAMESPACE/NAME.
    Trace {
        chain: String,
        #[command(flatten)]
        target: target::Target,
        #[arg(short = 'o', long, value_enum, default_value_t = trace::Format::Text)]
        output: trace::Format,
    },
    /// Wait until a chain is Ready (CHAIN is NAME or NAMESPACE/NAME). Shows progress on a
    /// terminal; prints the outcome, and exits 1 with the last reason after --timeout.
    Wait {
        chain: String,
        #[command(flatten)]
        target: target::Target,
        /// How long to wait: 90s, 2m, 500ms.
        #[arg(long, default_value = "60s", value_parser = wait::parse_duration)]
        timeout: Duration,
    },
    /// The datapath's drops (and, with --type trace, sampled packets) live, from every node or
    /// --node: reason, node, chain, SID, interface and inner 5-tuple, like `cilium monitor`. A
    /// node whose daemon does not answer within 10 s, or refuses, is skipped, said on stderr.
    Monitor(monitor::MonitorArgs),
    /// Shell completions on stdout: `source <(srv6pipes completion bash)`, or into your shell's
    /// completion directory (zsh: `_srv6pipes`, fish: `srv6pipes.fish`).
    Completion { shell: clap_complete::Shell },
    /// Man pages of srv6pipes and every subcommand (srv6pipes.1, srv6pipes-lab-up.1, ...),
    /// written to DIR: `man -l DIR/srv6pipes.1`.
    Man { dir: PathBuf },
}

/// The command line, named as invoked: `kubectl srv6pipes` through a `kubectl-srv6pipes` link.
fn command() -> clap::Command {
    let invoked = std::env::args_os().next().map(PathBuf::from);
    let plugin = invoked.as_deref().and_then(Path::file_name).is_some_and(|n| n == "kubectl-srv6pipes");
    let cmd = Cli::command();
    if plugin {
        cmd.bin_name("kubectl srv6pipes")
    } else {
        cmd
    }
}

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as for any Unix tool.
    // SAFETY: restoring the default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Status { target, output } => target::print_status(&target, output).map(|_| ExitCode::SUCCESS),
        Command::Chains { target, output } => target::print_chains(&target, output).map(|_| ExitCode::SUCCESS),
        Command::Sids { target, output } => target::print_sids(&target, output).map(|_| ExitCode::SUCCESS),
        Command::Stats { target, output } => target::print_stats(&target, output).map(|_| ExitCode::SUCCESS),
        Command::Trace { chain, target, output } => target::trace(&target, &chain).and_then(|t| trace::render(&t, output)).map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::Wait { chain, target, timeout } => {
            target::wait(&target, &chain, timeout).map(|ready| if ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "srv6pipes", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor(args) => monitor::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Man { dir } => man(&dir).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("srv6pipes: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn man(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| format!("write man pages to {}", dir.display()))
}

/// Directory of this executable: the sibling binaries (srv6pipes-node, srv6pipes-cni) live there.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)).unwrap_or_else(|| ".".into())
}
