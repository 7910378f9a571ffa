//! `srv6pipes-cni install | uninstall`: what the DaemonSet's init container runs to put the
//! plugin on the host. The binary is copied atomically (temp file + rename in the target
//! directory, so a runtime never executes half a file). In chained mode our entry is appended to
//! the cluster's primary conflist (the file the runtime reads: the alphabetically first in the
//! configuration directory); in Multus mode the NetworkAttachmentDefinition carries the
//! configuration, so only the binary is installed. Uninstall removes exactly what install added.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use srv6pipes_cni::conflist::{self, primary_conf, read_json, with_entry, without_entry, write_atomic, write_conflist, PLUGIN};

/// Installs srv6pipes-cni on a host (run by the srv6pipes DaemonSet's init container).
///
/// Called with CNI_COMMAND set, the binary is the CNI plugin; called with a subcommand, it
/// installs or uninstalls itself.
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-cni", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy this binary into --bin-dir and, in chained mode, add it to the primary conflist.
    Install(Install),
    /// Remove the binary and every srv6pipes-cni entry install added to conflists.
    Uninstall(Uninstall),
}

#[derive(clap::Args, Debug)]
pub struct Uninstall {
    #[command(flatten)]
    pub dirs: Dirs,
    /// Remove the conflist entries but keep the binary: pods still attached need it for their
    /// DEL (Multus calls it from its cache; without the node daemon it removes what is local).
    #[arg(long)]
    pub keep_binary: bool,
}

#[derive(clap::Args, Debug)]
pub struct Dirs {
    /// The host's CNI plugin directory, as mounted here.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted here.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Multus attaches the network from a NetworkAttachmentDefinition: install the binary only.
    Multus,
    /// Append to the primary conflist; act only on pods annotated with --network.
    Chained,
}

#[derive(clap::Args, Debug)]
pub struct Install {
    #[command(flatten)]
    pub dirs: Dirs,
    #[arg(long, value_enum, default_value = "multus")]
    pub mode: Mode,
    /// Chained mode: the network name pods ask for in k8s.v1.cni.cncf.io/networks.
    #[arg(long, default_value = "srv6pipes")]
    pub network: String,
    /// Chained mode: the chain interface created in annotated pods (the primary owns eth0).
    #[arg(long, default_value = "net1")]
    pub interface: String,
    /// Chained mode: the node daemon's socket, written into the entry.
    #[arg(long, default_value = srv6::node_api::DEFAULT_SOCKET)]
    pub socket: String,
    /// Chained mode: the chain interface's MTU (default: what the node daemon says).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The plugin binary to install (default: this executable).
    #[arg(long)]
    pub source: Option<PathBuf>,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Install(i) => install(&i),
        Command::Uninstall(u) => uninstall(&u.dirs, u.keep_binary),
    }
}

fn install(i: &Install) -> anyhow::Result<()> {
    if i.mode == Mode::Chained {
        // Check the conflist before touching anything, so a refusal leaves the host as it was.
        let primary = primary_conf(&i.dirs.conf_dir)?;
        let entry = chained_entry(i);
        let entry_copy = entry.to_string();
        let list = read_json(&primary)?;
        let updated = with_entry(list, entry).with_context(|| format!("{}", primary.display()))?;
        install_binary(i)?;
        write_conflist(&primary, &updated)?;
        // Kept for the node daemon, which puts the entry back if the primary rewrites its file.
        write_atomic(&i.dirs.conf_dir.join(conflist::ENTRY_FILE), format!("{entry_copy}\n").as_bytes(), 0o644)?;
        eprintln!("srv6pipes-cni: added to {} (pods annotated {}={})", primary.display(), srv6::node_api::NETWORKS_ANNOTATION, i.network);
    } else {
        install_binary(i)?;
    }
    Ok(())
}

fn install_binary(i: &Install) -> anyhow::Result<()> {
    let source = match &i.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().context("locate this executable")?,
    };
    let bytes = std::fs::read(&source).with_context(|| format!("read {}", source.display()))?;
    let target = i.dirs.bin_dir.join(PLUGIN);
    write_atomic(&target, &bytes, 0o755)?;
    eprintln!("srv6pipes-cni: installed {} ({} bytes)", target.display(), bytes.len());
    Ok(())
}

fn uninstall(d: &Dirs, keep_binary: bool) -> anyhow::Result<()> {
    // First, so that nothing puts the entry back.
    match std::fs::remove_file(d.conf_dir.join(conflist::ENTRY_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).context("remove the kept chained entry"),
        _ => {}
    }
    for path in conflist::conf_files(&d.conf_dir)? {
        let Ok(list) = read_json(&path) else { continue };
        if let Some(updated) = without_entry(&list) {
            write_conflist(&path, &updated)?;
            eprintln!("srv6pipes-cni: removed from {}", path.display());
        }
    }
    let target = d.bin_dir.join(PLUGIN);
    if keep_binary {
        eprintln!("srv6pipes-cni: kept {} (--keep-binary)", target.display());
        return Ok(());
    }
    match std::fs::remove_file(&target) {
        Ok(()) => eprintln!("srv6pipes-cni: removed {}", target.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", target.display())),
    }
    Ok(())
}

fn chained_entry(i: &Install) -> Value {
    // The runtime passes the pod's annotations (containerd, CRI-O): pods that do not ask for
    // srv6pipes are decided in the plugin, without the node daemon.
    let mut e = json!({
        "type": PLUGIN, "annotatedNetwork": i.network, "interfaceName": i.interface, "socket": i.socket,
        "capabilities": {crate::cni::POD_ANNOTATIONS: true},
    });
    if let Some(mtu) = i.mtu {
        e["mtu"] = json!(mtu);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> Value {
        json!({"cniVersion": "0.4.0", "name": "k8s", "plugins": [{"type": "ptp"}, {"type": "portmap"}]})
    }

    fn entry(net: &str) -> Value {
        json!({"type": PLUGIN, "annotatedNetwork": net})
    }

    #[test]
    fn entry_is_appended_once_and_removed_exactly() {
        let once = with_entry(primary(), entry("a")).unwrap();
        let twice = with_entry(once.clone(), entry("b")).unwrap();
        let types: Vec<&str> = twice["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["ptp", "portmap", PLUGIN], "reinstalling replaces, never duplicates");
        assert_eq!(twice["plugins"][2]["annotatedNetwork"], "b");
        assert_eq!(without_entry(&twice).unwrap(), primary());
        assert_eq!(without_entry(&primary()), None, "nothing of ours: nothing to rewrite");
        assert!(with_entry(json!({"cniVersion": "0.4.0", "name": "x", "type": "bridge"}), entry("a")).is_err());
        assert!(with_entry(json!({"name": "x", "plugins": [entry("a")]}), entry("a")).is_err());
    }

    fn dirs() -> (PathBuf, Dirs) {
        let base = std::env::temp_dir().join(format!("srv6pipes-install-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["bin", "net.d"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let d = Dirs { bin_dir: base.join("bin"), conf_dir: base.join("net.d") };
        (base, d)
    }

    #[test]
    fn install_then_uninstall_leaves_the_host_as_it_was() {
        let (base, d) = dirs();
        let source = base.join("plugin");
        std::fs::write(&source, b"#!/bin/true\n").unwrap();
        let primary_text = serde_json::to_string(&primary()).unwrap();
        std::fs::write(d.conf_dir.join("10-k8s.conflist"), &primary_text).unwrap();
        std::fs::write(d.conf_dir.join("20-other.conflist"), "{}").unwrap();
        let i = Install {
            dirs: Dirs { bin_dir: d.bin_dir.clone(), conf_dir: d.conf_dir.clone() },
            mode: Mode::Chained,
            network: "srv6pipes".into(),
            interface: "net1".into(),
            socket: "/run/x.sock".into(),
            mtu: Some(1400),
            source: Some(source),
        };
        install(&i).unwrap();
        install(&i).unwrap();
        let bin = d.bin_dir.join(PLUGIN);
        assert_eq!(std::fs::read(&bin).unwrap(), b"#!/bin/true\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777, 0o755);
        let list = read_json(&d.conf_dir.join("10-k8s.conflist")).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        let entry = json!({
            "type": PLUGIN, "annotatedNetwork": "srv6pipes", "interfaceName": "net1", "socket": "/run/x.sock", "mtu": 1400,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        });
        assert_eq!(plugins[2], entry);
        assert_eq!(std::fs::read_to_string(d.conf_dir.join("20-other.conflist")).unwrap(), "{}", "only the primary changes");
        assert_eq!(read_json(&d.conf_dir.join(conflist::ENTRY_FILE)).unwrap(), entry, "kept for the daemon's restore");
        let names: Vec<_> = std::fs::read_dir(&d.conf_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
        // Pods still attached: the entry goes, the binary stays for their DEL.
        uninstall(&d, true).unwrap();
        assert_eq!(read_json(&d.conf_dir.join("10-k8s.conflist")).unwrap(), primary());
        assert!(!d.conf_dir.join(conflist::ENTRY_FILE).exists());
        assert_eq!(conflist::ensure_entry(&d.conf_dir).unwrap(), None, "uninstalled: nothing puts the entry back");
        assert!(bin.exists(), "--keep-binary removed the binary");
        uninstall(&d, false).unwrap();
        uninstall(&d, false).unwrap();
        assert!(!bin.exists());
        assert_eq!(read_json(&d.conf_dir.join("10-k8s.conflist")).unwrap(), primary());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn chained_install_without_a_primary_changes_nothing() {
        let (base, d) = dirs();
        let i = Install {
            dirs: d,
            mode: Mode::Chained,
            network: "srv6pipes".into(),
            interface: "net1".into(),
            socket: "/run/x.sock".into(),
            mtu: None,
            source: None,
        };
        let e = install(&i).unwrap_err();
        assert!(format!("{e:#}").contains("no CNI configuration"), "{e:#}");
        assert!(!i.dirs.bin_dir.join(PLUGIN).exists(), "the binary waits for the configuration");
        std::fs::write(i.dirs.conf_dir.join("10-bridge.conf"), r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#).unwrap();
        assert!(format!("{:#}", install(&i).unwrap_err()).contains("not a conflist"));
        assert!(!i.dirs.bin_dir.join(PLUGIN).exists());
        std::fs::remove_dir_all(base).unwrap();
    }
}
