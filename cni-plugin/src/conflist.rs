//! Conflist handling shared by `srv6pipes-cni install | uninstall` and the node daemon, which
//! puts the chained entry back when the primary plugin rewrites its conflist.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

pub const PLUGIN: &str = "srv6pipes-cni";

/// In chained mode, the entry install appended, kept beside the conflists (libcni reads only
/// `.conf`, `.conflist` and `.json` files) so that it can be put back.
pub const ENTRY_FILE: &str = "srv6pipes-cni.entry";

/// Puts the chained entry back at the end of the primary conflist when it is not there (the
/// primary plugin rewrote its file, or another file became the first). Returns the conflist it
/// rewrote, or `None` when there was nothing to do (already there, or not installed chained).
pub fn ensure_entry(conf_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = conf_dir.join(ENTRY_FILE);
    let entry: Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let primary = primary_conf(conf_dir)?;
    let list = read_json(&primary)?;
    if list.get("plugins").and_then(Value::as_array).and_then(|p| p.last()) == Some(&entry) {
        return Ok(None);
    }
    let updated = with_entry(list, entry).with_context(|| format!("{}", primary.display()))?;
    write_conflist(&primary, &updated)?;
    Ok(Some(primary))
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

pub fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN)
}

/// The files libcni considers, in the order it reads them.
pub fn conf_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("conf" | "conflist" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

/// The configuration the runtime uses: the first file in libcni's order.
pub fn primary_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    conf_files(dir)?
        .into_iter()
        .next()
        .with_context(|| format!("no CNI configuration in {} yet: chained mode needs the primary network installed first", dir.display()))
}

pub fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

pub fn write_conflist(path: &Path, list: &Value) -> anyhow::Result<()> {
    write_atomic(path, format!("{}\n", serde_json::to_string_pretty(list)?).as_bytes(), 0o644)
}

/// Writes `path` through a temporary file in the same directory (an extension libcni ignores)
/// and a rename, so readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
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
    use serde_json::json;

    #[test]
    fn a_rewritten_primary_gets_the_entry_back_once() {
        let dir = std::env::temp_dir().join(format!("srv6pipes-conflist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let primary = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp"}]});
        let entry = json!({"type": PLUGIN, "annotatedNetwork": "srv6pipes"});
        std::fs::write(dir.join("10-k8s.conflist"), primary.to_string()).unwrap();
        assert_eq!(ensure_entry(&dir).unwrap(), None, "not installed chained: nothing to keep");
        assert_eq!(read_json(&dir.join("10-k8s.conflist")).unwrap(), primary);

        std::fs::write(dir.join(ENTRY_FILE), entry.to_string()).unwrap();
        assert_eq!(ensure_entry(&dir).unwrap(), Some(dir.join("10-k8s.conflist")));
        let restored = read_json(&dir.join("10-k8s.conflist")).unwrap();
        assert_eq!(restored["plugins"], json!([{"type": "ptp"}, entry]));
        assert_eq!(ensure_entry(&dir).unwrap(), None, "already there: the file is left alone");

        // The primary plugin rewrites its file (a new version, our entry gone), or a new first
        // file appears: the entry goes where the runtime reads.
        std::fs::write(
            dir.join("10-k8s.conflist"),
            json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp", "mtu": 1400}]}).to_string(),
        )
        .unwrap();
        assert!(ensure_entry(&dir).unwrap().is_some());
        assert_eq!(read_json(&dir.join("10-k8s.conflist")).unwrap()["plugins"][1], entry);
        std::fs::write(
            dir.join("05-new.conflist"),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}).to_string(),
        )
        .unwrap();
        assert_eq!(ensure_entry(&dir).unwrap(), Some(dir.join("05-new.conflist")));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
