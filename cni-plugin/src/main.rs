//! srv6pipes-cni: wires a VNF pod's chain interface (a veth to the node) and registers it with
//! the node daemon, which gives it an End.AD SID. CNI spec: ADD, DEL and VERSION; answers in the
//! `cniVersion` of the configuration it is given.

mod cni;
mod link;

use std::io::Read;
use std::process::ExitCode;

use cni::{CniError, Env, NetConf};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let version_hint = std::io::stdin().read_to_end(&mut stdin).ok().and_then(|_| cni::peek_version(&stdin));
    match run(&stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(version_hint.as_deref().unwrap_or(cni::LATEST)));
            eprintln!("srv6pipes-cni: {}", e.msg);
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
    let env = Env::from_process(&command)?;
    match command.as_str() {
        "ADD" => link::add(&conf, &env).map(|r| Some(r.to_string())),
        "DEL" => link::del(&conf, &env).map(|_| None),
        "CHECK" | "STATUS" | "GC" => Err(CniError::new(
            cni::CODE_INVALID_ENV,
            format!("CNI_COMMAND {command} is not implemented by srv6pipes-cni yet"),
        )),
        other => Err(CniError::env(format!("unknown CNI_COMMAND {other:?}"))),
    }
}
