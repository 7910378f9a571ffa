//! srv6pipes-operator: reconciles ServiceChains into per-node programs with the shared pure
//! compiler, allocates node locators, writes chain status and Events.

pub mod check;
pub mod controller;
pub mod events;
pub mod lease;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod planner;
pub mod pods;
pub mod publisher;
pub mod slice_index;
pub mod slim;
pub mod split;
pub mod world;

/// The operator's kube client: [`srv6pipes_crds::client`]'s, with every write it sends counted
/// (`srv6pipes_operator_api_writes_total`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = srv6pipes_crds::config(kubeconfig).await?;
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| format!("kube client: {e}"))?;
    Ok(builder.with_layer(&tower::util::MapRequestLayer::new(metrics::count_request)).build())
}
