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
    let docs: Vec<Json> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
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
    for (set, names) in [
        ("cni.mode=bridge", "mode"),
        ("node.flowQuota=lots", "flowQuota"),
        ("node.uplinkk=eth0", "uplinkk"),
        ("operator.extraEnv[0].name=N,operator.extraEnv[0].value=1", "value"),
        // A host without its port would give the pods an empty KUBERNETES_SERVICE_PORT.
        ("apiServer.host=10.0.0.1", "port"),
        ("apiServer.host=10.0.0.1,apiServer.port=https", "port"),
    ] {
        let out = run(&helm, &["template", "srv6pipes", chart.to_str().unwrap(), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} rendered");
        assert!(err.contains("schema") && err.contains(names), "--set {set}: {err}");
    }
    // With its port, the API server's address reaches both workloads.
    let docs = render(&helm, &["--set", "apiServer.host=10.0.0.1", "--set", "apiServer.port=6443"]);
    for (kind, name) in [("DaemonSet", "srv6pipes-node"), ("Deployment", "srv6pipes-operator")] {
        let env = &workload(&docs, kind, name)["spec"]["template"]["spec"]["containers"][0]["env"];
        let port = env.as_array().unwrap().iter().find(|e| e["name"] == "KUBERNETES_SERVICE_PORT");
        assert_eq!(port.map(|e| &e["value"]), Some(&Json::from("6443")), "{name}: {env}");
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
    // With the chart's NetworkAttachmentDefinition (Multus), in another namespace than the
    // proxies: they name it with its namespace, or Multus would not find it.
    let with_nad = ["--set", "cni.networkAttachmentDefinition.create=true", "--set", "cni.networkAttachmentDefinition.namespace=vnfs"];
    let docs = render(&helm, &[&["--set", "stream.enabled=true", "--set", "stream.namespace=pipes"][..], &with_nad].concat());
    let d = docs.iter().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "srv6pipes-stream").unwrap();
    assert_eq!(d["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"], "vnfs/srv6pipes");
    let nad = docs.iter().find(|d| d["kind"] == "NetworkAttachmentDefinition").expect("the chart's NetworkAttachmentDefinition");
    assert_eq!((nad["metadata"]["namespace"].as_str(), nad["metadata"]["name"].as_str()), (Some("vnfs"), Some("srv6pipes")));
    // Its config carries cni.mtu when one is set (the chained entry does too), else none: the
    // node daemon's.
    let config_of = |docs: &[Json]| -> Json {
        let nad = docs.iter().find(|d| d["kind"] == "NetworkAttachmentDefinition").unwrap();
        serde_json::from_str(nad["spec"]["config"].as_str().unwrap()).unwrap()
    };
    assert!(config_of(&docs).get("mtu").is_none(), "{}", config_of(&docs));
    let with_mtu = render(&helm, &[&with_nad[..], &["--set", "cni.mtu=1400"]].concat());
    assert_eq!(config_of(&with_mtu)["mtu"], 1400, "{}", config_of(&with_mtu));
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false, "no credentials");
    let c = &pod["spec"]["containers"][0];
    let chart_yaml: Json = serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(c["image"], format!("localhost/srv6pipes-stream:{}", chart_yaml["appVersion"].as_str().unwrap()));
    assert_eq!(c["securityContext"]["capabilities"], serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN"]}));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        pod["spec"]["securityContext"]["sysctls"],
        serde_json::json!([{"name": "net.ipv4.tcp_syncookies", "value": "0"}]),
        "no SYN cookies"
    );
    assert!(pod["spec"].get("hostNetwork").is_none() && pod["spec"].get("volumes").is_none(), "nothing of the host");
}

/// Node writes are checked by a ValidatingAdmissionPolicy on the release's node account (the
/// real cluster proves it refuses another node's objects): no webhook, Service or certificate
/// Secret.
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
    // The daemons delete the pods that came up without srv6pipes-cni (node.repairPods, on by
    // default): the policy covers pod deletes, by the pod's node.
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    assert!(
        rules
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"apiGroups": [""], "apiVersions": ["*"], "operations": ["DELETE"], "resources": ["pods"]})),
        "{rules}"
    );
    let target = policy["spec"]["variables"].as_array().unwrap().iter().find(|v| v["name"] == "target").unwrap()["expression"].to_string();
    assert!(target.contains("oldObject.spec.nodeName"), "{target}");
    let node_args = |docs: &[Json]| {
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("the node daemons");
        ds["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let args = node_args(&docs);
    assert!(args.contains(&"--repair-pods".into()) && args.contains(&"--network=srv6pipes".into()), "{args:?}");
    assert!(!node_args(&render(&helm, &["--set", "node.repairPods=false"])).contains(&"--repair-pods".into()));
    // The removed webhook's values still install (older values files), and bring nothing back.
    let with_webhook = render(&helm, &["--set", "operator.webhook.enabled=true", "--set", "operator.webhook.port=9443"]);
    assert!(find(&with_webhook, "ValidatingWebhookConfiguration").is_none());
    assert!(!serde_json::to_string(&with_webhook).unwrap().contains("webhook"), "no webhook flag, port or RBAC");
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
    let chart_yaml: Json = serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
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

fn workload<'a>(docs: &'a [Json], kind: &str, name: &str) -> &'a Json {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Kubelet probes HTTP endpoints that say what they mean: the daemon's /readyz (datapath loaded,
/// its node's program applied) and /healthz on its health port (which serves /stats to the CLI
/// through the API server), the operator's on its own.
#[test]
fn the_daemons_and_the_operator_are_probed_over_http() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &["--set", "node.healthPort=19465", "--set", "operator.healthPort=19466"]);
    let node = &workload(&docs, "DaemonSet", "srv6pipes-node")["spec"]["template"]["spec"]["containers"][0];
    assert!(node["args"].as_array().unwrap().contains(&"--health-addr=[::]:19465".into()), "{}", node["args"]);
    assert_eq!(node["ports"], serde_json::json!([{"name": "health", "containerPort": 19465, "protocol": "TCP"}]), "metrics off: one port");
    assert_eq!(node["readinessProbe"]["httpGet"], serde_json::json!({"port": "health", "path": "/readyz"}));
    assert_eq!(node["livenessProbe"]["httpGet"], serde_json::json!({"port": "health", "path": "/healthz"}));
    assert!(node["readinessProbe"].get("exec").is_none(), "not the socket file's existence");
    let op = &workload(&docs, "Deployment", "srv6pipes-operator")["spec"]["template"]["spec"]["containers"][0];
    assert!(op["args"].as_array().unwrap().contains(&"--health-addr=[::]:19466".into()), "{}", op["args"]);
    assert_eq!(op["ports"], serde_json::json!([{"name": "health", "containerPort": 19466, "protocol": "TCP"}]));
    assert_eq!(op["readinessProbe"]["httpGet"], serde_json::json!({"port": "health", "path": "/readyz"}));
    assert_eq!(op["livenessProbe"]["httpGet"], serde_json::json!({"port": "health", "path": "/healthz"}));
    // The port is the node's (host network): a rollout never needs a second free one.
    let strategy = &workload(&docs, "Deployment", "srv6pipes-operator")["spec"]["strategy"];
    assert_eq!(strategy["rollingUpdate"], serde_json::json!({"maxSurge": 0, "maxUnavailable": 1}), "{strategy}");
}

/// The placement and environment values users of other CNIs' charts expect, on every workload.
#[test]
fn placement_environment_and_priority_values_reach_every_workload() {
    let Some(helm) = helm() else { return };
    let mut args = vec!["--set".to_string(), "stream.enabled=true".into(), "--set".into(), "logLevel=warn".into()];
    for c in ["node", "operator", "stream"] {
        for set in [
            format!("{c}.nodeSelector.pool={c}"),
            format!("{c}.podAnnotations.team={c}"),
            format!("{c}.extraEnv[0].name=FROM_{c}"),
            format!("{c}.extraEnv[0].value=v-{c}"),
            format!("{c}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key={c}"),
            format!("{c}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists"),
        ] {
            args.extend(["--set".to_string(), set]);
        }
    }
    args.extend(["--set".to_string(), r"operator.logLevel=debug\,kube=info".into()]);
    let docs = render(&helm, &args.iter().map(String::as_str).collect::<Vec<_>>());
    for (kind, name, c, log) in [
        ("DaemonSet", "srv6pipes-node", "node", "warn"),
        ("Deployment", "srv6pipes-operator", "operator", "debug,kube=info"),
        ("Deployment", "srv6pipes-stream", "stream", "warn"),
    ] {
        let pod = &workload(&docs, kind, name)["spec"]["template"];
        assert_eq!(pod["spec"]["nodeSelector"], serde_json::json!({"pool": c}), "{name}");
        assert_eq!(pod["metadata"]["annotations"]["team"], c, "{name}");
        let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], c, "{name}");
        let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
        assert!(env.contains(&serde_json::json!({"name": "RUST_LOG", "value": log})), "{name}: {env:?}");
        assert!(env.contains(&serde_json::json!({"name": format!("FROM_{c}"), "value": format!("v-{c}")})), "{name}: {env:?}");
    }
    let stream = &workload(&docs, "Deployment", "srv6pipes-stream")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(stream["k8s.v1.cni.cncf.io/networks"], "srv6pipes", "the chain network stays beside podAnnotations");
    let defaults = render(&helm, &[]);
    let prio = |d: &Json| d["spec"]["template"]["spec"]["priorityClassName"].clone();
    assert_eq!(prio(workload(&defaults, "DaemonSet", "srv6pipes-node")), "system-node-critical");
    assert_eq!(prio(workload(&defaults, "Deployment", "srv6pipes-operator")), "system-cluster-critical");
    let none = render(&helm, &["--set", "operator.priorityClassName="]);
    assert!(workload(&none, "Deployment", "srv6pipes-operator")["spec"]["template"]["spec"].get("priorityClassName").is_none());
}

/// Drains take the operator's replicas one at a time; the PDB can be turned off.
#[test]
fn the_operator_has_a_disruption_budget() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &["--set", "operator.replicas=2"]);
    let pdb = workload(&docs, "PodDisruptionBudget", "srv6pipes-operator");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let selector = &pdb["spec"]["selector"]["matchLabels"];
    let operator = workload(&docs, "Deployment", "srv6pipes-operator");
    assert_eq!(selector, &operator["spec"]["selector"]["matchLabels"], "it selects the operator's pods");
    let off = render(&helm, &["--set", "operator.podDisruptionBudget.enabled=false"]);
    assert!(!off.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
}

/// Metrics are off by default; on, the daemons serve them behind a headless Service, and a
/// ServiceMonitor comes only where the Prometheus operator's API exists.
#[test]
fn metrics_are_opt_in_and_the_service_monitor_needs_its_api() {
    let Some(helm) = helm() else { return };
    let args = |d: &[Json]| workload(d, "DaemonSet", "srv6pipes-node")["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    let off = render(&helm, &[]);
    assert!(!args(&off).contains("--metrics-addr"), "{}", args(&off));
    assert!(!off.iter().any(|d| d["kind"] == "Service" || d["kind"] == "ServiceMonitor"));
    let on = render(&helm, &["--set", "metrics.enabled=true"]);
    assert!(args(&on).contains("--metrics-addr=[::]:9464"), "{}", args(&on));
    let svc = workload(&on, "Service", "srv6pipes-node-metrics");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert!(!on.iter().any(|d| d["kind"] == "ServiceMonitor"), "no monitoring.coreos.com/v1 on this server");
    let with_api = render(&helm, &["--set", "metrics.enabled=true", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]);
    let sm = workload(&with_api, "ServiceMonitor", "srv6pipes-node");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]);
}

/// `helm test` runs a pod that checks every node daemon is ready, with a read-only account, and
/// the chart's versions are the crates'.
#[test]
fn helm_test_checks_the_daemons_and_versions_follow_the_crates() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let pod = workload(&docs, "Pod", "srv6pipes-test-daemons-ready");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(pod["spec"]["containers"][0]["args"][0], "--check-daemonset=kube-system/srv6pipes-node");
    let role = workload(&docs, "Role", "srv6pipes-test");
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(["get", "list"].contains(&verb.as_str().unwrap()), "the test only reads: {rule}");
        }
    }
    let chart_yaml: Json = serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    let crate_version = env!("CARGO_PKG_VERSION");
    assert_eq!((chart_yaml["version"].as_str(), chart_yaml["appVersion"].as_str()), (Some(crate_version), Some(crate_version)));
}

/// The CLI's users get a read-only ClusterRole, and pods/proxy (the daemons' /stats) only in the
/// release's namespace.
#[test]
fn the_cli_viewer_roles_only_read() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let cluster = workload(&docs, "ClusterRole", "srv6pipes-viewer");
    for rule in cluster["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(["get", "list", "watch"].contains(&verb.as_str().unwrap()), "read-only: {rule}");
        }
        assert!(
            !rule["resources"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains('/')),
            "no subresource cluster-wide: {rule}"
        );
    }
    let role = workload(&docs, "Role", "srv6pipes-viewer");
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    assert_eq!(role["rules"], serde_json::json!([{"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]}]));
}

/// The node daemons may delete pods only to repair them (`node.repairPods`, on by default).
#[test]
fn node_daemons_delete_pods_only_to_repair_them() {
    let Some(helm) = helm() else { return };
    let pod_verbs = |set: &[&str]| -> Json {
        let docs = render(&helm, set);
        let role = workload(&docs, "ClusterRole", "srv6pipes-node");
        role["rules"].as_array().unwrap().iter().find(|r| r["resources"] == serde_json::json!(["pods"])).expect("a pods rule")["verbs"]
            .clone()
    };
    assert_eq!(pod_verbs(&[]), serde_json::json!(["get", "list", "delete"]));
    assert_eq!(pod_verbs(&["--set", "node.repairPods=false"]), serde_json::json!(["get", "list"]));
}

/// Only the one-shot init containers are privileged: the sysctl, and the bpffs mount on hosts
/// that have none (propagated back to the host); the daemon itself is not.
#[test]
fn only_the_node_setup_init_containers_are_privileged() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let spec = &workload(&docs, "DaemonSet", "srv6pipes-node")["spec"]["template"]["spec"];
    let privileged: Vec<&str> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["securityContext"]["privileged"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(privileged, ["forwarding", "mount-bpffs"]);
    let mount = spec["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "mount-bpffs").unwrap();
    assert_eq!(mount["volumeMounts"][0]["mountPropagation"], "Bidirectional");
    assert!(mount["command"][2].as_str().unwrap().contains("mount -t bpf bpf /host/bpffs"));
    for c in spec["containers"].as_array().unwrap() {
        assert!(c["securityContext"]["privileged"].is_null(), "{} is not privileged", c["name"]);
    }
    // The daemon's capabilities, each said why in the README: SYS_ADMIN is setns into stream
    // proxy pods' netns (the real cluster's pipes chain fails without it: EPERM).
    assert_eq!(
        spec["containers"][0]["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"]})
    );
}

/// With metrics on: Services for the node daemons' and the operator's /metrics, and, when
/// asked, the Grafana dashboard in a ConfigMap with the sidecar's label: a panel repeated per
/// chain and per node, and one per drop reason. (The lab and operator tests check that every
/// metric its queries name is served.)
#[test]
fn metrics_services_and_the_grafana_dashboard() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &["--set", "metrics.enabled=true", "--set", "metrics.dashboard.enabled=true"]);
    assert_eq!(workload(&docs, "Service", "srv6pipes-operator-metrics")["spec"]["ports"][0]["targetPort"], "health");
    let cm = workload(&docs, "ConfigMap", "srv6pipes-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Json = serde_json::from_str(cm["data"]["srv6pipes.json"].as_str().unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let repeated = |var: &str| panels.iter().any(|p| p["repeat"] == var);
    assert!(repeated("chain") && repeated("node"), "a panel per chain and per node");
    assert!(
        panels.iter().any(|p| p["targets"].to_string().contains("sum by (reason) (rate(srv6pipes_drops_total")),
        "a panel per drop reason"
    );
    let without = render(&helm, &["--set", "metrics.enabled=true"]);
    assert!(!without.iter().any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "srv6pipes-dashboard"), "the dashboard is opt-in");
}
