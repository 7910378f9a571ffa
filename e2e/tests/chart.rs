//! The chart with the real Helm (v4, built by scripts/kube-build): `helm lint --strict`, its
//! values checked against values.schema.json, and what it renders. (The real cluster of
//! cluster.rs installs, upgrades and uninstalls it with Helm.)

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value as Json;

mod common;
use common::{helm, repo_root};

fn chart() -> PathBuf {
    repo_root().join("charts/srv6pipes")
}

fn run(helm: &PathBuf, args: &[&str]) -> Output {
    Command::new(helm).args(args).env("HELM_CACHE_HOME", std::env::temp_dir().join("srv6pipes-helm-cache")).output().expect("run helm")
}

/// `helm template` of the chart with `args`: its documents.
fn render(helm: &PathBuf, args: &[&str]) -> Vec<Json> {
    let chart = chart();
    let mut all = vec!["template", "srv6pipes", chart.to_str().unwrap(), "--namespace", "kube-system"];
    all.extend_from_slice(args);
    let out = run(helm, &all);
    assert!(out.status.success(), "helm {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Json as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn the_chart_lints_strictly_in_both_cni_modes() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    for mode in ["multus", "chained"] {
        let out = run(&helm, &["lint", "--strict", chart.to_str().unwrap(), "--set", &format!("cni.mode={mode}")]);
        assert!(
            out.status.success(),
            "helm lint --strict ({mode}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// values.schema.json is enforced: a value outside it, of the wrong type, or a key it does not
/// know fails the install, naming the value.
#[test]
fn values_outside_the_schema_are_refused() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    for (set, names) in [("cni.mode=bridge", "mode"), ("node.flowQuota=lots", "flowQuota"), ("node.uplinkk=eth0", "uplinkk")] {
        let out = run(&helm, &["template", "srv6pipes", chart.to_str().unwrap(), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} rendered");
        assert!(err.contains("schema") && err.contains(names), "--set {set}: {err}");
    }
}

/// The chart's stream proxies (SRv6 pipes): off by default; on, a Deployment in the asked
/// namespace whose pods ask for the chain network and have CAP_NET_ADMIN and nothing else.
#[test]
fn the_chart_deploys_stream_proxies_only_when_asked() {
    let Some(helm) = helm() else { return };
    let off = render(&helm, &[]);
    assert!(!off.iter().any(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "stream"), "no proxy unless stream.enabled");
    let docs = render(&helm, &["--set", "stream.enabled=true", "--set", "stream.namespace=pipes", "--set", "stream.replicas=3"]);
    let d =
        docs.iter().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "srv6pipes-stream").expect("the proxies' Deployment");
    assert_eq!((d["metadata"]["namespace"].as_str(), d["spec"]["replicas"].as_u64()), (Some("pipes"), Some(3)));
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "srv6pipes-stream", "chains select the proxies by this label");
    assert_eq!(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"], "srv6pipes");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false, "no credentials");
    let c = &pod["spec"]["containers"][0];
    let chart_yaml: Json = serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(c["image"], format!("localhost/srv6pipes-stream:{}", chart_yaml["appVersion"].as_str().unwrap()));
    assert_eq!(c["securityContext"]["capabilities"], serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN"]}));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(pod["spec"].get("hostNetwork").is_none() && pod["spec"].get("volumes").is_none(), "nothing of the host");
}

/// Node writes are checked by a ValidatingAdmissionPolicy on the release's node account (the
/// real cluster proves it refuses another node's objects): no webhook, Service or certificate
/// Secret unless asked for.
#[test]
fn node_writes_are_checked_by_an_admission_policy_not_a_webhook() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let find = |docs: &[Json], kind: &str| docs.iter().find(|d| d["kind"] == kind).cloned();
    let policy = find(&docs, "ValidatingAdmissionPolicy").expect("the node-writes policy");
    assert_eq!(policy["metadata"]["name"], "srv6pipes-node-writes");
    let who = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(who.contains("'system:serviceaccount:kube-system:srv6pipes-node'"), "{who}");
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding").expect("its binding");
    assert_eq!(
        (&binding["spec"]["policyName"], &binding["spec"]["validationActions"]),
        (&policy["metadata"]["name"], &serde_json::json!(["Deny"]))
    );
    assert!(find(&docs, "ValidatingWebhookConfiguration").is_none() && find(&docs, "Service").is_none());
    assert!(!serde_json::to_string(&docs).unwrap().contains("webhook-tls"), "no certificate Secret to read or make");
    let with_webhook = render(&helm, &["--set", "operator.webhook.enabled=true"]);
    assert!(find(&with_webhook, "ValidatingWebhookConfiguration").is_some(), "the webhook still comes when asked for");
}

/// The conventional labels on every object the chart makes (its CRDs are generated, and kept
/// across releases), `global:` accepted as a subchart's, and the pull secrets of the chart and
/// of `global` in every pod.
#[test]
fn objects_carry_the_standard_labels_and_pods_the_pull_secrets() {
    let Some(helm) = helm() else { return };
    let args = [
        "--set",
        "stream.enabled=true",
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        "global.imagePullSecrets[0].name=parent",
        "--set",
        "global.storageClass=fast",
    ];
    let docs = render(&helm, &args);
    let chart_yaml: Json = serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    let (version, app_version) = (chart_yaml["version"].as_str().unwrap(), chart_yaml["appVersion"].as_str().unwrap());
    for d in docs.iter().filter(|d| d["kind"] != "CustomResourceDefinition") {
        let l = &d["metadata"]["labels"];
        let what = format!("{} {}", d["kind"], d["metadata"]["name"]);
        assert_eq!(l["helm.sh/chart"], format!("srv6pipes-{version}"), "{what}");
        assert_eq!((&l["app.kubernetes.io/name"], &l["app.kubernetes.io/instance"]), (&"srv6pipes".into(), &"srv6pipes".into()), "{what}");
        assert_eq!((&l["app.kubernetes.io/version"], &l["app.kubernetes.io/managed-by"]), (&app_version.into(), &"Helm".into()), "{what}");
    }
    let pods: Vec<&Json> = docs.iter().filter(|d| d["kind"] == "DaemonSet" || d["kind"] == "Deployment").collect();
    assert_eq!(pods.len(), 3, "node, operator, stream");
    for d in pods {
        assert_eq!(
            d["spec"]["template"]["spec"]["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}, {"name": "parent"}]),
            "{}",
            d["metadata"]["name"]
        );
    }
}
