//! The planner: once per burst of world changes, one plan (compiled as [`Ctx::plan`] allows),
//! published to the nodes; then only the chains whose status that plan changes go to the chain
//! controller. A change to one chain or one pod thus costs one compilation, one comparison per
//! chain and the reconciles of the chains it touched — not a reconcile of every chain (each
//! of them publishing and writing status) as `reconcile_all_on` did.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::Stream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use srv6pipes_crds::ServiceChain;
use tokio::sync::watch;
use tracing::debug;

use crate::controller::{cpu, Ctx};
use crate::world::{self, Plan};

/// What the planner keeps of a round for the next: a digest of each chain's verdict and nodes,
/// the node problems and the nodes whose program could not be written then. Not the plan
/// itself: held while the next one was compiled, it was a third of the operator's peak memory
/// at 100,000 chains. (Two different verdicts with the same 64-bit digest would keep a chain's
/// status until its next change: a chance of 2^-64 per changed chain.)
pub struct Round {
    chains: BTreeMap<world::ChainKey, u64>,
    node_problems: BTreeMap<String, String>,
    failures: BTreeMap<String, String>,
    /// [`crate::publisher::Publisher::failure_changes`] when `failures` was read, or after.
    failure_changes: u64,
    /// The plan's stamp ([`Plan::stamp`]).
    stamp: u64,
}

/// A chain's verdict and nodes in `plan`, digested.
fn digest_of(plan: &Plan, key: &world::ChainKey) -> Option<u64> {
    let (verdict, nodes) = (plan.verdicts.get(key), plan.chain_nodes.get(key));
    (verdict.is_some() || nodes.is_some()).then(|| srv6::slices::digest(&(verdict, nodes)))
}

impl Round {
    pub fn of(plan: &Plan, failures: BTreeMap<String, String>, failure_changes: u64) -> Round {
        let mut chains: BTreeMap<world::ChainKey, u64> = BTreeMap::new();
        for (key, verdict) in &plan.verdicts {
            chains.insert(key.clone(), srv6::slices::digest(&(Some(verdict), plan.chain_nodes.get(key))));
        }
        for (key, nodes) in plan.chain_nodes.iter().filter(|(k, _)| !plan.verdicts.contains_key(*k)) {
            chains.insert(key.clone(), srv6::slices::digest(&(None::<&srv6::compiler::ChainVerdict>, Some(nodes))));
        }
        Round { chains, node_problems: plan.node_problems.clone(), failures, failure_changes, stamp: plan.stamp }
    }

    /// The round after this one, for `plan`, and the chains whose verdict or nodes differ from
    /// this round's. When the plan was made from this round's plan, only the chains it names
    /// as changed are digested again (every chain's digest was a tenth of a change's CPU at
    /// 10,000 chains); otherwise every chain is.
    pub fn next(mut self, plan: &Plan, failures: BTreeMap<String, String>, failure_changes: u64) -> (Round, Vec<world::ChainKey>) {
        let Some(changes) = plan.changes.as_ref().filter(|c| self.stamp != 0 && c.from == self.stamp) else {
            let round = Round::of(plan, failures, failure_changes);
            let differ = differing(&self.chains, &round.chains).into_iter().cloned().collect();
            return (round, differ);
        };
        let mut differ = Vec::new();
        for key in &changes.chains {
            let now = digest_of(plan, key);
            let before = match now {
                Some(d) => self.chains.insert(key.clone(), d),
                None => self.chains.remove(key),
            };
            if before != now {
                differ.push(key.clone());
            }
        }
        differ.sort_unstable();
        differ.dedup();
        self.node_problems.clone_from(&plan.node_problems);
        (self.failures, self.failure_changes, self.stamp) = (failures, failure_changes, plan.stamp);
        (self, differ)
    }
}

impl Ctx {
    /// One round: the plan for the world as it is, published; the chains whose status it
    /// changes, when to look again if the plan is older than the world, and the round. A chain
    /// whose verdict and nodes are those of the `previous` round, with the same node problems
    /// and failures, keeps its status (a change of its own is reconciled on its own watch
    /// event): only the other chains' statuses are built and compared. Failures that changed
    /// and changed back since the previous round count as changed: a chain reconciled while a
    /// node failed for a moment may have written that failure into its status (and been
    /// looked at again while it still held, `mirror::chain_trigger`), and nothing else would
    /// write it back.
    pub(crate) async fn plan_round(&self, previous: Option<Round>) -> (Vec<ObjectRef<ServiceChain>>, Option<Duration>, Option<Round>) {
        let (plan, waits, stale) = {
            let _one = self.publishing.lock().await;
            let (plan, stale) = self.plan();
            let waits = self.publish(&plan, None).await;
            (Arc::downgrade(&plan), waits, stale)
        };
        // The plan is not held while the writes are waited for: a newer one may be compiled
        // meanwhile (a reconcile's), and this one then goes before it is made. The newer plan
        // comes with a newer world, which gets a round of its own: this one ends here.
        let failures = self.settled(waits).await;
        let failure_changes = self.failure_changes();
        let Some(plan) = plan.upgrade() else {
            debug!("a newer plan was made while this round's writes were waited for");
            return (Vec::new(), stale, previous);
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let (changed, round) = cpu(|| {
            let same = |p: &Round| p.node_problems == plan.node_problems && p.failures == failures && p.failure_changes == failure_changes;
            let (round, differ) = match previous {
                Some(p) if same(&p) => {
                    let (round, differ) = p.next(&plan, failures, failure_changes);
                    (round, Some(differ))
                }
                _ => (Round::of(&plan, failures, failure_changes), None),
            };
            let candidates: Vec<Arc<ServiceChain>> = match differ {
                // Only the chains whose verdict or nodes differ from the previous round's.
                Some(keys) => keys.iter().filter_map(|(ns, name)| self.stores.chains.get(&ObjectRef::new(name).within(ns))).collect(),
                None => self.stores.chains.state(),
            };
            let changed = candidates
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .filter(|c| {
                    world::chain_status(&plan, &round.failures, c, now.clone()).is_some_and(|status| !crate::slim::status_is(c, &status))
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>();
            (changed, round)
        });
        debug!(chains = changed.len(), stale = stale.is_some(), "planned");
        (changed, stale, Some(round))
    }
}

/// The keys whose values differ between `a` and `b` (in one only, or unequal), in order: one
/// walk of both (a lookup of each key of one in the other compared 10,000 chains' keys
/// n log n times per round).
fn differing<'m, K: Ord, V: PartialEq>(a: &'m BTreeMap<K, V>, b: &'m BTreeMap<K, V>) -> Vec<&'m K> {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    let mut out = Vec::new();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => out.extend(a.next().map(|(k, _)| k)),
            Ordering::Greater => out.extend(b.next().map(|(k, _)| k)),
            Ordering::Equal => {
                let ((k, va), (_, vb)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if va != vb {
                    out.push(k);
                }
            }
        }
    }
}

/// The chains to reconcile, as the planner finds them: a round after each burst of changes of
/// `world` (and again while the plan is older than the world).
pub fn planner(ctx: Arc<Ctx>, mut world: watch::Receiver<u64>) -> impl Stream<Item = ObjectRef<ServiceChain>> + Send + 'static {
    let (tx, rx) = mpsc::unbounded();
    tokio::spawn(async move {
        let mut again: Option<Duration> = None;
        let mut previous: Option<Round> = None;
        loop {
            if !next_round(&mut world, again).await {
                return;
            }
            if ctx.fenced().is_err() {
                again = None;
                continue;
            }
            let (changed, stale, round) = ctx.plan_round(previous.take()).await;
            again = stale;
            previous = round;
            crate::memory::release();
            for chain in changed {
                if tx.unbounded_send(chain).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the planner's next round: the next world change, or (`again`: the last plan was
/// older than the world) `again`'s time, slept out whatever changes meanwhile: no newer plan can
/// be compiled before then, and an earlier round would only redo the last one on the same plan
/// (run I at 100,000 chains: 371 of 391 rounds, each a digest of every verdict and a look at
/// every node's slices). The changes are in the world the next round plans. False: the world
/// is gone (shutdown).
async fn next_round(world: &mut watch::Receiver<u64>, again: Option<Duration>) -> bool {
    match again {
        None => {
            if world.changed().await.is_err() {
                return false;
            }
        }
        Some(after) => tokio::time::sleep(after).await,
    }
    world.borrow_and_update();
    world.has_changed().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_are_those_in_one_map_only_or_with_other_values() {
        let a: BTreeMap<&str, u8> = [("a", 1), ("b", 2), ("d", 4), ("e", 5)].into();
        let b: BTreeMap<&str, u8> = [("b", 2), ("c", 3), ("d", 40), ("f", 6)].into();
        let keys: Vec<&str> = differing(&a, &b).into_iter().copied().collect();
        assert_eq!(keys, ["a", "c", "d", "e", "f"]);
        assert!(differing(&a, &a).is_empty());
        assert_eq!(differing(&BTreeMap::new(), &b).len(), 4);
    }

    fn verdict(name: &str, message: &str) -> srv6::compiler::ChainVerdict {
        srv6::compiler::ChainVerdict {
            namespace: "ns".into(),
            name: name.into(),
            ready: true,
            reason: srv6::compiler::Reason::Programmed,
            message: message.into(),
            hops: Vec::new(),
            paths: Vec::new(),
            degraded: None,
            functions: String::new(),
        }
    }

    fn plan(stamp: u64, verdicts: &[(&str, &str)], changes: Option<(u64, &[&str])>) -> Plan {
        let key = |n: &str| ("ns".to_string(), n.to_string());
        Plan {
            verdicts: verdicts.iter().map(|(n, m)| (key(n), verdict(n, m))).collect(),
            chain_nodes: verdicts.iter().map(|(n, _)| (key(n), vec![Arc::from("n1")])).collect(),
            stamp,
            changes: changes.map(|(from, chains)| srv6::plan::Changes { from, chains: chains.iter().map(|n| key(n)).collect() }),
            ..Default::default()
        }
    }

    /// The round after a plan made from the last round's plan digests only the chains it names
    /// as changed, and finds the same round and the same differing chains as digesting all.
    #[test]
    fn the_next_round_digests_only_what_the_plan_names_as_changed() {
        let first = plan(5, &[("a", "1"), ("b", "1"), ("c", "1"), ("e", "1")], None);
        // a changed, b named but the same, c gone, d new; e's change is not named (as if the
        // planner kept it), so the short way does not see it.
        let second = plan(6, &[("a", "2"), ("b", "1"), ("d", "1"), ("e", "2")], Some((5, &["a", "b", "c", "d"])));
        let keys = |v: &[world::ChainKey]| v.iter().map(|k| k.1.clone()).collect::<Vec<_>>();
        let (round, differ) = Round::of(&first, BTreeMap::new(), 0).next(&second, BTreeMap::new(), 0);
        assert_eq!(keys(&differ), ["a", "c", "d"]);
        let full = Round::of(&second, BTreeMap::new(), 0);
        assert_eq!(round.chains.keys().collect::<Vec<_>>(), full.chains.keys().collect::<Vec<_>>());
        assert_ne!(round.chains, full.chains, "e's own digest is not taken: only what the plan names");
        assert_eq!(round.stamp, 6);
        // A plan from another plan than the round's: every chain is digested.
        let other = plan(7, &[("a", "2"), ("b", "1"), ("d", "1"), ("e", "2")], Some((4, &["a"])));
        let (round, differ) = Round::of(&first, BTreeMap::new(), 0).next(&other, BTreeMap::new(), 0);
        assert_eq!(keys(&differ), ["a", "c", "d", "e"]);
        assert_eq!(round.chains, Round::of(&other, BTreeMap::new(), 0).chains);
    }

    /// After a round on a stale plan, world changes do not bring the next round forward (it
    /// would plan on the same stale plan); without one, a change starts it at once.
    #[tokio::test(start_paused = true)]
    async fn a_round_on_a_stale_plan_waits_out_its_time_whatever_changes() {
        let (tx, mut world) = watch::channel(0u64);
        let started = tokio::time::Instant::now();
        let changes = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send_modify(|v| *v += 1);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send_modify(|v| *v += 1);
            tx
        });
        assert!(next_round(&mut world, Some(Duration::from_secs(2))).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2), "a change brought the round forward");
        assert!(!world.has_changed().unwrap(), "the changes slept through are not seen again");
        assert!(next_round(&mut world, None).await);
        assert_eq!(started.elapsed(), Duration::from_millis(5050), "the round waited for no change");
        drop(changes.await.unwrap());
        assert!(!next_round(&mut world, None).await, "the world is gone");
    }
}
