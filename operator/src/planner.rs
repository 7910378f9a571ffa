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

/// A round's plan and the nodes whose program could not be written then.
pub(crate) type Round = (Arc<Plan>, BTreeMap<String, String>);

impl Ctx {
    /// One round: the plan for the world as it is, published; the chains whose status it
    /// changes, when to look again if the plan is older than the world, and the round. A chain
    /// whose verdict and nodes are those of the `previous` round, with the same node problems
    /// and failures, keeps its status (a change of its own is reconciled on its own watch
    /// event): only the other chains' statuses are built and compared.
    pub(crate) async fn plan_round(&self, previous: Option<&Round>) -> (Vec<ObjectRef<ServiceChain>>, Option<Duration>, Round) {
        let (plan, failures, stale) = {
            let _one = self.publishing.lock().await;
            let (plan, stale) = self.plan(false);
            let failures = self.publish(&plan).await;
            (plan, failures, stale)
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let before = previous.filter(|(p, f)| p.node_problems == plan.node_problems && *f == failures).map(|(p, _)| p);
        let unchanged = |key: &world::ChainKey| {
            before.is_some_and(|b| b.verdicts.get(key) == plan.verdicts.get(key) && b.chain_nodes.get(key) == plan.chain_nodes.get(key))
        };
        let changed = cpu(|| {
            let chains = self.stores.chains.state();
            chains
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none() && !unchanged(&world::key_of(c)))
                .filter(|c| world::chain_status(&plan, &failures, c, now.clone()).is_some_and(|status| c.status.as_ref() != Some(&status)))
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        });
        debug!(chains = changed.len(), stale = stale.is_some(), "planned");
        (changed, stale, (plan, failures))
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
            match again {
                None if world.changed().await.is_err() => return,
                None => {}
                Some(after) => {
                    if let Ok(Err(_)) = tokio::time::timeout(after, world.changed()).await {
                        return;
                    }
                }
            }
            world.borrow_and_update();
            if ctx.fenced().is_err() {
                again = None;
                continue;
            }
            let (changed, stale, round) = ctx.plan_round(previous.as_ref()).await;
            again = stale;
            previous = Some(round);
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
