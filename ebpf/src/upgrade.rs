//! A daemon of another build on a node's pins (an upgrade, or a rollback): loading reuses every
//! pinned map as it is, so a map whose layout this build changed is unpinned first and created
//! afresh; and the links adopted from the previous daemon get this build's programs in place
//! (`BPF_LINK_UPDATE`: the link, its place in the tcx chain and its pin stay).

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya_obj::maps::PinningType;

use crate::{classifier, Attached, Datapath, DatapathError, Hook, Result, OBJECT};

/// What the programs and the control surface rely on in a map: its kind, sizes and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub kind: u32,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    /// How `pinned` differs from this (the object's) layout, e.g. "value bytes 8 -> 16".
    pub fn difference(&self, pinned: &Layout) -> Option<String> {
        let fields = [
            ("type", pinned.kind, self.kind),
            ("key bytes", pinned.key, self.key),
            ("value bytes", pinned.value, self.value),
            ("max entries", pinned.max_entries, self.max_entries),
            ("flags", pinned.flags, self.flags),
        ];
        let changed: Vec<String> =
            fields.iter().filter(|(_, had, wants)| had != wants).map(|(f, had, wants)| format!("{f} {had} -> {wants}")).collect();
        (!changed.is_empty()).then(|| changed.join(", "))
    }
}

/// Unpins the maps in `pin_dir` whose layout is not this object's, so that loading creates them
/// afresh; the programs still attached keep the old maps until their links are taken over.
/// Returns "map: difference" for each one replaced.
pub(crate) fn unpin_changed_maps(pin_dir: &Path) -> Result<Vec<String>> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| DatapathError::Invalid(format!("parse the eBPF object: {e}")))?;
    let mut replaced = Vec::new();
    for (name, map) in object.maps.iter().filter(|(_, m)| m.pinning() == PinningType::ByName) {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::Invalid(format!("read pinned map {}: {e}", path.display())))?;
        let pinned = Layout {
            kind: info.map_type().map_or(u32::MAX, |t| t as u32),
            key: info.key_size(),
            value: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        let wanted = Layout {
            kind: map.map_type(),
            key: map.key_size(),
            value: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
        };
        if let Some(difference) = wanted.difference(&pinned) {
            std::fs::remove_file(&path).map_err(|e| DatapathError::Invalid(format!("unpin map {}: {e}", path.display())))?;
            replaced.push(format!("{name}: {difference}"));
        }
    }
    Ok(replaced)
}

impl Datapath {
    /// The maps this instance found pinned with another layout and replaced ("map: difference"):
    /// their entries are gone (the daemon writes its state again; End.AD learns again).
    pub fn replaced_maps(&self) -> &[String] {
        &self.replaced_maps
    }

    /// The kernel's id of this instance's program for `hook`.
    pub fn program_id(&mut self, hook: Hook) -> Result<u32> {
        let info = classifier(&mut self.bpf, hook).info();
        Ok(info.map_err(|source| DatapathError::Program { program: hook.program(), source })?.id())
    }

    /// Runs this instance's programs in every link adopted from the previous daemon, so that an
    /// upgraded daemon's programs reach the interfaces it found attached (a restart of the same
    /// build swaps identical code). Call once the maps hold the node's state: a replaced map
    /// starts empty. A link detached since is skipped; one that cannot be updated keeps its
    /// program and is reported. Returns each link taken over, or why not.
    pub fn take_over_adopted(&mut self) -> Vec<Result<(Hook, String)>> {
        std::mem::take(&mut self.adopted).into_iter().filter_map(|(hook, ifname, path)| self.take_over(hook, ifname, path)).collect()
    }

    fn take_over(&mut self, hook: Hook, ifname: String, path: PathBuf) -> Option<Result<(Hook, String)>> {
        let key = (hook, ifname.clone());
        let (link, ifindex) = match self.links.remove(&key) {
            Some(Attached::Link { link, ifindex }) => (link, ifindex),
            // Detached since, or attached again as a filter: nothing of the old program's left.
            other => {
                if let Some(filter) = other {
                    self.links.insert(key, filter);
                }
                return None;
            }
        };
        let program = hook.program();
        let updated = SchedClassifierLink::try_from(FdLink::from(link))
            .map_err(|e| DatapathError::Invalid(format!("take over {program} on {ifname}: not a tcx link ({e})")))
            .and_then(|link| {
                let attach_err = |source| DatapathError::Attach { program, ifname: ifname.clone(), source };
                let prog = classifier(&mut self.bpf, hook);
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                // The pin holds the link: this descriptor can go.
                drop(prog.take_link(id).map_err(attach_err)?);
                Ok(())
            });
        // Whether or not it was updated, the link is still pinned (and attached) at `path`.
        let reopened = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Invalid(format!("reopen link {}: {e}", path.display())));
        match reopened {
            Ok(link) => {
                self.links.insert(key, Attached::Link { link, ifindex });
            }
            Err(e) => return Some(Err(e)),
        }
        Some(updated.map(|()| (hook, ifname)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_difference_names_every_field_that_changed() {
        let want = Layout { kind: 1, key: 4, value: 16, max_entries: 1024, flags: 0 };
        assert_eq!(want.difference(&want), None);
        assert_eq!(want.difference(&Layout { value: 8, ..want }).as_deref(), Some("value bytes 8 -> 16"));
        let other = Layout { kind: 9, key: 8, value: 16, max_entries: 64, flags: 1 };
        assert_eq!(want.difference(&other).as_deref(), Some("type 9 -> 1, key bytes 8 -> 4, max entries 64 -> 1024, flags 1 -> 0"));
    }
}
