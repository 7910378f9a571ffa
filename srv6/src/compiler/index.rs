//! What the compiler looks up for every chain, indexed once per compilation: the pods a
//! selector selects (through the posting list of one of its labels, not a scan of every pod)
//! and a pod's SID registration. Scanning made a compilation chains x pods: at 5,000 chains and
//! 3,000 pods it spent three quarters of the operator's CPU matching labels.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use super::{NodeInfo, PodInfo, SidRegistration, World};
use crate::selector;

pub(crate) struct Index<'w> {
    world: &'w World,
    by_namespace: HashMap<&'w str, Vec<&'w PodInfo>>,
    /// By (namespace, label key, label value).
    by_label: HashMap<(&'w str, &'w str, &'w str), Vec<&'w PodInfo>>,
    /// By (node, namespace, pod): the registration of the pod's first interface by name.
    registrations: HashMap<(&'w str, &'w str, &'w str), &'w SidRegistration>,
    /// By name (the first of a name), with the name as the verdicts share it.
    nodes: HashMap<&'w str, (&'w NodeInfo, Arc<str>)>,
    /// Per pod of the world, in its order: `namespace/pod` and the pod's name, as every rule
    /// and verdict of this compilation that names the pod shares them (500,000 rules and
    /// 600,000 replicas at 100,000 chains held their own copies). Found by the pod's place in
    /// the world, not hashed: a million lookups by name cost a fifth of a compilation.
    pod_names: Vec<PodNames>,
    /// Per registration of the world, in its order: `namespace/pod:interface`, shared likewise.
    interface_names: Vec<Arc<str>>,
}

impl<'w> Index<'w> {
    pub(crate) fn new(world: &'w World) -> Self {
        let mut by_namespace: HashMap<&str, Vec<&PodInfo>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<&PodInfo>> = HashMap::new();
        for p in &world.pods {
            by_namespace.entry(&p.namespace).or_default().push(p);
            for (k, v) in &p.labels {
                by_label.entry((&p.namespace, k, v)).or_default().push(p);
            }
        }
        let mut registrations: HashMap<(&str, &str, &str), &SidRegistration> = HashMap::new();
        for r in &world.registrations {
            registrations
                .entry((&r.node, &r.pod_namespace, &r.pod_name))
                .and_modify(|have| {
                    if r.interface < have.interface {
                        *have = r;
                    }
                })
                .or_insert(r);
        }
        let mut nodes = HashMap::new();
        for n in &world.nodes {
            nodes.entry(n.name.as_str()).or_insert_with(|| (n, Arc::from(n.name.as_str())));
        }
        let pod_names =
            world.pods.iter().map(|p| PodNames { full: pod_name(&p.namespace, &p.name), short: Arc::from(p.name.as_str()) }).collect();
        let interface_names = world.registrations.iter().map(interface_name).collect();
        Index { world, by_namespace, by_label, registrations, nodes, pod_names, interface_names }
    }

    /// The pods of `namespace` that `sel` selects, by name. A selector with `matchLabels`
    /// looks at the pods of its rarest label only; one with expressions alone at the
    /// namespace's pods.
    pub(super) fn selected(&self, namespace: &str, sel: &srv6pipes_crds::PodSelector) -> Result<Vec<&'w PodInfo>, String> {
        let none = Vec::new();
        let candidates = match sel.match_labels.as_ref().filter(|m| !m.is_empty()) {
            Some(labels) => labels
                .iter()
                .map(|(k, v)| self.by_label.get(&(namespace, k.as_str(), v.as_str())).unwrap_or(&none))
                .min_by_key(|pods| pods.len())
                .unwrap_or(&none),
            None => self.by_namespace.get(namespace).unwrap_or(&none),
        };
        let mut pods = Vec::new();
        for p in candidates {
            if selector::matches(sel, &p.labels).map_err(|e| e.to_string())? {
                pods.push(*p);
            }
        }
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// The node named `name`.
    pub(super) fn node(&self, name: &str) -> Option<&'w NodeInfo> {
        self.nodes.get(name).map(|(n, _)| *n)
    }

    /// `name`, shared by every verdict of this compilation that names the node.
    pub(crate) fn node_name(&self, name: &str) -> Arc<str> {
        self.nodes.get(name).map_or_else(|| Arc::from(name), |(_, shared)| shared.clone())
    }

    /// `namespace/name` of `pod`, shared by every rule of this compilation that names it.
    pub(super) fn pod_name(&self, pod: &PodInfo) -> Arc<str> {
        self.names_of(pod).map_or_else(|| pod_name(&pod.namespace, &pod.name), |n| n.full.clone())
    }

    /// The name of `pod` (within its namespace), shared likewise.
    pub(super) fn pod_short_name(&self, pod: &PodInfo) -> Arc<str> {
        self.names_of(pod).map_or_else(|| Arc::from(pod.name.as_str()), |n| n.short.clone())
    }

    /// The shared names of `pod`, if it is one of the world's pods (not a copy).
    fn names_of(&self, pod: &PodInfo) -> Option<&PodNames> {
        position(&self.world.pods, pod).map(|i| &self.pod_names[i])
    }

    /// `namespace/pod:interface` of registration `reg`, shared likewise.
    pub(super) fn interface_name(&self, reg: &SidRegistration) -> Arc<str> {
        position(&self.world.registrations, reg).map_or_else(|| interface_name(reg), |i| self.interface_names[i].clone())
    }

    /// The SID of the pod's first registered interface (by name).
    pub(super) fn registration(&self, pod: &PodInfo) -> Option<&'w SidRegistration> {
        self.registrations.get(&(pod.node.as_str(), pod.namespace.as_str(), pod.name.as_str())).copied()
    }
}

/// A pod's names as the compilation shares them: `namespace/name` and `name`.
struct PodNames {
    full: Arc<str>,
    short: Arc<str>,
}

fn pod_name(namespace: &str, name: &str) -> Arc<str> {
    format!("{namespace}/{name}").into()
}

fn interface_name(reg: &SidRegistration) -> Arc<str> {
    format!("{}/{}:{}", reg.pod_namespace, reg.pod_name, reg.interface).into()
}

/// The place of `item` in `items`, if it is one of them (the same object, not an equal one).
fn position<T>(items: &[T], item: &T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = (item as *const T as usize).checked_sub(items.as_ptr() as usize)?;
    let i = offset / size;
    (offset % size == 0 && i < items.len() && std::ptr::eq(&items[i], item)).then_some(i)
}

impl Deref for Index<'_> {
    type Target = World;
    fn deref(&self) -> &World {
        self.world
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node: "n1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ips: Vec::new(),
            ready: true,
        }
    }

    /// A pod's and an interface's names are made once per compilation and shared by whoever
    /// names them; a pod that is not the world's own (an equal copy) still gets its names.
    #[test]
    fn names_are_shared_by_the_worlds_pods_and_made_for_others() {
        let mut world = World::default();
        world.pods.extend([pod("ns", "a", &[]), pod("ns", "b", &[]), pod("other", "a", &[])]);
        let reg = |ns: &str, name: &str, interface: &str| SidRegistration {
            node: "n1".into(),
            pod_namespace: ns.into(),
            pod_name: name.into(),
            interface: interface.into(),
            sid: crate::sid::Sid("fcbb:bb00:1:1::".parse().unwrap()),
        };
        world.registrations.extend([reg("ns", "b", "net1"), reg("ns", "b", "net2")]);
        let index = Index::new(&world);
        for (i, full) in ["ns/a", "ns/b", "other/a"].iter().enumerate() {
            let p = &world.pods[i];
            assert_eq!((&*index.pod_name(p), &*index.pod_short_name(p)), (*full, p.name.as_str()));
            assert!(Arc::ptr_eq(&index.pod_name(p), &index.pod_name(p)), "{full}: one name per compilation");
            let copy = p.clone();
            assert_eq!(&*index.pod_name(&copy), *full);
            assert!(!Arc::ptr_eq(&index.pod_name(&copy), &index.pod_name(p)), "a copy is no pod of the world's");
        }
        for (r, name) in world.registrations.iter().zip(["ns/b:net1", "ns/b:net2"]) {
            assert_eq!(&*index.interface_name(r), name);
            assert!(Arc::ptr_eq(&index.interface_name(r), &index.interface_name(r)));
            assert_eq!(&*index.interface_name(&r.clone()), name);
        }
    }

    /// The index selects exactly what a scan of every pod with `selector::matches` selects.
    #[test]
    fn selections_agree_with_a_scan_of_every_pod() {
        let mut world = World::default();
        for i in 0..60 {
            let ns = if i % 3 == 0 { "other" } else { "ns" };
            let mut labels = vec![("app", ["a", "b", "c"][i % 3]), ("tier", ["x", "y"][i % 2])];
            if i % 5 == 0 {
                labels.push(("canary", "yes"));
            }
            world.pods.push(pod(ns, &format!("p{i:02}"), &labels));
        }
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let selectors = [
            srv6pipes_crds::PodSelector::default(),
            srv6pipes_crds::PodSelector::labels([("app", "a")]),
            srv6pipes_crds::PodSelector {
                match_labels: Some([("app".into(), "b".into()), ("tier".into(), "x".into())].into()),
                ..Default::default()
            },
            srv6pipes_crds::PodSelector { match_labels: Some([("app".into(), "zzz".into())].into()), ..Default::default() },
            srv6pipes_crds::PodSelector { match_expressions: Some(vec![expr("canary", "Exists", &[])]), ..Default::default() },
            srv6pipes_crds::PodSelector {
                match_labels: Some([("tier".into(), "y".into())].into()),
                match_expressions: Some(vec![expr("app", "NotIn", &["c"]), expr("canary", "DoesNotExist", &[])]),
            },
            srv6pipes_crds::PodSelector { match_expressions: Some(vec![expr("app", "In", &["a", "c"])]), ..Default::default() },
        ];
        let index = Index::new(&world);
        for sel in &selectors {
            for ns in ["ns", "other", "absent"] {
                let mut scan: Vec<&PodInfo> =
                    world.pods.iter().filter(|p| p.namespace == ns && selector::matches(sel, &p.labels).unwrap()).collect();
                scan.sort_by(|a, b| a.name.cmp(&b.name));
                let names = |v: &[&PodInfo]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
                assert_eq!(names(&index.selected(ns, sel).unwrap()), names(&scan), "{sel:?} in {ns}");
            }
        }
        let bad = srv6pipes_crds::PodSelector { match_expressions: Some(vec![expr("app", "In", &[])]), ..Default::default() };
        assert!(index.selected("ns", &bad).is_err(), "a bad selector is an error, as in a scan");
    }
}
