//! Tier 4: srv6pipes-operator against a real etcd + kube-apiserver (1.37, built by
//! scripts/apiserver build through scripts/kube-build from the Go module proxy). The test plays the node daemons (it publishes NodeSidTables)
//! and the kubelets (it registers Nodes and Pods with their status).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, target_dir, ApiServer};
use serde_json::Value;

struct Operator {
    child: Child,
    log: PathBuf,
    health: std::net::SocketAddr,
}

impl Operator {
    fn start(api: &ApiServer, n: u32) -> Operator {
        let log = api.dir.join(format!("operator-{n}.log"));
        let health = common::free_loopback_port();
        let child = Command::new(target_dir().join("srv6pipes-operator"))
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .arg(format!("--health-addr={health}"))
            .args(["--lease-namespace", "default", "--lease-duration", "4", "--identity", &format!("op-{n}")])
            // Three locators only (index 0 is reserved): the fourth node finds the block full.
            .args(["--cluster-block", "fcbb:bb00::/46"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start srv6pipes-operator");
        Operator { child, log, health }
    }

    /// GET `path` on the health address: the status code and the body, once it answers.
    fn probe(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let start = Instant::now();
        let mut s = loop {
            match std::net::TcpStream::connect(self.health) {
                Ok(s) => break s,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "{path}: {e}\n{}", self.log()),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    }

    fn signal(&mut self, sig: &str) {
        self.send(sig);
        let _ = self.child.wait();
    }

    /// Sends a signal without waiting for the process to end.
    fn send(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `kubectl get WHAT -o json` until `pred` holds; returns the object.
fn wait(api: &ApiServer, op: &Operator, what: &[&str], desc: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(v) = api.get(what) {
            if pred(&v) {
                return v;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("timed out waiting for {desc}; last {what:?}:\n{v:#}\noperator log:\n{}", op.log());
            }
        } else if start.elapsed() > Duration::from_secs(30) {
            panic!("timed out waiting for {desc}: {what:?} does not exist\noperator log:\n{}", op.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node(api: &ApiServer, name: &str, i: u32) {
    api.apply(&format!("{{apiVersion: v1, kind: Node, metadata: {{name: {name}}}, spec: {{podCIDRs: ['fd00:10:{i}::/64']}}}}"));
    let status = format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"fd00:ffff::{i}"}}]}}}}"#);
    api.k(&["patch", "node", name, "--subresource=status", "--type=merge", "-p", &status]);
}

fn pod(api: &ApiServer, name: &str, node: &str, label: &str, ip: &str) {
    let (k, v) = label.split_once('=').unwrap();
    api.apply(&format!(
        "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: default, labels: {{{k}: {v}}}}}, \
         spec: {{nodeName: {node}, automountServiceAccountToken: false, containers: [{{name: c, image: none}}]}}}}"
    ));
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
    );
    api.k(&["patch", "pod", name, "--subresource=status", "--type=merge", "-p", &status]);
}

/// What a node daemon publishes: its locator, decap SID and registered VNF interfaces.
fn sid_table(api: &ApiServer, node: &str, locator: &str, regs: &[(&str, &str)]) {
    let loc = locator.trim_end_matches("/48").trim_end_matches("::");
    let regs: Vec<String> =
        regs.iter().map(|(pod, sid)| format!("{{podNamespace: default, podName: {pod}, interface: net1, sid: '{sid}'}}")).collect();
    api.apply(&format!(
        "{{apiVersion: srv6pipes.io/v1alpha1, kind: NodeSidTable, metadata: {{name: {node}}}, \
         spec: {{locator: '{locator}', sourceAddress: '{loc}::1', decapSid: '{loc}:d6::', registrations: [{}]}}}}",
        regs.join(", ")
    ));
}

fn chain(api: &ApiServer, name: &str, prefix: &str) {
    api.apply(&chain_yaml(name, prefix));
}

/// A chain from the clients through `fw` to `prefix`.
fn chain_yaml(name: &str, prefix: &str) -> String {
    format!(
        "{{apiVersion: srv6pipes.io/v1alpha1, kind: ServiceChain, metadata: {{name: {name}, namespace: default}}, spec: {{\
         sources: {{podSelector: {{matchLabels: {{app: client}}}}}}, match: {{destinationPrefixes: ['{prefix}']}}, \
         functions: [{{name: fw, podSelector: {{matchLabels: {{vnf: fw}}}}}}]}}}}"
    )
}

fn ready(c: &Value) -> (&str, &str) {
    let cond = c["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|x| x["type"] == "Ready"));
    cond.map_or(("", ""), |x| (x["status"].as_str().unwrap_or(""), x["reason"].as_str().unwrap_or("")))
}

fn reported(c: &Value) -> bool {
    c["status"]["observedGeneration"] == c["metadata"]["generation"]
}

fn locator_of(api: &ApiServer, op: &Operator, node: &str) -> String {
    let n = wait(api, op, &["node", node], "a locator", |n| n["metadata"]["annotations"]["srv6pipes.io/locator"].is_string());
    n["metadata"]["annotations"]["srv6pipes.io/locator"].as_str().unwrap().to_string()
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["manager"].as_str().unwrap_or("").to_string(), m["operation"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The resourceVersions of `objects`.
fn versions(api: &ApiServer, objects: &[&[&str]]) -> Vec<Value> {
    objects.iter().map(|what| api.get(what).unwrap()["metadata"]["resourceVersion"].clone()).collect()
}

/// Waits until `snapshot` holds for a second (nothing written meanwhile); returns it.
fn settled(snapshot: &dyn Fn() -> Vec<Value>) -> Vec<Value> {
    let mut before = snapshot();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = snapshot();
        if now == before {
            return now;
        }
        before = now;
    }
}

#[test]
fn operator_reconciles_chains_on_a_real_api_server() {
    let Some(api) = ApiServer::start("operator") else { return };
    api.k(&["apply", "-f", repo_root().join("crds/srv6pipes.io.yaml").to_str().unwrap()]);
    api.k(&[
        "wait",
        "--for=condition=established",
        "crd/servicechains.srv6pipes.io",
        "crd/nodeprograms.srv6pipes.io",
        "crd/nodeprogramslices.srv6pipes.io",
        "crd/nodesidtables.srv6pipes.io",
    ]);
    let mut op = Operator::start(&api, 1);

    // Nodes join: each gets a locator and a program routing to the other. n1 comes from a
    // release before slices: it has its one NodeProgram. (A NodeProgram of no node is removed
    // as a departed node's.)
    node(&api, "n1", 1);
    api.apply(r#"{apiVersion: srv6pipes.io/v1alpha1, kind: NodeProgram, metadata: {name: n1}, spec: {tables: {headends: [], proxies: [], decaps: []}}}"#);
    node(&api, "n2", 2);
    let (l1, l2) = (locator_of(&api, &op, "n1"), locator_of(&api, &op, "n2"));
    let mut locators = [l1.clone(), l2.clone()];
    locators.sort();
    assert_eq!(locators, ["fcbb:bb00:1::/48", "fcbb:bb00:2::/48"]);
    let np1 =
        wait(&api, &op, &["nodeprogramslice", "n1.0"], "n1's program to route to n2", |p| p["spec"]["peers"][0]["locator"] == l2.as_str());
    assert_eq!(np1["spec"]["peers"][0]["underlay"], "fd00:ffff::2");
    assert_eq!(np1["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert!(managers(&np1).contains(&("srv6pipes-operator".into(), "Apply".into())), "{:?}", managers(&np1));
    assert_eq!((np1["spec"]["node"].as_str(), np1["metadata"]["labels"]["srv6pipes.io/node"].as_str()), (Some("n1"), Some("n1")));
    assert_eq!(np1["spec"]["slices"], serde_json::json!([0]));
    // The pre-slice program stays until n1's daemon (played here) reports on its slices.
    std::thread::sleep(Duration::from_secs(1));
    assert!(api.get(&["nodeprogram", "n1"]).is_some(), "the old program went before the daemon read its slices");
    let report = serde_json::json!({"status": {"observedGeneration": np1["metadata"]["generation"], "conditions": []}});
    api.k(&["patch", "nodeprogramslice", "n1.0", "--subresource=status", "--type=merge", "-p", &report.to_string()]);
    let start = Instant::now();
    while api.get(&["nodeprogram", "n1"]).is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "the old program outlived the daemon's move to slices:\n{}", op.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A chain created before its pods: reported, not ready, finalizer in place.
    chain(&api, "early", "fd00:10:2::/64");
    let c = wait(&api, &op, &["servicechain", "early"], "a verdict on the early chain", reported);
    assert_eq!(ready(&c).0, "False", "{c:#}");
    assert_eq!(c["metadata"]["finalizers"], serde_json::json!(["srv6pipes.io/cleanup"]));

    // Pods and the node daemons' SIDs arrive: the chain is programmed.
    let (p1, p2) = (l1.trim_end_matches("::/48").to_string(), l2.trim_end_matches("::/48").to_string());
    pod(&api, "client", "n1", "app=client", "fd00:10:1::2");
    pod(&api, "server", "n2", "app=server", "fd00:10:2::2");
    pod(&api, "fw-0", "n1", "vnf=fw", "fd00:10:1::3");
    sid_table(&api, "n1", &l1, &[("fw-0", &format!("{p1}:e001::"))]);
    sid_table(&api, "n2", &l2, &[]);
    let c = wait(&api, &op, &["servicechain", "early"], "the early chain programmed", |c| ready(c) == ("True", "Programmed"));
    assert_eq!(c["status"]["hops"][0]["replicas"], serde_json::json!([{"pod": "fw-0", "node": "n1", "sid": format!("{p1}:e001::")}]));
    assert_eq!(c["status"]["paths"], serde_json::json!([{"segments": [format!("{p1}:e001::"), format!("{p2}:d6::")]}]));
    assert!(managers(&c).contains(&("srv6pipes-operator".into(), "Apply".into())), "{:?}", managers(&c));
    let np1 = wait(&api, &op, &["nodeprogramslice", "n1.0"], "n1's headend", |p| {
        p["spec"]["tables"]["headends"].as_array().is_some_and(|h| !h.is_empty())
    });
    assert_eq!(np1["spec"]["tables"]["headends"][0]["chain"], "default/early");
    wait(&api, &op, &["nodeprogramslice", "n2.0"], "n2's decapsulation", |p| p["spec"]["tables"]["decaps"][0]["chain"] == "default/early");
    let events = api.k(&["get", "events.v1.events.k8s.io", "-o", "json"]);
    assert!(events.contains("\"reason\": \"Programmed\"") && events.contains("\"name\": \"early\""), "{events}");

    // A chain created after its pods is programmed at once.
    chain(&api, "late", "fd00:10:9::/64");
    wait(&api, &op, &["servicechain", "late"], "the late chain programmed", |c| ready(c).0 == "True");

    // Scale the function from 1 to 2 replicas (the second on n2) and back.
    pod(&api, "fw-1", "n2", "vnf=fw", "fd00:10:2::3");
    sid_table(&api, "n2", &l2, &[("fw-1", &format!("{p2}:e001::"))]);
    let c = wait(&api, &op, &["servicechain", "early"], "two replicas", |c| {
        c["status"]["hops"][0]["replicas"].as_array().is_some_and(|r| r.len() == 2)
    });
    assert_eq!(c["status"]["paths"].as_array().unwrap().len(), 2, "{c:#}");
    let np1 = wait(&api, &op, &["nodeprogramslice", "n1.0"], "replicas at the headend", |p| {
        p["spec"]["tables"]["headends"]
            .as_array()
            .is_some_and(|h| h.iter().all(|h| h["replicas"][0].as_array().is_some_and(|r| r.len() == 2)))
    });
    assert!(np1["spec"]["tables"]["headends"][0]["replicas"][0].to_string().contains(&format!("{p2}:e001::")));
    api.k(&["delete", "pod", "fw-1", "--grace-period=0", "--force"]);
    sid_table(&api, "n2", &l2, &[]);
    wait(&api, &op, &["servicechain", "early"], "back to one replica", |c| {
        c["status"]["hops"][0]["replicas"].as_array().is_some_and(|r| r.len() == 1)
    });

    // Restart the operator mid-way (SIGKILL: the lease must expire): it leads again and, the
    // world being unchanged, writes nothing.
    let snapshot = || {
        versions(
            &api,
            &[&["servicechain", "early"], &["servicechain", "late"], &["nodeprogramslice", "n1.0"], &["nodeprogramslice", "n2.0"]],
        )
    };
    let before = settled(&snapshot);
    // The leader is live and ready; so is a standby once the API server answers it.
    assert_eq!(op.probe("/readyz"), (200, "ok\n".into()), "{}", op.log());
    assert_eq!(op.probe("/healthz").0, 200, "{}", op.log());
    // Its metrics: the writes it sent, its reconciles and compilations, the chains by condition;
    // Prometheus' linter accepts them.
    let (code, metrics) = op.probe("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let value = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("srv6pipes_operator_api_writes_total{verb=\"PATCH\",resource=\"nodeprogramslices\"}") >= 2.0, "{metrics}");
    assert!(value("srv6pipes_operator_api_writes_total{verb=\"PATCH\",resource=\"servicechains/status\"}") >= 2.0, "{metrics}");
    assert!(value("srv6pipes_operator_reconcile_duration_seconds_count{controller=\"chain\"}") >= 2.0, "{metrics}");
    assert!(value("srv6pipes_operator_compile_duration_seconds_count") >= 1.0, "{metrics}");
    assert!(value("srv6pipes_operator_chains{condition=\"Ready\",status=\"True\"}") >= 1.0, "{metrics}");
    assert_eq!(value("srv6pipes_operator_nodes"), 2.0, "{metrics}");
    common::promtool_check(&metrics);
    for name in common::dashboard_metrics().iter().filter(|n| n.starts_with("srv6pipes_operator_")) {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard queries {name}: not served\n{metrics}"
        );
    }
    let standby = Operator::start(&api, 3);
    let start = Instant::now();
    while standby.probe("/readyz").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "the standby is not ready: {:?}\n{}", standby.probe("/readyz"), standby.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(standby.log().contains("another instance leads"), "{}", standby.log());
    drop(standby);
    op.signal("-KILL");
    let mut op = Operator::start(&api, 2);
    wait(&api, &op, &["lease", "srv6pipes-operator"], "the new operator to lead", |l| l["spec"]["holderIdentity"] == "op-2");
    let start = Instant::now();
    while !op.log().contains("caches synced") {
        assert!(start.elapsed() < Duration::from_secs(20), "no sync:\n{}", op.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(before, snapshot(), "a restarted operator rewrote an unchanged world:\n{}", op.log());

    // A node leaves: its program slices and SID table go, and chains are re-pathed without it.
    pod(&api, "fw-1", "n2", "vnf=fw", "fd00:10:2::3");
    sid_table(&api, "n2", &l2, &[("fw-1", &format!("{p2}:e001::"))]);
    wait(&api, &op, &["servicechain", "early"], "two replicas again", |c| {
        c["status"]["hops"][0]["replicas"].as_array().is_some_and(|r| r.len() == 2)
    });
    api.k(&["delete", "node", "n2"]);
    wait(&api, &op, &["servicechain", "early"], "n2's replica withdrawn", |c| {
        c["status"]["hops"][0]["replicas"].as_array().is_some_and(|r| r.len() == 1 && r[0]["node"] == "n1")
    });
    let start = Instant::now();
    while api.get(&["nodeprogramslice", "n2.0"]).is_some() || api.get(&["nodesidtable", "n2"]).is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "n2's NodeProgram/NodeSidTable outlived it:\n{}", op.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Someone deletes a node's slice that this operator wrote: it is written again, as it was.
    let np1 = wait(&api, &op, &["nodeprogramslice", "n1.0"], "n1's slice without n2", |p| !p["spec"].to_string().contains("fd00:ffff::2"));
    api.k(&["delete", "nodeprogramslice", "n1.0"]);
    let again =
        wait(&api, &op, &["nodeprogramslice", "n1.0"], "n1's slice written again", |p| p["metadata"]["uid"] != np1["metadata"]["uid"]);
    assert_eq!(again["spec"], np1["spec"], "{}", op.log());

    // The block holds three locators: n3 and n4 get the free ones, n5 finds it full.
    for (name, i) in [("n3", 3), ("n4", 4)] {
        node(&api, name, i);
        locator_of(&api, &op, name);
    }
    node(&api, "n5", 5);
    let start = Instant::now();
    while !api.k(&["get", "events.v1.events.k8s.io", "-A", "-o", "json"]).contains("LocatorExhausted") {
        assert!(start.elapsed() < Duration::from_secs(20), "no LocatorExhausted event:\n{}", op.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(api.get(&["node", "n5"]).unwrap()["metadata"]["annotations"]["srv6pipes.io/locator"].is_null());
    // n3 leaves: its locator, given by this operator, goes to n5, which waited for one.
    let l3 = locator_of(&api, &op, "n3");
    api.k(&["delete", "node", "n3"]);
    assert_eq!(locator_of(&api, &op, "n5"), l3);

    // Deleting a chain removes it from every node before the finalizer lets it go.
    api.k(&["delete", "servicechain", "early", "--timeout=30s"]);
    assert!(api.get(&["servicechain", "early"]).is_none());
    let np1 = api.get(&["nodeprogramslice", "n1.0"]).unwrap();
    let chains: Vec<&str> = np1["spec"]["tables"]["headends"].as_array().unwrap().iter().map(|h| h["chain"].as_str().unwrap()).collect();
    assert_eq!(chains, ["default/late"], "{np1:#}");

    // A slice other than a node's first, deleted by someone else, is written again too (the
    // first one's deletion changes what the compiler reads; another's does not): 200 chains
    // more give n1 a second slice.
    let bulk: Vec<String> = (0..200).map(|i| chain_yaml(&format!("bulk-{i}"), &format!("fd00:20:{i:x}::/64"))).collect();
    api.apply(&bulk.join("\n---\n"));
    let chains_on_n1 = || -> u64 {
        ["n1.0", "n1.1"].iter().filter_map(|s| api.get(&["nodeprogramslice", s])).map(|p| p["spec"]["chains"].as_u64().unwrap_or(0)).sum()
    };
    let start = Instant::now();
    while chains_on_n1() != 201 {
        assert!(start.elapsed() < Duration::from_secs(120), "n1's slices hold {} chains, not 201:\n{}", chains_on_n1(), op.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = api.get(&["nodeprogramslice", "n1.1"]).unwrap();
    api.k(&["delete", "nodeprogramslice", "n1.1"]);
    let again = wait(&api, &op, &["nodeprogramslice", "n1.1"], "n1's second slice written again", |p| {
        p["metadata"]["uid"] != second["metadata"]["uid"]
    });
    assert_eq!(again["spec"], second["spec"], "{}", op.log());
    let log = op.log();
    assert!(log.lines().any(|l| l.contains("slice deleted by someone else") && l.contains("n1.1")), "the log does not name it:\n{log}");

    // SIGTERM: the lease is released for the next leader.
    op.signal("-TERM");
    let lease = api.get(&["lease", "srv6pipes-operator"]).unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease:#}");
}

/// A leader paused (SIGSTOP) past its lease while a second operator takes over and changes
/// things, then resumed, is fenced off: it writes nothing and exits; no locator is given twice.
#[test]
fn a_paused_leader_is_fenced_off_when_a_successor_leads() {
    let Some(api) = ApiServer::start("fencing") else { return };
    api.k(&["apply", "-f", repo_root().join("crds/srv6pipes.io.yaml").to_str().unwrap()]);
    api.k(&["wait", "--for=condition=established", "crd/servicechains.srv6pipes.io", "crd/nodeprogramslices.srv6pipes.io"]);
    let mut op1 = Operator::start(&api, 1);
    node(&api, "n1", 1);
    node(&api, "n2", 2);
    let (l1, l2) = (locator_of(&api, &op1, "n1"), locator_of(&api, &op1, "n2"));
    let p1 = l1.trim_end_matches("::/48").to_string();
    pod(&api, "client", "n1", "app=client", "fd00:10:1::2");
    pod(&api, "fw-0", "n1", "vnf=fw", "fd00:10:1::3");
    sid_table(&api, "n1", &l1, &[("fw-0", &format!("{p1}:e001::"))]);
    sid_table(&api, "n2", &l2, &[]);
    chain(&api, "web", "fd00:10:2::/64");
    wait(&api, &op1, &["servicechain", "web"], "the chain programmed by op-1", |c| ready(c).0 == "True");

    // op-1 freezes; a node joins and the chain changes while only op-2 can act.
    op1.send("-STOP");
    node(&api, "n3", 3);
    std::thread::sleep(Duration::from_secs(5));
    let op2 = Operator::start(&api, 2);
    wait(&api, &op2, &["lease", "srv6pipes-operator"], "op-2 to lead", |l| l["spec"]["holderIdentity"] == "op-2");
    let l3 = locator_of(&api, &op2, "n3");
    chain(&api, "web", "fd00:10:9::/64");
    wait(&api, &op2, &["nodeprogramslice", "n1.0"], "op-2's program for the changed chain", |p| {
        p["spec"]["tables"]["headends"][0]["destination"] == "fd00:10:9::/64"
    });
    let objects: [&[&str]; 5] =
        [&["node", "n1"], &["node", "n2"], &["node", "n3"], &["nodeprogramslice", "n1.0"], &["nodeprogramslice", "n2.0"]];
    let snapshot = || versions(&api, &objects);
    let before = settled(&snapshot);
    let web_before = api.get(&["servicechain", "web"]).unwrap()["status"].clone();

    // op-1 wakes with its old view: fenced off, it writes nothing and exits.
    op1.send("-CONT");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = op1.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the resumed op-1 did not stop:\n{}", op1.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "op-1 exits with an error once fenced off:\n{}", op1.log());
    assert!(op1.log().contains("lease"), "{}", op1.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(snapshot(), before, "a write of the stale leader landed:\n{}", op1.log());
    assert_eq!(api.get(&["servicechain", "web"]).unwrap()["status"], web_before, "{}", op1.log());
    let lease = api.get(&["lease", "srv6pipes-operator"]).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-2");
    let mut locators = vec![l1, l2, l3];
    for n in ["n1", "n2", "n3"] {
        assert_eq!(locator_of(&api, &op2, n), locators[n[1..].parse::<usize>().unwrap() - 1], "{n}'s locator changed");
    }
    locators.sort();
    locators.dedup();
    assert_eq!(locators.len(), 3, "a locator given twice: {locators:?}");
    eprintln!("op-1's last words:\n{}", op1.log().lines().rev().take(5).collect::<Vec<_>>().join("\n"));
}
