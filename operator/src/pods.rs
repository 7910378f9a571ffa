//! The operator's mirror of Pods, as the compiler reads them: each pod's [`PodInfo`] (namespace,
//! name, node, labels, addresses, readiness), in (namespace, name) order, not the Pod object.
//! A slim `Pod` still weighed 3.8 KB (its types hold every optional field inline): 229 MiB for
//! 60,000 pods, where their `PodInfo`s take a fifth of that; and every compilation sorted and
//! converted the pods again.
//!
//! It follows a watch as a reflector store does: a relist (`Init` .. `InitDone`) replaces the
//! whole set once complete, and the mirror is ready after the first one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use srv6::compiler::PodInfo;
use tokio::sync::watch;

type Key = (String, String);

#[derive(Default)]
struct Inner {
    live: BTreeMap<Key, PodInfo>,
    /// A relist in progress.
    relist: Option<BTreeMap<Key, PodInfo>>,
}

/// The read side.
#[derive(Clone)]
pub struct Pods {
    inner: Arc<RwLock<Inner>>,
    ready: watch::Receiver<bool>,
}

/// The write side, fed by the watch (or by tests).
pub struct PodsWriter {
    inner: Arc<RwLock<Inner>>,
    ready: watch::Sender<bool>,
}

pub fn store() -> (Pods, PodsWriter) {
    let inner = Arc::new(RwLock::new(Inner::default()));
    let (tx, rx) = watch::channel(false);
    (Pods { inner: inner.clone(), ready: rx }, PodsWriter { inner, ready: tx })
}

fn key(pod: &Pod) -> Key {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Puts `pod` in `map` as the compiler reads it; a pod not scheduled yet is not in it.
fn put(map: &mut BTreeMap<Key, PodInfo>, pod: &Pod) {
    match crate::world::pod_info(pod) {
        Some(info) => map.insert(key(pod), info),
        None => map.remove(&key(pod)),
    };
}

impl PodsWriter {
    pub fn apply_watcher_event(&mut self, event: &Event<Pod>) {
        let mut inner = self.inner.write().expect("pods");
        match event {
            Event::Apply(pod) => put(&mut inner.live, pod),
            Event::Delete(pod) => drop(inner.live.remove(&key(pod))),
            Event::Init => inner.relist = Some(BTreeMap::new()),
            Event::InitApply(pod) => put(inner.relist.get_or_insert_default(), pod),
            Event::InitDone => {
                inner.live = inner.relist.take().unwrap_or_default();
                self.ready.send_replace(true);
            }
        }
    }
}

impl Pods {
    /// Every scheduled pod, in (namespace, name) order.
    pub fn infos(&self) -> Vec<PodInfo> {
        self.inner.read().expect("pods").live.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("pods").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) -> Result<(), String> {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.map(|_| ()).map_err(|_| "the pod mirror stopped before its first list".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIPs": [{"ip": "fd00::2"}], "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn names(pods: &Pods) -> Vec<String> {
        pods.infos().iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
    }

    #[tokio::test]
    async fn follows_a_watch_in_namespace_and_name_order_and_relists_whole() {
        let (pods, mut w) = store();
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(pod("b", "z", Some("n1"))));
        w.apply_watcher_event(&Event::InitApply(pod("b-x", "a", Some("n1"))));
        w.apply_watcher_event(&Event::InitApply(pod("b", "a", None)));
        assert!(pods.is_empty() && !*pods.ready.borrow(), "nothing until the list is complete");
        w.apply_watcher_event(&Event::InitDone);
        pods.wait_until_ready().await.unwrap();
        // (namespace, name) order: "b" < "b-x"; the unscheduled pod is left out.
        assert_eq!(names(&pods), ["b/z", "b-x/a"]);
        assert_eq!(pods.infos()[0], crate::world::pod_info(&pod("b", "z", Some("n1"))).unwrap());
        // Scheduled later, deleted, relisted without one: the set follows.
        w.apply_watcher_event(&Event::Apply(pod("b", "a", Some("n2"))));
        w.apply_watcher_event(&Event::Delete(pod("b", "z", Some("n1"))));
        assert_eq!(names(&pods), ["b/a", "b-x/a"]);
        w.apply_watcher_event(&Event::Apply(pod("b", "a", None)));
        assert_eq!(names(&pods), ["b-x/a"], "unscheduled again: out");
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(pod("c", "c", Some("n1"))));
        assert_eq!(names(&pods), ["b-x/a"], "the old set until the relist is done");
        w.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&pods), ["c/c"]);
    }
}
