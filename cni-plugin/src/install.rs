//! `srv6pipes-cni install | uninstall`: what the DaemonSet's init container runs to put the
//! plugin on the host. The binary is copied atomically (temp file + rename in the target
//! directory, so a runtime never executes half a file). In chained mode our entry is appended to
//! the cluster's primary conflist (the file the runtime reads: the alphabetically first in the
//! configuration directory); in Multus mode the NetworkAttachmentDefinition carries the
//! configuration, so only the binary is installed. Uninstall removes exactly what install added.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

pub const PLUGIN: &str = "srv6pipes-cni";

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
        let list = read_json(&primary)?;
        let updated = with_entry(list, entry).with_context(|| format!("{}", primary.display()))?;
        install_binary(i)?;
        write_conflist(&primary, &updated)?;
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
    for path in conf_files(&d.conf_dir)? {
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
    let mut e = json!({"type": PLUGIN, "annotatedNetwork": i.network, "interfaceName": i.interface, "socket": i.socket});
    if let Some(mtu) = i.mtu {
        e["mtu"] = json!(mtu);
    }
    e
}

/// The conflist with `entry` as its last plugin (replacing an earlier srv6pipes-cni entry).
pub fn with_entry(mut list: Value, entry: Value) -> anyhow::Result<Value> {
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        bail!("not a conflist (no \"plugins\" list): chained mode needs the primary network as a .conflist");
    };
    if plugins.iter().all(is_ours) {
        bail!("the conflist has no primary plugin to chain after");
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry);
    Ok(list)
}

/// The conflist without srv6pipes-cni entries, or None when it had none.
pub fn without_entry(list: &Value) -> Option<Value> {
    let plugins = list.get("plugins")?.as_array()?;
    if !plugins.iter().any(is_ours) {
        return None;
    }
    let mut list = list.clone();
    list["plugins"].as_array_mut().expect("checked").retain(|p| !is_ours(p));
    Some(list)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN)
}

/// The files libcni considers, in the order it reads them.
fn conf_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("conf" | "conflist" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

/// The configuration the runtime uses: the first file in libcni's order.
fn primary_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    conf_files(dir)?
        .into_iter()
        .next()
        .with_context(|| format!("no CNI configuration in {} yet: chained mode needs the primary network installed first", dir.display()))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

fn write_conflist(path: &Path, list: &Value) -> anyhow::Result<()> {
    write_atomic(path, format!("{}\n", serde_json::to_string_pretty(list)?).as_bytes(), 0o644)
}

/// Writes `path` through a temporary file in the same directory (an extension libcni ignores)
/// and a rename, so readers see the old file or the new one, never a part.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("target has no directory")?;
    let name = path.file_name().context("target has no name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.srv6pipes-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("write {}", path.display()))
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
        assert_eq!(
            plugins[2],
            json!({"type": PLUGIN, "annotatedNetwork": "srv6pipes", "interfaceName": "net1", "socket": "/run/x.sock", "mtu": 1400})
        );
        assert_eq!(std::fs::read_to_string(d.conf_dir.join("20-other.conflist")).unwrap(), "{}", "only the primary changes");
        let names: Vec<_> = std::fs::read_dir(&d.conf_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        // Pods still attached: the entry goes, the binary stays for their DEL.
        uninstall(&d, true).unwrap();
        assert_eq!(read_json(&d.conf_dir.join("10-k8s.conflist")).unwrap(), primary());
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
