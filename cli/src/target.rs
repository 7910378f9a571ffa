//! Which lab or cluster a command addresses, and the commands that read either: `status`,
//! `chains`, `sids`, `stats`, `trace`, `wait`. The rule: an explicit `--kubeconfig` or
//! `--context` addresses that cluster; otherwise a lab that is up (`--name`, `SRV6PIPES_LAB`);
//! otherwise the cluster of KUBECONFIG or ~/.kube/config, as kubectl finds it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use srv6pipes_crds::ServiceChain;

use crate::cluster::Cluster;
use crate::lab;
use crate::view::{self, Output, View};

#[derive(Args, Clone)]
pub struct Target {
    #[command(flatten)]
    pub lab: lab::Which,
    /// A cluster's kubeconfig (addresses that cluster, not a lab).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig (addresses that cluster, not a lab).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace of chains [default: the context's, or "default"].
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Chains of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

pub enum Scope {
    Lab(lab::Which),
    Cluster(Cluster),
}

impl Target {
    pub fn scope(&self) -> anyhow::Result<Scope> {
        if self.kubeconfig.is_none() && self.context.is_none() && lab::is_up(&self.lab)? {
            return Ok(Scope::Lab(self.lab.clone()));
        }
        Ok(Scope::Cluster(Cluster::connect(self.kubeconfig.as_deref(), self.context.as_deref())?))
    }

    /// The namespace to list chains of (None: all), given the scope's default namespace.
    fn namespace(&self, default: &str) -> Option<String> {
        (!self.all_namespaces).then(|| self.namespace.clone().unwrap_or_else(|| default.to_string()))
    }

    /// CHAIN as NAMESPACE/NAME: its own namespace, else -n, else the default one.
    pub fn chain_ref(&self, chain: &str, default: &str) -> (String, String) {
        match chain.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (self.namespace.clone().unwrap_or_else(|| default.to_string()), chain.to_string()),
        }
    }
}

pub fn default_namespace(scope: &Scope) -> &str {
    match scope {
        Scope::Lab(_) => "default",
        Scope::Cluster(c) => &c.default_namespace,
    }
}

fn chains(scope: &Scope, namespace: Option<&str>) -> anyhow::Result<Vec<ServiceChain>> {
    match scope {
        Scope::Lab(which) => {
            let mut chains: Vec<ServiceChain> = lab::chains(which)?
                .into_iter()
                .filter(|c| namespace.is_none_or(|ns| c.metadata.namespace.as_deref() == Some(ns)))
                .collect();
            chains.sort_by_key(view::chain_key);
            Ok(chains)
        }
        Scope::Cluster(c) => c.chains(namespace),
    }
}

fn view_of(scope: &Scope, namespace: Option<&str>) -> anyhow::Result<View> {
    match scope {
        Scope::Lab(which) => lab::view(which),
        Scope::Cluster(c) => c.view(namespace, namespace),
    }
}

/// `srv6pipes chains`.
pub fn print_chains(t: &Target, output: Output) -> anyhow::Result<()> {
    let scope = t.scope()?;
    let chains = chains(&scope, t.namespace(default_namespace(&scope)).as_deref())?;
    match view::structured(&serde_json::json!({ "chains": chains }), output)? {
        Some(text) => print!("{text}"),
        None => print!("{}", view::chains_text(&chains, output == Output::Wide)),
    }
    Ok(())
}

/// `srv6pipes status`: nodes (or, in a lab, its nodes, pods and SIDs) and every chain.
pub fn print_status(t: &Target, output: Output) -> anyhow::Result<()> {
    match t.scope()? {
        Scope::Lab(which) => lab::print_status(&which, output),
        Scope::Cluster(c) => {
            let doc = c.status(t.namespace(&c.default_namespace).as_deref())?;
            match view::structured(&doc, output)? {
                Some(text) => print!("{text}"),
                None => {
                    let chains: Vec<ServiceChain> = serde_json::from_value(doc["chains"].clone())?;
                    print!("{}", crate::cluster::status_text(&doc, &chains))
                }
            }
            Ok(())
        }
    }
}

/// `srv6pipes sids`: every SID of every node, its owner and counters.
pub fn print_sids(t: &Target, output: Output) -> anyhow::Result<()> {
    let v = view_of(&t.scope()?, None)?;
    let rows = view::sid_rows(&v);
    match view::structured(&serde_json::json!({ "sids": rows }), output)? {
        Some(text) => print!("{text}"),
        None => print!("{}", view::sids_text(&rows)),
    }
    Ok(())
}

/// `srv6pipes stats`.
pub fn print_stats(t: &Target, output: Output) -> anyhow::Result<()> {
    let doc = view::stats_doc(&view_of(&t.scope()?, None)?);
    match view::structured(&doc, output)? {
        Some(text) => print!("{text}"),
        None => print!("{}", view::stats_text(&doc)),
    }
    Ok(())
}

/// `srv6pipes trace CHAIN`'s document.
pub fn trace(t: &Target, chain: &str) -> anyhow::Result<serde_json::Value> {
    let scope = t.scope()?;
    let (ns, name) = t.chain_ref(chain, default_namespace(&scope));
    view::trace_doc(&view_of(&scope, Some(&ns))?, &ns, &name)
}

/// `srv6pipes wait CHAIN`: true once Ready.
pub fn wait(t: &Target, chain: &str, timeout: Duration) -> anyhow::Result<bool> {
    let scope = t.scope()?;
    let (ns, name) = t.chain_ref(chain, default_namespace(&scope));
    let shown = format!("{ns}/{name}");
    crate::wait::wait(&shown, timeout, Duration::from_millis(250), || {
        let chain = match &scope {
            Scope::Cluster(c) => c.chain(&ns, &name)?,
            Scope::Lab(_) => chains(&scope, Some(&ns))?.into_iter().find(|c| c.metadata.name.as_deref() == Some(name.as_str())),
        };
        Ok(view::ready(&chain.ok_or_else(|| anyhow::anyhow!("no chain {shown}"))?))
    })
}
