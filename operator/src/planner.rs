//! The planner: once per burst of world changes, one plan (compiled as [`Ctx::plan`] allows),
//! published to the nodes; then only the chains whose status that plan changes go to the chain
//! controller. A change to one chain or one pod thus costs one compilation, one comparison per
//! chain and the reconciles of the chains it touched — not a reconcile of every chain (each
//! of them publishing and writing status) as `reconcile_all_on` did.

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
use crate::world;

impl Ctx {
    /// One round: the plan for the world as it is, published; the chains whose status it
    /// changes, and when to look again if the plan is older than the world.
    pub(crate) async fn plan_round(&self) -> (Vec<ObjectRef<ServiceChain>>, Option<Duration>) {
        let (plan, failures, stale) = {
            let _one = self.publishing.lock().await;
            let (plan, stale) = self.plan(false);
            let failures = self.publish(&plan).await;
            (plan, failures, stale)
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let changed = cpu(|| {
            let chains = self.stores.chains.state();
            chains
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .filter(|c| world::chain_status(&plan, &failures, c, now.clone()).is_some_and(|status| c.status.as_ref() != Some(&status)))
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        });
        debug!(chains = changed.len(), stale = stale.is_some(), "planned");
        (changed, stale)
    }
}

/// The chains to reconcile, as the planner finds them: a round after each burst of changes of
/// `world` (and again while the plan is older than the world).
pub fn planner(ctx: Arc<Ctx>, mut world: watch::Receiver<u64>) -> impl Stream<Item = ObjectRef<ServiceChain>> + Send + 'static {
    let (tx, rx) = mpsc::unbounded();
    tokio::spawn(async move {
        let mut again: Option<Duration> = None;
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
            let (changed, stale) = ctx.plan_round().await;
            again = stale;
            for chain in changed {
                if tx.unbounded_send(chain).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
