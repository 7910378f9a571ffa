//! Helpers shared by the end-to-end tests (each test binary uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The cargo target profile directory holding the workspace's binaries:
/// target/<profile>/deps/<test>-<hash>  ->  target/<profile>.
pub fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn has_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why this machine cannot run a lab, if it cannot.
pub fn missing_lab_prerequisite(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if let Some(t) = tools.iter().chain(&["ip", "sysctl"]).find(|t| !has_tool(t)) {
        return Some(format!("{t} is not installed"));
    }
    if !["/usr/lib/cni/ptp", "/opt/cni/bin/ptp"].iter().any(|p| Path::new(p).exists()) {
        return Some("CNI plugins (ptp, host-local) are not installed".into());
    }
    None
}

/// Skips the calling test, saying why, when the lab cannot run here.
#[macro_export]
macro_rules! require_lab {
    ($($tool:expr),*) => {
        if let Some(why) = common::missing_lab_prerequisite(&[$($tool),*]) {
            eprintln!("SKIPPED: the lab needs root and its tools: {why}");
            return;
        }
    };
}
