//! `srv6pipes`: the operator-facing CLI. `srv6pipes lab ...` runs the embedded default: a lab of
//! network namespaces with the real node daemon, CNI plugin and eBPF datapath, no Kubernetes.

mod lab;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
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
