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
        Round { chains, node_problems: plan.node_problems.clone(), failures, failure_changes }
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
    pub(crate) async fn plan_round(&self, previous: Option<&Round>) -> (Vec<ObjectRef<ServiceChain>>, Option<Duration>, Option<Round>) {
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
            return (Vec::new(), stale, None);
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let (changed, round) = cpu(|| {
            let round = Round::of(&plan, failures, failure_changes);
            let before = previous.filter(|p| {
                p.node_problems == round.node_problems && p.failures == round.failures && p.failure_changes == round.failure_changes
            });
            let candidates: Vec<Arc<ServiceChain>> = match before {
                // Only the chains whose verdict or nodes differ from the previous round's.
                Some(b) => differing(&b.chains, &round.chains)
                    .into_iter()
                    .filter_map(|(ns, name)| self.stores.chains.get(&ObjectRef::new(name).within(ns)))
                    .collect(),
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
            let (changed, stale, round) = ctx.plan_round(previous.as_ref()).await;
            again = stale;
            previous = round.or(previous);
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
