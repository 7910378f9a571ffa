//! The mirror of NodeProgramSlices, with the names of each node's slices beside the reflector
//! store: a chain's reconcile publishes its own few nodes and looks their slices up by node,
//! where filtering every slice of the cluster for them was a fifth of the operator's CPU in the
//! cold start at 100,000 chains.
//!
//! It follows the watch as the store does: a relist (`Init` .. `InitDone`) replaces the index
//! once complete.
//!
//! Beside them, the operator's own last write of each slice (the API server's answer), which is
//! what it knows of a slice its mirror has not seen yet. A slice deleted by someone else (a
//! `kubectl delete`, the garbage collector after a Node was replaced) takes that record with it,
//! and is reported ([`SlicesWriter::apply_watcher_event`]): it is written again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use srv6pipes_crds::NodeProgramSlice;
use tracing::info;

#[derive(Default)]
struct Index {
    /// Slice names by node (`spec.node`).
    by_node: HashMap<String, BTreeSet<String>>,
    /// The node of each slice, to find it again when the slice goes.
    node_of: HashMap<String, String>,
}

impl Index {
    fn put(&mut self, slice: &NodeProgramSlice) {
        let name = slice.name_any();
        // Most events are a known slice written or reported again, on the same node.
        if self.node_of.get(&name) == Some(&slice.spec.node) {
            return;
        }
        self.remove(&name);
        self.by_node.entry(slice.spec.node.clone()).or_default().insert(name.clone());
        self.node_of.insert(name, slice.spec.node.clone());
    }

    fn remove(&mut self, name: &str) {
        let Some(node) = self.node_of.remove(name) else { return };
        if let Some(names) = self.by_node.get_mut(&node) {
            names.remove(name);
            if names.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    live: Index,
    /// A relist in progress.
    relist: Option<Index>,
    /// Per slice, as the operator's last successful write left it (slim).
    written: HashMap<String, Arc<NodeProgramSlice>>,
    /// Slices the operator is deleting, by name, with the uid it is deleting when it knows it:
    /// their deletion is its own (a later slice of that name's is not).
    deleting: HashMap<String, Option<String>>,
    /// The uid and node of each slice name's last deletion, until a slice of that name is seen
    /// again: a write whose answer comes after its slice's deletion (the garbage collector is
    /// that quick) is no record of what the API server holds.
    gone: HashMap<String, (Option<String>, String)>,
}

impl Inner {
    /// Notes that `slice` was deleted; whether by someone else. The operator's record of its
    /// write of that slice (that uid) goes.
    fn deleted(&mut self, slice: &NodeProgramSlice) -> bool {
        let name = slice.name_any();
        if self.written.get(&name).is_some_and(|w| w.uid() == slice.uid()) {
            self.written.remove(&name);
        }
        self.gone.insert(name.clone(), (slice.uid(), slice.spec.node.clone()));
        let own = self.deleting.get(&name).is_some_and(|uid| uid.is_none() || *uid == slice.uid());
        if own {
            self.deleting.remove(&name);
        }
        let foreign = !own;
        if foreign {
            info!(slice = %name, node = %slice.spec.node, "slice deleted by someone else: written again if still wanted");
        }
        foreign
    }

    fn seen(&mut self, slice: &NodeProgramSlice) {
        if !self.gone.is_empty() {
            self.gone.remove(&slice.name_any());
        }
    }
}

/// The read side: the index and the operator's writes; the slices themselves are in the store.
#[derive(Clone, Default)]
pub struct SliceIndex(Arc<RwLock<Inner>>);

/// The write side, fed by the watch (or by tests): the store's writer and the index.
pub struct SlicesWriter {
    store: reflector::store::Writer<NodeProgramSlice>,
    index: SliceIndex,
}

pub fn store() -> (Store<NodeProgramSlice>, SliceIndex, SlicesWriter) {
    let (store, writer) = reflector::store();
    let index = SliceIndex::default();
    (store, index.clone(), SlicesWriter { store: writer, index })
}

impl SlicesWriter {
    /// Applies a watch event to the store and the index; whether it deleted a slice that the
    /// operator did not (a relist that no longer brings a slice deleted it).
    pub fn apply_watcher_event(&mut self, event: &Event<NodeProgramSlice>) -> bool {
        let mut inner = self.index.0.write().expect("slice index");
        let mut foreign = false;
        match event {
            Event::Apply(s) => {
                inner.seen(s);
                inner.live.put(s)
            }
            Event::Delete(s) => {
                inner.live.remove(&s.name_any());
                foreign = inner.deleted(s);
            }
            Event::Init => inner.relist = Some(Index::default()),
            Event::InitApply(s) => {
                inner.seen(s);
                inner.relist.get_or_insert_default().put(s)
            }
            Event::InitDone => {
                let relisted = inner.relist.take().unwrap_or_default();
                let missing: Vec<String> = inner.live.node_of.keys().filter(|n| !relisted.node_of.contains_key(*n)).cloned().collect();
                // The store still holds them: it takes the relist after the index.
                let store = self.store.as_reader();
                for slice in missing.iter().filter_map(|name| store.get(&ObjectRef::new(name))) {
                    foreign |= inner.deleted(&slice);
                }
                // Written but deleted before the mirror saw it, while the watch was away.
                inner.written.retain(|name, _| relisted.node_of.contains_key(name));
                inner.live = relisted;
            }
        }
        drop(inner);
        self.store.apply_watcher_event(event);
        foreign
    }
}

impl SliceIndex {
    /// `node`'s slices in `store`, by name.
    pub fn of(&self, store: &Store<NodeProgramSlice>, node: &str) -> impl Iterator<Item = (String, Arc<NodeProgramSlice>)> {
        let names: Vec<String> = self.0.read().expect("slice index").live.by_node.get(node).into_iter().flatten().cloned().collect();
        let store = store.clone();
        names.into_iter().filter_map(move |name| {
            let slice = store.get(&ObjectRef::new(&name))?;
            Some((name, slice))
        })
    }

    /// The operator's last successful write of slice `name`, unless the slice was deleted
    /// since.
    pub fn written(&self, name: &str) -> Option<Arc<NodeProgramSlice>> {
        self.0.read().expect("slice index").written.get(name).cloned()
    }

    /// Records the operator's successful write of slice `name`, unless the watch has already
    /// brought that slice's deletion.
    pub fn wrote(&self, name: &str, slice: Arc<NodeProgramSlice>) {
        let mut inner = self.0.write().expect("slice index");
        if inner.gone.get(name).is_none_or(|(uid, _)| *uid != slice.uid()) {
            inner.written.insert(name.to_string(), slice);
        }
    }

    /// Drops the operator's record `stale` of its write of slice `name` (a newer copy is
    /// mirrored).
    pub fn drop_written(&self, name: &str, stale: &NodeProgramSlice) {
        let mut inner = self.0.write().expect("slice index");
        if inner.written.get(name).is_some_and(|w| w.uid() == stale.uid() && w.metadata.generation == stale.metadata.generation) {
            inner.written.remove(name);
        }
    }

    /// Forgets the operator's writes of `node`'s slices, and their deletions (the node left).
    pub fn forget_node(&self, node: &str) {
        let mut inner = self.0.write().expect("slice index");
        inner.written.retain(|_, s| s.spec.node != node);
        inner.gone.retain(|_, (_, n)| n != node);
    }

    /// The operator is about to delete slice `name` (`uid`, when known): its deletion is not
    /// someone else's.
    pub fn deleting(&self, name: &str, uid: Option<String>) {
        self.0.write().expect("slice index").deleting.insert(name.to_string(), uid);
    }

    /// The operator's deletion of slice `name` ended: `Ok(true)` deleted, `Ok(false)` already
    /// gone, or failed. Its record of its writes of the slice goes with the slice; the deletion
    /// the watch brings next is its own only if it deleted it.
    pub fn deletion_ended(&self, name: &str, outcome: &Result<bool, String>) {
        let mut inner = self.0.write().expect("slice index");
        if outcome.is_ok() {
            inner.written.remove(name);
        }
        if outcome != &Ok(true) {
            inner.deleting.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, node: &str) -> NodeProgramSlice {
        serde_json::from_value(json!({
            "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
            "metadata": {"name": name}, "spec": {"node": node, "tables": {}},
        }))
        .unwrap()
    }

    fn with_uid(name: &str, node: &str, uid: &str) -> NodeProgramSlice {
        let mut s = slice(name, node);
        s.metadata.uid = Some(uid.into());
        s
    }

    #[test]
    fn a_slice_deleted_by_someone_else_is_reported_and_takes_the_record_of_its_write() {
        let (_store, index, mut writer) = store();
        let uid = |s: Option<Arc<NodeProgramSlice>>| s.and_then(|s| s.metadata.uid.clone());
        for (name, u) in [("n1.0", "a"), ("n1.1", "b"), ("n1.2", "c")] {
            let s = with_uid(name, "n1", u);
            assert!(!writer.apply_watcher_event(&Event::Apply(s.clone())));
            index.wrote(name, Arc::new(s));
        }
        // Someone else deletes n1.1: reported, and the operator no longer takes its own write
        // for what the API server holds.
        assert!(writer.apply_watcher_event(&Event::Delete(with_uid("n1.1", "n1", "b"))));
        assert_eq!(uid(index.written("n1.1")), None);
        assert_eq!(uid(index.written("n1.0")), Some("a".into()));
        // The operator deletes n1.2: its own deletion, reported by neither the watch nor the
        // request first.
        index.deleting("n1.2", Some("c".into()));
        assert!(!writer.apply_watcher_event(&Event::Delete(with_uid("n1.2", "n1", "c"))));
        index.deletion_ended("n1.2", &Ok(true));
        assert_eq!(uid(index.written("n1.2")), None);
        // The operator deletes n1.0 but the request fails: the deletion the watch brings later
        // is someone else's. A late deletion of an older n1.0 leaves the record of a newer one.
        index.deleting("n1.0", None);
        index.deletion_ended("n1.0", &Err("timeout".into()));
        assert_eq!(uid(index.written("n1.0")), Some("a".into()), "not deleted: the write still stands");
        index.wrote("n1.0", Arc::new(with_uid("n1.0", "n1", "a2")));
        assert!(writer.apply_watcher_event(&Event::Delete(with_uid("n1.0", "n1", "a"))));
        assert_eq!(uid(index.written("n1.0")), Some("a2".into()));
        // Already gone when the operator deletes it: its record goes, and nothing is expected.
        index.deleting("n1.0", None);
        index.deletion_ended("n1.0", &Ok(false));
        assert_eq!(uid(index.written("n1.0")), None);
        assert!(writer.apply_watcher_event(&Event::Delete(with_uid("n1.0", "n1", "a2"))));
    }

    #[test]
    fn a_write_answered_after_its_slices_deletion_is_no_record() {
        let (_store, index, mut writer) = store();
        // The garbage collector deletes the slice before the write's answer is recorded.
        let s = with_uid("n1.1", "n1", "b");
        writer.apply_watcher_event(&Event::Apply(s.clone()));
        assert!(writer.apply_watcher_event(&Event::Delete(s.clone())));
        index.wrote("n1.1", Arc::new(s));
        assert!(index.written("n1.1").is_none(), "a record of a slice already gone");
        // Written again (another uid): recorded, and seen by the watch.
        let again = with_uid("n1.1", "n1", "b2");
        index.wrote("n1.1", Arc::new(again.clone()));
        assert!(index.written("n1.1").is_some());
        writer.apply_watcher_event(&Event::Apply(again));
        assert!(index.0.read().unwrap().gone.is_empty(), "a slice seen again is no longer gone");
        // A newer copy mirrored: the record of the older one goes, not a newer record.
        let newer = with_uid("n1.1", "n1", "b3");
        index.drop_written("n1.1", &newer);
        assert!(index.written("n1.1").is_some());
        index.drop_written("n1.1", &with_uid("n1.1", "n1", "b2"));
        assert!(index.written("n1.1").is_none());
        // The deletions of a node's slices go with the node.
        writer.apply_watcher_event(&Event::Delete(with_uid("n1.0", "n1", "a")));
        writer.apply_watcher_event(&Event::Delete(with_uid("n2.0", "n2", "c")));
        index.forget_node("n1");
        assert_eq!(index.0.read().unwrap().gone.keys().collect::<Vec<_>>(), ["n2.0"]);
    }

    #[test]
    fn a_relist_that_misses_a_slice_reports_its_deletion() {
        let (store, index, mut writer) = store();
        for (name, u) in [("n1.0", "a"), ("n1.1", "b"), ("n2.0", "c")] {
            writer.apply_watcher_event(&Event::Apply(with_uid(name, &name[..2], u)));
            index.wrote(name, Arc::new(with_uid(name, &name[..2], u)));
        }
        index.deleting("n2.0", None);
        writer.apply_watcher_event(&Event::Init);
        for event in [Event::InitApply(with_uid("n1.0", "n1", "a")), Event::InitApply(with_uid("n2.0", "n2", "c2"))] {
            assert!(!writer.apply_watcher_event(&event));
        }
        index.wrote("n3.0", Arc::new(with_uid("n3.0", "n3", "d")));
        assert!(writer.apply_watcher_event(&Event::InitDone), "n1.1 went while the watch was away");
        assert!(index.written("n1.1").is_none());
        assert!(index.written("n3.0").is_none(), "written, never mirrored, and not relisted: gone");
        assert!(index.written("n1.0").is_some());
        assert_eq!(names(&index, &store, "n1"), ["n1.0"]);
        // Only the missing are deletions: the operator still waits for its own of n2.0.
        assert!(!writer.apply_watcher_event(&Event::Delete(with_uid("n2.0", "n2", "c2"))));
        // A deletion of a known uid whose event the watch lost (the relist brings the slice
        // written again since): the next slice of that name is not the operator's to delete.
        writer.apply_watcher_event(&Event::Apply(with_uid("n2.0", "n2", "c3")));
        index.deleting("n2.0", Some("c3".into()));
        index.deletion_ended("n2.0", &Ok(true));
        writer.apply_watcher_event(&Event::Init);
        for s in [with_uid("n1.0", "n1", "a"), with_uid("n2.0", "n2", "c4")] {
            writer.apply_watcher_event(&Event::InitApply(s));
        }
        assert!(!writer.apply_watcher_event(&Event::InitDone));
        assert!(writer.apply_watcher_event(&Event::Delete(with_uid("n2.0", "n2", "c4"))), "someone else deleted the newer n2.0");
        // A node that left takes the records of its slices' writes.
        index.forget_node("n1");
        assert!(index.written("n1.0").is_none());
    }

    fn names(index: &SliceIndex, store: &Store<NodeProgramSlice>, node: &str) -> Vec<String> {
        index
            .of(store, node)
            .map(|(name, s)| {
                assert_eq!(s.spec.node, node);
                name
            })
            .collect()
    }

    #[test]
    fn a_nodes_slices_are_found_by_node_through_changes_and_relists() {
        let (store, index, mut writer) = store();
        writer.apply_watcher_event(&Event::Init);
        for (name, node) in [("n1.0", "n1"), ("n1.1", "n1"), ("n2.0", "n2"), ("n1.example.0", "n1.example")] {
            writer.apply_watcher_event(&Event::InitApply(slice(name, node)));
        }
        assert!(names(&index, &store, "n1").is_empty(), "nothing before the relist is complete");
        writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&index, &store, "n1"), ["n1.0", "n1.1"]);
        assert_eq!(names(&index, &store, "n1.example"), ["n1.example.0"]);
        // A slice named for another node is found by the node it is for.
        writer.apply_watcher_event(&Event::Apply(slice("stray", "n2")));
        assert_eq!(names(&index, &store, "n2"), ["n2.0", "stray"]);
        writer.apply_watcher_event(&Event::Apply(slice("stray", "n1")));
        assert_eq!(names(&index, &store, "n2"), ["n2.0"]);
        assert_eq!(names(&index, &store, "n1"), ["n1.0", "n1.1", "stray"]);
        writer.apply_watcher_event(&Event::Delete(slice("n1.1", "n1")));
        assert_eq!(names(&index, &store, "n1"), ["n1.0", "stray"]);
        writer.apply_watcher_event(&Event::Delete(slice("n1.example.0", "n1.example")));
        assert!(!index.0.read().unwrap().live.by_node.contains_key("n1.example"), "a node without slices leaves no entry");
        // A relist replaces everything: what it does not bring is gone.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(slice("n2.0", "n2")));
        writer.apply_watcher_event(&Event::InitDone);
        assert!(names(&index, &store, "n1").is_empty());
        assert_eq!(names(&index, &store, "n2"), ["n2.0"]);
    }
}
