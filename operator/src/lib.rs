//! srv6pipes-operator: reconciles ServiceChains into per-node programs with the shared pure
//! compiler, allocates node locators, writes chain status and Events.

pub mod controller;
pub mod lease;
pub mod world;

/// A kube client from `kubeconfig` when given, else the usual inference (KUBECONFIG,
/// ~/.kube/config, in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no kubeconfig found (KUBECONFIG, ~/.kube/config, in-cluster)")?,
    };
    Ok(kube::Client::try_from(config)?)
}
