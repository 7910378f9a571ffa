//! `srv6pipes`: the operator-facing CLI. `srv6pipes lab ...` runs the embedded default: a lab of
//! network namespaces with the real node daemon, CNI plugin and eBPF datapath, no Kubernetes.

mod lab;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Per-SID and per-chain packets, bytes and drops (by reason) on every node of a lab.
    Stats {
        #[command(flatten)]
        which: lab::Which,
        #[arg(short = 'o', long, value_enum, default_value_t = lab::Format::Text)]
        output: lab::Format,
    },
    /// A chain's path node by node — sources, headends, each hop's replicas and SIDs, the
    /// decapsulation — with live counters, as text, JSON or a picture (`-o dot`, `-o svg` with
    /// Graphviz installed, `-o mermaid` for docs). CHAIN is NAME or NAMESPACE/NAME.
    Trace {
        chain: String,
        #[command(flatten)]
        which: lab::Which,
        #[arg(short = 'o', long, value_enum, default_value_t = trace::Format::Text)]
        output: trace::Format,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as for any Unix tool.
    // SAFETY: restoring the default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Stats { which, output } => lab::stats(&which, output).map(|_| ExitCode::SUCCESS),
        Command::Trace { chain, which, output } => lab::trace(&which, &chain)
            .and_then(|t| trace::render(&t, output))
            .map(|text| {
                print!("{text}");
                ExitCode::SUCCESS
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("srv6pipes: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Directory of this executable: the sibling binaries (srv6pipes-node, srv6pipes-cni) live there.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)).unwrap_or_else(|| ".".into())
}
