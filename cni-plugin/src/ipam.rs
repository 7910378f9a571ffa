//! IPAM delegation (CNI SPEC §4): the IPAM plugin named by `ipam.type` is found in CNI_PATH and
//! run with the same environment and configuration; its result or error comes back as is.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::cni::{CniError, NetConf, CODE_INVALID_CONFIG};

fn find(kind: &str) -> Result<PathBuf, CniError> {
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::new(CODE_INVALID_CONFIG, format!("IPAM plugin {kind:?} not found in CNI_PATH {path:?}")))
}

/// Runs the IPAM plugin for `command`; `netns_override` replaces CNI_NETNS when given.
pub fn delegate(conf: &NetConf, ipam: &Value, command: &str, netns_override: Option<&str>) -> Result<Option<Value>, CniError> {
    start(conf, ipam, command, netns_override)?.wait()
}

/// An IPAM plugin started and not yet waited for: ADD runs it beside its own work. One
/// dropped unread is still waited for, so that an undo's IPAM DEL never overtakes its ADD.
pub struct Running {
    child: Option<std::process::Child>,
    kind: String,
    command: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Starts the IPAM plugin for `command` with the configuration on its stdin (closed at once:
/// a configuration is far smaller than a pipe's buffer).
pub fn start(conf: &NetConf, ipam: &Value, command: &str, netns_override: Option<&str>) -> Result<Running, CniError> {
    let kind = ipam["type"].as_str().unwrap_or_default();
    let mut cmd = Command::new(find(kind)?);
    cmd.env("CNI_COMMAND", command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(ns) = netns_override {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().map_err(|e| CniError::io(format!("run IPAM plugin {kind}: {e}")))?;
    let written = child.stdin.take().expect("piped").write_all(&conf.raw);
    let running = Running { child: Some(child), kind: kind.to_string(), command: command.to_string() };
    match written {
        Ok(()) => Ok(running),
        Err(e) => {
            let _ = running.wait();
            Err(CniError::io(format!("IPAM plugin {kind}: {e}")))
        }
    }
}

impl Running {
    /// Its result (None: it printed nothing), or its error as it gave it.
    pub fn wait(mut self) -> Result<Option<Value>, CniError> {
        let (kind, command) = (&self.kind, &self.command);
        let child = self.child.take().expect("waited for once: wait takes it by value");
        let out = child.wait_with_output().map_err(|e| CniError::io(format!("IPAM plugin {kind}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
            let mut e = CniError::new(
                err["code"].as_u64().unwrap_or(999) as u32,
                format!("IPAM plugin {kind} {command}: {}", err["msg"].as_str().unwrap_or(stdout.trim())),
            );
            e.details = err["details"].as_str().unwrap_or(String::from_utf8_lossy(&out.stderr).trim()).to_string();
            return Err(e);
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&stdout).map(Some).map_err(|e| CniError::io(format!("IPAM plugin {kind}: bad result: {e}")))
    }
}
