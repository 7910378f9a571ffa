//! srv6pipes-cni: wires a VNF pod's chain interface (a veth to the node, or a pair with
//! `"interfaces": "pair"`) and registers it with the node daemon, which gives it an End.AD SID.
//! CNI SPEC 1.1: ADD, DEL, CHECK, STATUS, GC and VERSION, for cniVersion 0.3.0 to 1.1.0, each
//! answered in the configuration's version. IPAM, when configured, is delegated (SPEC §4).

mod add;
mod cni;
mod install;
mod ipam;
mod link;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cni::{CniError, Env, NetConf, CODE_INCOMPATIBLE_VERSION, CODE_NOT_AVAILABLE};
use srv6::node_api::{self, Request, Response};

fn main() -> ExitCode {
    // A runtime calls a CNI plugin with CNI_COMMAND and no arguments; anything else is the
    // installer (`srv6pipes-cni install|uninstall|--help|--version`).
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        use clap::Parser;
        return match install::run(install::Cli::parse()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("srv6pipes-cni: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut stdin = Vec::new();
    let version_hint = std::io::stdin().read_to_end(&mut stdin).ok().and_then(|_| cni::peek_version(&stdin));
    match run(&stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = version_hint.filter(|v| cni::SUPPORTED.contains(&v.as_str())).unwrap_or_else(|| cni::LATEST.into());
            println!("{}", e.to_json(&version));
            // The runtime's log line names the pod; this one names the attachment.
            let var = |k: &str| std::env::var(k).unwrap_or_default();
            eprintln!("srv6pipes-cni: {} {}/{}: {}", var("CNI_COMMAND"), var("CNI_CONTAINERID"), var("CNI_IFNAME"), e.msg);
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<String>, CniError> {
    let command = std::env::var("CNI_COMMAND").map_err(|_| CniError::env("CNI_COMMAND is not set"))?;
    if command == "VERSION" {
        return Ok(Some(cni::version_json(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    let since = |min: &str| -> Result<(), CniError> {
        if cni::version_at_least(&conf.cni_version, min) {
            Ok(())
        } else {
            Err(CniError::new(
                CODE_INCOMPATIBLE_VERSION,
                format!("cniVersion {} does not allow {command} (needs {min} or later)", conf.cni_version),
            ))
        }
    };
    match command.as_str() {
        "ADD" => {
            let env = Env::from_process(&command)?;
            if !wanted(&conf, &env)? {
                // Not ours: the primary plugin's result, unchanged.
                return Ok(Some(cni::add_result(&conf, &[], 0, None).to_string()));
            }
            add::add(&conf, &env).map(|r| Some(r.to_string()))
        }
        "DEL" => {
            let env = Env::from_process(&command)?;
            // A pod that did not ask for srv6pipes has nothing of ours; do not touch the daemon.
            if matches!(conf.asks_for_us(), Some(Ok(false))) {
                return Ok(None);
            }
            link::del(&conf, &env).map(|_| None)
        }
        "CHECK" => {
            since("0.4.0")?;
            let env = Env::from_process(&command)?;
            if !wanted(&conf, &env)? {
                return Ok(None);
            }
            link::check(&conf, &env).map(|_| None)
        }
        "STATUS" => {
            since("1.1.0")?;
            status(&conf).map(|_| None)
        }
        "GC" => {
            since("1.1.0")?;
            link::gc(&conf).map(|_| None)
        }
        other => Err(CniError::env(format!("unknown CNI_COMMAND {other:?}"))),
    }
}

/// Whether this pod gets a chain interface: always, unless the configuration has
/// `annotatedNetwork` (chained mode), then only when the pod's networks annotation names it.
/// The runtime passes the annotations when the entry declares the pod-annotations capability
/// (what `srv6pipes-cni install --mode chained` writes): then pods that do not ask for srv6pipes
/// never wait on the node daemon or the API server. Otherwise the daemon reads the pod.
fn wanted(conf: &NetConf, env: &Env) -> Result<bool, CniError> {
    if let Some(decided) = conf.asks_for_us() {
        return decided;
    }
    let Some(network) = &conf.annotated_network else { return Ok(true) };
    if !env.from_kubernetes {
        return Err(CniError::env("annotatedNetwork needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS"));
    }
    let req = Request::PodNetworks { namespace: env.pod_namespace.clone(), name: env.pod_name.clone() };
    match link::call(conf, &req)? {
        Response::Networks { networks } => Ok(networks.iter().any(|n| n == network)),
        Response::Error { message } => Err(CniError::new(cni::CODE_TRY_AGAIN_LATER, message)),
        other => Err(CniError::io(format!("node daemon gave an unexpected answer: {other:?}"))),
    }
}

/// STATUS (SPEC 1.1): ready when the node daemon answers; code 50 otherwise.
fn status(conf: &NetConf) -> Result<(), CniError> {
    node_api::call(Path::new(&conf.socket), &Request::Sids, Duration::from_secs(5))
        .map(|_| ())
        .map_err(|e| CniError::new(CODE_NOT_AVAILABLE, format!("srv6pipes is not available: {e}")))?;
    if let Some(ipam) = &conf.ipam {
        ipam::delegate(conf, ipam, "STATUS", None)?;
    }
    Ok(())
}
