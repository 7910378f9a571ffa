//! Reconciles against kube-rs's mock client: every API call is pinned (method, path, field
//! manager, body), and a second reconcile of the unchanged world makes none.

use super::*;
use crate::mirror::*;
use crate::planner::Round;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::watcher;
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn node(name: &str, locator: &str, underlay: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "annotations": {LOCATOR_ANNOTATION: locator}},
        "spec": {"podCIDRs": [format!("fd00:10:{}::/64", &name[1..])]},
        "status": {"addresses": [{"type": "InternalIP", "address": underlay}]},
    }))
    .unwrap()
}

fn pod(name: &str, node: &str, label: (&str, &str), ip: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {label.0: label.1}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

fn chain() -> ServiceChain {
    serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "generation": 2, "finalizers": [FINALIZER]},
        "spec": {
            "sources": {"podSelector": {"matchLabels": {"app": "client"}}},
            "match": {"destinationPrefixes": ["fd00:10:2::/64"]},
            "functions": [{"name": "fw", "podSelector": {"matchLabels": {"vnf": "fw"}}}],
        },
    }))
    .unwrap()
}

fn table(node: &str, locator: &str, regs: Value) -> NodeSidTable {
    let l: Locator = locator.parse().unwrap();
    serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeSidTable", "metadata": {"name": node},
        "spec": {"locator": locator, "sourceAddress": l.source_address().to_string(), "decapSid": l.decap_sid().to_string(), "registrations": regs},
    }))
    .unwrap()
}

fn world() -> (Stores, Writers) {
    let (stores, mut w) = Stores::new();
    for n in [node("n1", "fcbb:bb00:1::/48", "fd00:ffff::1"), node("n2", "fcbb:bb00:2::/48", "fd00:ffff::2")] {
        w.nodes.apply_watcher_event(&watcher::Event::Apply(n));
    }
    for p in [
        pod("client", "n1", ("app", "client"), "fd00:10:1::2"),
        pod("fw-0", "n1", ("vnf", "fw"), "fd00:10:1::3"),
        pod("server", "n2", ("app", "server"), "fd00:10:2::2"),
    ] {
        w.pods.apply_watcher_event(&watcher::Event::Apply(p));
    }
    w.tables.apply_watcher_event(&watcher::Event::Apply(table(
        "n1",
        "fcbb:bb00:1::/48",
        json!([{"podNamespace": "default", "podName": "fw-0", "interface": "net1", "sid": "fcbb:bb00:1:e001::"}]),
    )));
    w.tables.apply_watcher_event(&watcher::Event::Apply(table("n2", "fcbb:bb00:2::/48", json!([]))));
    w.chains.apply_watcher_event(&watcher::Event::Apply(chain()));
    (stores, w)
}

fn ctx(stores: Stores) -> (Arc<Ctx>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let world = Arc::new(watch::channel(0u64).0);
    let config = Config { block: "fcbb:bb00::/32".parse().unwrap(), locator_len: 48 };
    (Arc::new(Ctx::new(client, stores, config, world, Some("test".into()), Fence::always())), handle)
}

type Pending = (Request<Body>, tower_test::mock::SendResponse<Response<Body>>);

async fn next(handle: &mut Handle, what: &str) -> Pending {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("expected {what}, got no request"))
        .expect("service alive")
}

fn check(req: &Request<Body>, method: &str, path: &str, query: &str) {
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let params = |q: &str| {
        let mut v: Vec<String> = q.split('&').filter(|p| !p.is_empty()).map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(params(req.uri().query().unwrap_or_default()), params(query), "{}", req.uri());
}

/// Answers a request as the API server would; returns its body.
async fn answer((req, send): Pending) -> Value {
    let of_chain = req.uri().path().starts_with("/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/");
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // Echo an applied object back, as the API server answers; a status apply or a patch of
    // the chain gets the chain (with that status).
    let answer = if !of_chain && body.get("metadata").is_some() {
        // With the generation the write got (a fixed 2 here).
        let mut o = body.clone();
        o["metadata"]["generation"] = json!(2);
        o
    } else {
        let mut c = serde_json::to_value(chain()).unwrap();
        if let Some(status) = body.get("status") {
            c["status"] = status.clone();
        }
        c
    };
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
    body
}

/// Answers the next request after checking it; returns its body.
async fn expect(handle: &mut Handle, method: &str, path: &str, query: &str) -> Value {
    let pending = next(handle, &format!("{method} {path}")).await;
    check(&pending.0, method, path, query);
    answer(pending).await
}

/// The nodes' program writes, in whatever order the writers send them; returns their bodies
/// by node.
async fn expect_programs(handle: &mut Handle, nodes: &[&str]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _ in nodes {
        let pending = next(handle, &format!("programs of {nodes:?}")).await;
        let name = pending.0.uri().path().rsplit('/').next().unwrap().to_string();
        let node = name.strip_suffix(".0").unwrap_or_default().to_string();
        assert!(nodes.contains(&node.as_str()) && !out.contains_key(&node), "unexpected {}", pending.0.uri());
        check(&pending.0, "PATCH", &format!("/apis/srv6pipes.io/v1alpha1/nodeprogramslices/{node}.0"), &APPLY[1..]);
        out.insert(node, answer(pending).await);
    }
    out
}

const APPLY: &str = "&fieldManager=srv6pipes-operator&force=true";
// (APPLY[1..] is the query string of a server-side apply by the operator.)

#[tokio::test]
async fn first_reconcile_publishes_programs_status_and_an_event_then_nothing() {
    let (stores, mut writers) = world();
    let (ctx, mut handle) = ctx(stores.clone());
    let chain = Arc::new(chain());
    let task = tokio::spawn(reconcile_chain(chain.clone(), ctx.clone()));

    let mut programs = expect_programs(&mut handle, &["n1", "n2"]).await;
    let (n1, n2) = (programs.remove("n1").unwrap(), programs.remove("n2").unwrap());
    assert_eq!(n1["kind"], "NodeProgramSlice");
    assert_eq!(n1["metadata"]["ownerReferences"][0]["uid"], "uid-n1");
    assert_eq!(n1["metadata"]["labels"][srv6pipes_crds::NODE_LABEL], "n1");
    assert_eq!((n1["spec"]["node"].as_str(), n1["spec"]["chains"].as_u64()), (Some("n1"), Some(1)));
    let headends = n1["spec"]["tables"]["headends"].as_array().unwrap();
    assert_eq!(headends.len(), 1);
    assert_eq!(headends[0]["chain"], "default/web");
    assert_eq!(headends[0]["segments"], json!(["fcbb:bb00:1:e001::", "fcbb:bb00:2:d6::"]));
    assert_eq!(n1["spec"]["peers"], json!([{"node": "n2", "locator": "fcbb:bb00:2::/48", "underlay": "fd00:ffff::2"}]));
    assert_eq!(n2["spec"]["tables"]["decaps"][0]["sid"], "fcbb:bb00:2:d6::");
    let status = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status", &APPLY[1..]).await;
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(status["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
    assert_eq!(status["status"]["hops"][0]["replicas"][0], json!({"pod": "fw-0", "node": "n1", "sid": "fcbb:bb00:1:e001::"}));
    assert_eq!(status["status"]["paths"], json!([{"segments": ["fcbb:bb00:1:e001::", "fcbb:bb00:2:d6::"]}]));
    let event = expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    assert_eq!(event["reason"], "Programmed");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "web");
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change(), "no timed requeue");

    // The watchers bring back what was written; the same world again writes nothing.
    for body in [n1, n2] {
        let obj: NodeProgramSlice = serde_json::from_value(body).unwrap();
        writers.slices.apply_watcher_event(&watcher::Event::Apply(obj));
    }
    let mut updated = (*chain).clone();
    updated.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    writers.chains.apply_watcher_event(&watcher::Event::Apply(updated.clone()));
    let (ctx, mut handle) = self::ctx(stores);
    let task = tokio::spawn(reconcile_chain(Arc::new(updated), ctx));
    // The mock service closes when the reconcile ends and drops the client.
    match tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await {
        Ok(None) => {}
        Ok(Some((req, _))) => panic!("an unchanged world made an API call: {} {}", req.method(), req.uri()),
        Err(_) => panic!("the second reconcile did not finish"),
    }
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_program_is_not_sent_again_until_the_mirror_has_seen_it() {
    let (stores, mut writers) = world();
    let program = |node: &str, generation: i64| -> NodeProgramSlice {
        serde_json::from_value(json!({
            "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
            "metadata": {"name": format!("{node}.0"), "generation": generation}, "spec": {"node": node, "tables": {}},
        }))
        .unwrap()
    };
    // The mirror holds older slices (generation 1) of both nodes.
    for n in ["n1", "n2"] {
        writers.slices.apply_watcher_event(&watcher::Event::Apply(program(n, 1)));
    }
    let (ctx, mut handle) = ctx(stores);
    let chain = Arc::new(chain());
    let first = tokio::spawn(reconcile_chain(chain.clone(), ctx.clone()));
    expect_programs(&mut handle, &["n1", "n2"]).await;
    let status = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status", &APPLY[1..]).await;
    expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    first.await.unwrap().unwrap();

    // Reconciled again (with its new status) before the watch brings the programs
    // (generation 2) back: the same programs are not sent again.
    let mut chain = (*chain).clone();
    chain.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let chain = Arc::new(chain);
    let second = tokio::spawn(reconcile_chain(chain.clone(), ctx.clone()));
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await {
        panic!("a program the mirror has not caught up with was sent again: {} {}", req.method(), req.uri());
    }
    second.await.unwrap().unwrap();

    // Someone else's newer write (generation 3, another spec): ours goes out again.
    writers.slices.apply_watcher_event(&watcher::Event::Apply(program("n1", 3)));
    let third = tokio::spawn(reconcile_chain(chain, ctx));
    let n1 = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/nodeprogramslices/n1.0", &APPLY[1..]).await;
    assert_eq!(n1["spec"]["tables"]["headends"][0]["chain"], "default/web");
    third.abort();
}

/// Answers a DELETE as the API server does when the object is gone.
async fn deleted(handle: &mut Handle, path: &str) {
    let (req, send) = next(handle, &format!("DELETE {path}")).await;
    check(&req, "DELETE", path, "");
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap());
}

#[tokio::test]
async fn an_upgrade_moves_a_node_to_slices_and_its_old_program_goes_once_the_daemon_reads_them() {
    let (stores, mut writers) = world();
    // Before the upgrade: n1's pre-slice NodeProgram, and a slice n1.7 nobody wants.
    let legacy: NodeProgram = serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgram",
        "metadata": {"name": "n1", "generation": 9}, "spec": {"tables": {}, "peers": []},
    }))
    .unwrap();
    writers.programs.apply_watcher_event(&watcher::Event::Apply(legacy));
    let stale: NodeProgramSlice = serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
        "metadata": {"name": "n1.7", "generation": 1}, "spec": {"node": "n1", "tables": {}},
    }))
    .unwrap();
    writers.slices.apply_watcher_event(&watcher::Event::Apply(stale.clone()));
    let (ctx, mut handle) = ctx(stores);
    let chain = Arc::new(chain());
    let task = tokio::spawn(reconcile_chain(chain.clone(), ctx.clone()));
    // The slices first; then the slice nobody wants goes; the old program stays (the daemon
    // has not read the slices yet).
    let mut first = sort_out(&mut handle, 2).await;
    let n1 = answer(first.remove("n1").unwrap()).await;
    answer(first.remove("n2").unwrap()).await;
    deleted(&mut handle, "/apis/srv6pipes.io/v1alpha1/nodeprogramslices/n1.7").await;
    let rest = answer_all(&mut handle, 2).await;
    assert_eq!(rest["status"]["status"]["conditions"][0]["status"], "True");
    task.await.unwrap().unwrap();

    // n1's daemon reports on its slice 0: the old program goes, and only it.
    writers.slices.apply_watcher_event(&watcher::Event::Delete(stale));
    let mut reported: NodeProgramSlice = serde_json::from_value(n1).unwrap();
    reported.status = Some(serde_json::from_value(json!({"observedGeneration": 2, "conditions": []})).unwrap());
    writers.slices.apply_watcher_event(&watcher::Event::Apply(reported));
    let mut chain = (*chain).clone();
    chain.status = Some(serde_json::from_value(rest["status"]["status"].clone()).unwrap());
    let task = tokio::spawn(reconcile_chain(Arc::new(chain), ctx.clone()));
    deleted(&mut handle, "/apis/srv6pipes.io/v1alpha1/nodeprograms/n1").await;
    task.await.unwrap().unwrap();
    assert!(ctx.publisher.failures().is_empty());
}

#[tokio::test]
async fn a_world_change_reconciles_the_nodes_without_a_locator_only() {
    let (stores, mut writers) = world();
    let mut n3 = node("n3", "", "fd00:ffff::3");
    n3.metadata.annotations = None;
    for n in [n3, node("n4", "not a locator", "fd00:ffff::4")] {
        writers.nodes.apply_watcher_event(&watcher::Event::Apply(n));
    }
    let (tx, rx) = watch::channel(0u64);
    let mut nodes = Box::pin(unlocated(stores.nodes.clone(), rx));
    for _ in 0..2 {
        tx.send_modify(|v| *v += 1);
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(tokio::time::timeout(Duration::from_secs(1), nodes.next()).await.unwrap().unwrap().name);
        }
        got.sort();
        assert_eq!(got, ["n3", "n4"], "n1 and n2 have their locators");
        let more = tokio::time::timeout(Duration::from_millis(100), nodes.next()).await;
        assert!(more.is_err(), "nothing more until the next change: {more:?}");
    }
}

#[tokio::test]
async fn a_chain_without_the_finalizer_gets_it_and_its_status_in_one_reconcile() {
    let (stores, _w) = world();
    let (ctx, mut handle) = ctx(stores.clone());
    let mut c = chain();
    c.metadata.finalizers = None;
    c.metadata.resource_version = Some("7".into());
    let task = tokio::spawn(reconcile_chain(Arc::new(c), ctx));
    // The finalizer, conditional on the chain as reconciled.
    let (req, send) = next(&mut handle, "the finalizer").await;
    check(&req, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web", "fieldManager=srv6pipes-operator");
    assert_eq!(req.headers()["content-type"], "application/merge-patch+json");
    let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}}));
    let mut written = serde_json::to_value(chain()).unwrap();
    written["metadata"]["resourceVersion"] = json!("8");
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&written).unwrap())).unwrap());
    // The same reconcile goes on: the programs, the status (conditional on the chain as the
    // finalizer's write left it) and the Event.
    expect_programs(&mut handle, &["n1", "n2"]).await;
    let status = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status", &APPLY[1..]).await;
    assert_eq!(
        (status["metadata"]["resourceVersion"].as_str(), status["status"]["conditions"][0]["status"].as_str()),
        (Some("8"), Some("True"))
    );
    expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    // Neither write, coming back on the watch, triggers another reconcile.
    let forward = Forward {
        tx: futures::channel::mpsc::unbounded().0,
        only_changed: Some((stores.chain_triggers.clone(), chain_trigger as fn(&ServiceChain) -> String)),
    };
    let mut back: ServiceChain = serde_json::from_value(written).unwrap();
    assert!(!forward.passes(&watcher::Event::Apply(back.clone())), "the finalizer's write was reconciled again");
    back.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    assert!(!forward.passes(&watcher::Event::Apply(back)), "the status's write was reconciled again");
}

#[test]
fn a_chain_goes_to_its_controller_for_what_its_reconcile_acts_on_only() {
    let forward = Forward {
        tx: futures::channel::mpsc::unbounded().0,
        only_changed: Some((Triggers::default(), chain_trigger as fn(&ServiceChain) -> String)),
    };
    let passes = |c: &ServiceChain| forward.passes(&watcher::Event::Apply(c.clone()));
    let mut c = chain();
    c.metadata.finalizers = None;
    assert!(passes(&c), "a new chain");
    assert!(!passes(&c), "the same chain again");
    c.metadata.finalizers = Some(vec![FINALIZER.into()]);
    assert!(passes(&c), "its finalizer, added by another writer");
    c.status = Some(serde_json::from_value(json!({"observedGeneration": 2})).unwrap());
    c.metadata.resource_version = Some("9".into());
    c.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    assert!(!passes(&c), "its status or labels");
    let failed = |reason: &str| -> Option<srv6pipes_crds::ServiceChainStatus> {
        let ready =
            json!({"type": "Ready", "status": "False", "reason": reason, "message": "m", "lastTransitionTime": "2026-12-04T00:00:00Z"});
        Some(serde_json::from_value(json!({"observedGeneration": 2, "conditions": [ready]})).unwrap())
    };
    c.status = failed("SidPending");
    assert!(!passes(&c), "a status that names no failure");
    c.status = failed("ProgramFailed");
    assert!(passes(&c), "a status that says a node failed: the failure may have cleared meanwhile");
    assert!(!passes(&c), "the same failure again");
    c.status = Some(serde_json::from_value(json!({"observedGeneration": 2})).unwrap());
    assert!(passes(&c), "no longer failed");
    c.metadata.generation = Some(3);
    assert!(passes(&c), "a new spec");
    c.metadata.finalizers = None;
    assert!(passes(&c), "its finalizer, removed by another writer");
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    assert!(passes(&c), "its deletion");
    assert!(forward.passes(&watcher::Event::InitApply(c.clone())), "a relist sends every chain again");
    assert!(!forward.passes(&watcher::Event::Delete(c.clone())), "a deleted chain is not reconciled");
    assert!(passes(&c), "a chain created again under a deleted one's name");
    // Without `only_changed` (Nodes), every applied object goes.
    let all = Forward { tx: futures::channel::mpsc::unbounded().0, only_changed: None::<OnlyChanged<Node>> };
    let n = node("n1", "fcbb:bb00:1::/48", "fd00:ffff::1");
    assert!(all.passes(&watcher::Event::Apply(n.clone())) && all.passes(&watcher::Event::Apply(n.clone())));
    assert!(!all.passes(&watcher::Event::Delete(n)));
}

/// `world()`'s nodes as they are once its chain is programmed (their slices in the mirror),
/// and the chain with its deletion started, in the mirror too.
fn programmed_then_deleted(stores: &Stores, writers: &mut Writers) -> ServiceChain {
    let plan = stores.compile(None);
    for (node, program) in &plan.programs {
        let obj = NodeProgramSlice {
            metadata: kube::api::ObjectMeta { name: Some(format!("{node}.0")), ..Default::default() },
            spec: program.to_slice_spec(node),
            status: None,
        };
        writers.slices.apply_watcher_event(&watcher::Event::Apply(obj));
    }
    let mut c = chain();
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    writers.chains.apply_watcher_event(&watcher::Event::Apply(c.clone()));
    c
}

/// Both nodes get programs without the chain; then its finalizer goes.
async fn expect_chain_gone(handle: &mut Handle) {
    let programs = expect_programs(handle, &["n1", "n2"]).await;
    assert_eq!(programs["n1"]["spec"]["tables"]["headends"], json!([]));
    assert_eq!(programs["n2"]["spec"]["tables"]["decaps"], json!([]));
    let fin =
        expect(handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web", "fieldManager=srv6pipes-operator")
            .await;
    assert_eq!(fin["metadata"]["finalizers"], json!([]), "{fin}");
}

#[tokio::test]
async fn a_deleted_chain_leaves_every_node_before_its_finalizer_goes() {
    let (stores, mut writers) = world();
    let c = programmed_then_deleted(&stores, &mut writers);
    let (ctx, mut handle) = ctx(stores);
    let task = tokio::spawn(reconcile_chain(Arc::new(c), ctx));
    expect_chain_gone(&mut handle).await;
    task.await.unwrap().unwrap();
}

/// A node's write still in flight when the reconcile stops waiting keeps the finalizer: the
/// node may still hold the chain. Once written, the next look lets the chain go.
#[tokio::test]
async fn a_deletion_keeps_its_finalizer_while_a_nodes_write_is_in_flight() {
    let (stores, mut writers) = world();
    let c = Arc::new(programmed_then_deleted(&stores, &mut writers));
    let (ctx, mut handle) = ctx(stores);
    let task = tokio::spawn(reconcile_chain(c.clone(), ctx.clone()));
    let mut programs = sort_out(&mut handle, 2).await;
    let hanging = programs.remove("n2").unwrap();
    answer(programs.remove("n1").unwrap()).await;
    let first = tokio::time::timeout(crate::publisher::WAIT * 2, task).await.expect("the reconcile went on to remove the finalizer");
    assert_eq!(first.unwrap().unwrap(), Action::requeue(crate::publisher::WAIT));
    answer(hanging).await;
    while !ctx.publisher.wanted("n2").is_some_and(|(_, written)| written) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let task = tokio::spawn(reconcile_chain(c, ctx));
    let fin =
        expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web", "fieldManager=srv6pipes-operator")
            .await;
    assert_eq!(fin["metadata"]["finalizers"], json!([]), "{fin}");
    task.await.unwrap().unwrap();
}

/// A deletion compiles no plan of its own: while the last plan still holds the chain (compiled
/// before the deletion, and no new one due yet: here it is held elsewhere), the reconcile writes
/// nothing and looks again when told; the next plan, without the chain, is what the nodes get
/// before the finalizer goes. (Compiling one plan per deleted chain, a mass deletion at 100,000
/// chains cost seconds of CPU per chain.)
#[tokio::test]
async fn a_deletion_waits_for_the_next_plan_instead_of_compiling_its_own() {
    let (stores, mut writers) = world();
    let (ctx, mut handle, world) = ctx_with_world(stores.clone());
    let (before, _) = ctx.plan();
    let c = Arc::new(programmed_then_deleted(&stores, &mut writers));
    world.send_modify(|v| *v += 1);
    let task = tokio::spawn(reconcile_chain(c.clone(), ctx.clone()));
    no_request(&mut handle, "a plan that holds the chain is not published for its deletion").await;
    assert_eq!(task.await.unwrap().unwrap(), Action::requeue(HELD));
    drop(before);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let task = tokio::spawn(reconcile_chain(c, ctx));
    expect_chain_gone(&mut handle).await;
    task.await.unwrap().unwrap();
}

/// A third node, with no locator yet, in the mirror.
fn unlocated_n3(writers: &mut Writers) -> Node {
    let mut n3 = node("n3", "x", "fd00:ffff::3");
    n3.metadata.annotations = None;
    writers.nodes.apply_watcher_event(&watcher::Event::Apply(n3.clone()));
    n3
}

#[tokio::test]
async fn a_node_without_a_locator_gets_the_lowest_free_one() {
    let (stores, mut writers) = world();
    let n3 = unlocated_n3(&mut writers);
    let (ctx, mut handle) = ctx(stores);
    let task = tokio::spawn(reconcile_node(Arc::new(n3), ctx));
    let patch = expect(&mut handle, "PATCH", "/api/v1/nodes/n3", "fieldManager=srv6pipes-operator").await;
    assert_eq!(patch["metadata"]["annotations"][LOCATOR_ANNOTATION], "fcbb:bb00:3::/48");
    assert!(patch.get("apiVersion").is_none(), "a merge patch (1.20 cannot apply to dual-stack nodes): {patch}");
    // Nothing else: the planner publishes once the mirror brings the annotation back.
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    no_request(&mut handle, "the node reconcile writes only the locator").await;
}

/// A node deleted and registered again under its name (no annotation on the new Node) gets the
/// locator its SID table still names, not the lowest free one; one outside the block does not.
#[tokio::test]
async fn a_node_registered_again_gets_its_locator_back() {
    for (previous, given) in [("fcbb:bb00:7::/48", "fcbb:bb00:7::/48"), ("fd00:bad::/48", "fcbb:bb00:3::/48")] {
        let (stores, mut writers) = world();
        let n3 = unlocated_n3(&mut writers);
        writers.tables.apply_watcher_event(&watcher::Event::Apply(table("n3", previous, json!([]))));
        let (ctx, mut handle) = ctx(stores);
        let task = tokio::spawn(reconcile_node(Arc::new(n3), ctx));
        let patch = expect(&mut handle, "PATCH", "/api/v1/nodes/n3", "fieldManager=srv6pipes-operator").await;
        assert_eq!(patch["metadata"]["annotations"][LOCATOR_ANNOTATION], given, "its table named {previous}");
        task.await.unwrap().unwrap();
    }
}

/// A locator write the API server never answers holds the publication lock (every chain's
/// and node's writes wait for it) no longer than the writes' timeout: the node is looked at
/// again later.
#[tokio::test(start_paused = true)]
async fn an_unanswered_locator_write_holds_up_no_publication() {
    let (stores, mut writers) = world();
    let n3 = unlocated_n3(&mut writers);
    let (ctx, mut handle) = ctx(stores);
    let task = tokio::spawn(reconcile_node(Arc::new(n3), ctx.clone()));
    let (req, unanswered) = next(&mut handle, "the locator's PATCH").await;
    assert_eq!((req.method().as_str(), req.uri().path()), ("PATCH", "/api/v1/nodes/n3"));
    let done = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the reconcile waited on the unanswered PATCH");
    assert_eq!(done.unwrap().unwrap(), Action::requeue(Duration::from_secs(5)));
    assert!(ctx.publishing.try_lock().is_ok(), "the publication lock is free");
    drop(unanswered);
}

/// No API call comes (within a moment).
async fn no_request(handle: &mut Handle, why: &str) {
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await {
        panic!("{why}: {} {}", req.method(), req.uri());
    }
}

/// The planner's first round, both nodes' slices written and seen by the mirror: the chains it
/// sends, when to look again, and the round.
async fn first_round(
    ctx: &Arc<Ctx>,
    handle: &mut Handle,
    writers: &mut Writers,
) -> (Vec<ObjectRef<ServiceChain>>, Option<Duration>, Round) {
    let round = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.plan_round(None).await }
    });
    for (_, body) in expect_programs(handle, &["n1", "n2"]).await {
        writers.slices.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(body).unwrap()));
    }
    let (first, stale, one) = round.await.unwrap();
    (first, stale, one.expect("the round's plan outlived its wait"))
}

/// A change that touches one chain: the planner publishes what the new plan changed and
/// sends only that chain to the chain controller, not every chain.
#[tokio::test]
async fn the_planner_sends_only_the_chains_whose_status_a_change_changes() {
    let (stores, mut writers) = world();
    let mut db = chain();
    db.metadata.name = Some("db".into());
    db.metadata.uid = Some("uid-db".into());
    db.spec.functions[0].pod_selector.match_labels = Some([("vnf".to_string(), "ids".to_string())].into());
    writers.chains.apply_watcher_event(&watcher::Event::Apply(db));
    let (ctx, mut handle) = ctx(stores.clone());

    let (first, stale, one) = first_round(&ctx, &mut handle, &mut writers).await;
    let names = |refs: &[ObjectRef<ServiceChain>]| refs.iter().map(|r| r.name.clone()).collect::<std::collections::BTreeSet<_>>();
    let set = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!((names(&first), stale), (set(&["db", "web"]), None), "neither has a status yet");
    // The chains get the status the plan gives them, as their reconciles would write it.
    let settle = |writers: &mut Writers| {
        let (plan, _) = ctx.plan();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for c in stores.chains.state() {
            let mut c = (*c).clone();
            c.status = world::chain_status(&plan, &BTreeMap::new(), &c, now.clone());
            writers.chains.apply_watcher_event(&watcher::Event::Apply(c));
        }
    };
    settle(&mut writers);
    // A pod of db's function appears on n2 (it has no SID yet): db's status changes, web's not.
    writers.pods.apply_watcher_event(&watcher::Event::Apply(pod("ids-0", "n2", ("vnf", "ids"), "fd00:10:2::3")));
    ctx.cache.lock().unwrap().take(); // (the mirror would have bumped the world version)
    let second = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.plan_round(Some(&one)).await }
    });
    // n2's program lists its pods' addresses: n2's first slice is written again.
    for (_, body) in expect_programs(&mut handle, &["n2"]).await {
        writers.slices.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(body).unwrap()));
    }
    let (second, _, two) = second.await.unwrap();
    let two = two.expect("the round's plan outlived its wait");
    assert_eq!(names(&second), set(&["db"]));
    settle(&mut writers);
    // Nothing changed since: nothing to publish, no chain to reconcile.
    ctx.cache.lock().unwrap().take();
    let (third, _, _) = ctx.plan_round(Some(&two)).await;
    assert!(third.is_empty(), "{third:?}");
    // Without the previous round, every status is built and compared: the same answer.
    ctx.cache.lock().unwrap().take();
    let (fourth, _, _) = ctx.plan_round(None).await;
    assert!(fourth.is_empty(), "{fourth:?}");
    no_request(&mut handle, "no write in the last round").await;
}

/// A node fails for a moment between two of the planner's rounds (its writer's retry is
/// written before the next round): a chain whose reconcile wrote that failure into its status
/// meanwhile goes to the chain controller in the next round, though the failures are then the
/// same (none) as in the round before. (At 10,000 chains, four chains stayed `ProgramFailed`
/// for good after a conflict on one slice.)
#[tokio::test]
async fn a_failure_that_came_and_went_between_rounds_is_not_left_in_a_status() {
    let (stores, mut writers) = world();
    let (ctx, mut handle) = ctx(stores.clone());
    let (first, _, one) = first_round(&ctx, &mut handle, &mut writers).await;
    assert_eq!(first.len(), 1);
    // The chain's status as its reconcile writes it, with the failures of the moment.
    let status_now = |writers: &mut Writers| {
        let (plan, _) = ctx.plan();
        let c = stores.chains.state()[0].clone();
        let mut c = (*c).clone();
        c.status = world::chain_status(&plan, &ctx.publisher.failures(), &c, Time(k8s_openapi::jiff::Timestamp::now()));
        writers.chains.apply_watcher_event(&watcher::Event::Apply(c.clone()));
        world::ready_condition(c.status.as_ref()).unwrap().reason.clone()
    };
    assert_eq!(status_now(&mut writers), "Programmed");

    // A pod appears on n2 (its program lists its pods): n2's write is refused once, and the
    // chain, reconciled meanwhile, says so; n2's writer retries after its backoff and succeeds.
    writers.pods.apply_watcher_event(&watcher::Event::Apply(pod("other-0", "n2", ("app", "other"), "fd00:10:2::3")));
    ctx.cache.lock().unwrap().take();
    let (plan, _) = ctx.plan();
    let waits = ctx.publish(&plan, None).await;
    refuse(next(&mut handle, "n2's write").await, 422, "admission webhook denied the request");
    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    let failing = expect(&mut handle, "POST", events, "").await;
    assert_eq!(failing["reason"], "ProgramFailed");
    ctx.settled(waits).await;
    assert!(ctx.publisher.failures().contains_key("n2"));
    assert_eq!(status_now(&mut writers), "ProgramFailed");
    let retry = answer(next(&mut handle, "n2's retry").await).await;
    writers.slices.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(retry).unwrap()));
    let healed = expect(&mut handle, "POST", events, "").await;
    assert_eq!(healed["reason"], "ProgramPublished");
    for _ in 0..100 {
        if ctx.publisher.failures().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ctx.publisher.failures().is_empty(), "n2 written by its retry");

    // The next round: the chain's verdict and nodes are those of the round before, and so are
    // the failures (none), but its status names the failure that went: it is sent.
    drop(plan);
    ctx.cache.lock().unwrap().take();
    let (second, _, _) = ctx.plan_round(Some(&one)).await;
    assert_eq!(second.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["web"]);
    no_request(&mut handle, "nothing left to write").await;
}

/// Refuses a request as the API server does (a Status with `code`).
fn refuse((_, send): Pending, code: u16, message: &str) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "Invalid", "code": code});
    send.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap());
}

/// Sorts the next `n` requests (writers and reconciles run concurrently) by what they are.
async fn sort_out(handle: &mut Handle, n: usize) -> BTreeMap<String, Pending> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let pending = next(handle, "a request").await;
        let path = pending.0.uri().path().to_string();
        let key = match path.as_str() {
            p if p.ends_with("/status") => "status".to_string(),
            p if p.contains("/nodeprogramslices/") => p.rsplit('/').next().unwrap().trim_end_matches(".0").to_string(),
            p if p.ends_with("/namespaces/default/events") => format!("event{}", out.len()),
            p => panic!("unexpected request {} {p}", pending.0.method()),
        };
        out.insert(key, pending);
    }
    out
}

/// Answers the next `n` requests as they come (a chain's Event follows the answer to its
/// status); returns their bodies sorted out as [`sort_out`] does.
async fn answer_all(handle: &mut Handle, n: usize) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        for (key, pending) in sort_out(handle, 1).await {
            let key = if key.starts_with("event") { format!("event{}", out.len()) } else { key };
            out.insert(key, answer(pending).await);
        }
    }
    out
}

#[tokio::test]
async fn a_failing_node_delays_no_other_and_shows_on_its_node_and_the_chains() {
    let (stores, mut writers) = world();
    let (ctx, mut handle) = ctx(stores);
    let mut world_version = ctx.world.clone();
    let chain = Arc::new(chain());
    let task = tokio::spawn(reconcile_chain(chain.clone(), ctx.clone()));
    let mut programs = sort_out(&mut handle, 2).await;
    refuse(programs.remove("n2").unwrap(), 422, "admission webhook denied the request");
    answer(programs.remove("n1").unwrap()).await;
    // The node's Warning (from n2's writer), the chain's status and the chain's Event.
    let mut rest = answer_all(&mut handle, 3).await;
    let status = rest.remove("status").unwrap();
    let first_status = status["status"].clone();
    let ready = &status["status"]["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ProgramFailed")), "{status}");
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("node n2") && message.contains("admission webhook denied"), "{message}");
    let mut events: Vec<Value> = rest.into_values().collect();
    events.sort_by_key(|e| e["regarding"]["kind"].as_str().unwrap_or_default().to_string());
    assert_eq!((events[0]["regarding"]["kind"].as_str(), events[0]["regarding"]["name"].as_str()), (Some("Node"), Some("n2")));
    assert_eq!((events[0]["type"].as_str(), events[0]["reason"].as_str()), (Some("Warning"), Some("ProgramFailed")));
    assert!(events[0]["note"].as_str().unwrap().contains("admission webhook denied"), "{}", events[0]);
    assert_eq!((events[1]["regarding"]["kind"].as_str(), events[1]["reason"].as_str()), (Some("ServiceChain"), Some("ProgramFailed")));
    task.await.unwrap().unwrap();
    assert!(world_version.has_changed().unwrap(), "a node that starts failing bumps the world (every chain's status follows)");
    world_version.borrow_and_update();
    assert_eq!(ctx.publisher.failures().keys().collect::<Vec<_>>(), ["n2"]);

    // The chain changes while n2 is still broken: n1 gets its new program at once.
    let mut changed = (*chain).clone();
    changed.spec.r#match.destination_prefixes = vec!["fd00:10:2::/80".into()];
    changed.metadata.generation = Some(3);
    changed.status = Some(serde_json::from_value(first_status).unwrap());
    writers.chains.apply_watcher_event(&watcher::Event::Apply(changed.clone()));
    let started = std::time::Instant::now();
    let task = tokio::spawn(reconcile_chain(Arc::new(changed.clone()), ctx.clone()));
    let mut programs = sort_out(&mut handle, 1).await;
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    let n1 = answer(programs.remove("n1").expect("n1's program first")).await;
    assert_eq!(n1["spec"]["tables"]["headends"][0]["destination"], "fd00:10:2::/80", "{n1}");
    let status = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status", &APPLY[1..]).await;
    assert_eq!(status["status"]["conditions"][0]["reason"], "ProgramFailed", "{status}");
    task.await.unwrap().unwrap();

    // n2's writer retries by itself after its backoff (not on every publication); once
    // written, n2 is no longer failing and the world is bumped again.
    let mut retry = sort_out(&mut handle, 1).await;
    assert!(started.elapsed() > Duration::from_millis(300), "retried at once: {:?}", started.elapsed());
    let n2 = answer(retry.remove("n2").unwrap()).await;
    assert_eq!(n2["spec"]["tables"]["decaps"][0]["chain"], "default/web");
    let healed = expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    assert_eq!((healed["type"].as_str(), healed["reason"].as_str()), (Some("Normal"), Some("ProgramPublished")));
    tokio::time::timeout(Duration::from_secs(5), world_version.changed()).await.unwrap().unwrap();
    assert!(ctx.publisher.failures().is_empty());

    // The chain's `ProgramFailed`, written while n2 failed, comes back on the watch after the
    // failure cleared (the planner's round saw the chain as it was before that write): it
    // goes to the chain controller once more, whose reconcile makes the chain Ready.
    let forward = Forward {
        tx: futures::channel::mpsc::unbounded().0,
        only_changed: Some((Triggers::default(), chain_trigger as fn(&ServiceChain) -> String)),
    };
    let mut before = changed.clone();
    before.status = None;
    forward.passes(&watcher::Event::Apply(before));
    let mut failed = changed.clone();
    failed.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    assert!(forward.passes(&watcher::Event::Apply(failed.clone())), "a failed status coming back is reconciled");
    writers.chains.apply_watcher_event(&watcher::Event::Apply(failed.clone()));
    let task = tokio::spawn(reconcile_chain(Arc::new(failed), ctx.clone()));
    let mut rest = answer_all(&mut handle, 2).await;
    let ready = rest.remove("status").unwrap()["status"]["conditions"][0].clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("Programmed")), "{ready}");
    assert_eq!(rest.into_values().next().unwrap()["reason"], "Programmed");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_node_whose_write_hangs_delays_neither_the_others_nor_the_status() {
    let (stores, _w) = world();
    let (ctx, mut handle) = ctx(stores);
    let started = std::time::Instant::now();
    let task = tokio::spawn(reconcile_chain(Arc::new(chain()), ctx.clone()));
    let mut programs = sort_out(&mut handle, 2).await;
    let _hanging = programs.remove("n2").unwrap();
    answer(programs.remove("n1").unwrap()).await;
    let rest = answer_all(&mut handle, 2).await;
    assert_eq!(rest["status"]["status"]["conditions"][0]["status"], "True", "a write in flight is no failure yet");
    task.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < crate::publisher::WAIT + Duration::from_secs(1), "the reconcile waited {took:?} for a hanging node");
}

/// A chain's reconcile publishes and waits for its own nodes only, and not under the
/// publication lock: a cold start with writes pending on most nodes once reconciled one
/// chain every [`crate::publisher::WAIT`], and every reconcile walked every node.
#[tokio::test]
async fn a_reconcile_publishes_and_waits_for_its_own_nodes_only() {
    let (stores, mut writers) = world();
    // All on n1: its client, its function and its destination.
    let mut local = chain();
    local.metadata.name = Some("local".into());
    local.metadata.uid = Some("uid-local".into());
    local.spec.r#match.destination_prefixes = vec!["fd00:10:1::/64".into()];
    writers.chains.apply_watcher_event(&watcher::Event::Apply(local.clone()));
    let (ctx, mut handle) = ctx(stores);
    let started = std::time::Instant::now();
    let task = tokio::spawn(reconcile_chain(Arc::new(local), ctx.clone()));
    // n1's program goes out; n2's (web's decapsulation) is the planner's to publish.
    let mut rest = answer_all(&mut handle, 3).await;
    let n1 = rest.remove("n1").expect("n1's program");
    assert_eq!(n1["spec"]["node"], "n1");
    let status = &rest["status"]["status"];
    assert_eq!((status["conditions"][0]["status"].as_str(), status["hops"][0]["replicas"][0]["node"].as_str()), (Some("True"), Some("n1")));
    task.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the reconcile took {took:?}");
    assert!(ctx.publisher.wanted("n2").is_none(), "n2, which the chain does not use, was handed a program");
    // The planner's round publishes every node: n2's program goes out then.
    let round = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.plan_round(None).await.0.len() }
    });
    let n2 = answer_all(&mut handle, 1).await;
    assert_eq!(n2["n2"]["spec"]["tables"]["decaps"][0]["chain"], "default/web");
    round.abort();
}

/// Behind a backlog of writes (every permit taken, as at a cold start) a reconcile writes
/// its chain's status without waiting for its nodes' writes.
#[tokio::test]
async fn a_reconcile_behind_a_backlog_of_writes_does_not_wait_for_them() {
    let (stores, _w) = world();
    let (ctx, mut handle) = ctx(stores);
    let backlog = ctx.publisher.take_every_permit().await;
    let started = std::time::Instant::now();
    let task = tokio::spawn(reconcile_chain(Arc::new(chain()), ctx.clone()));
    let status = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status", &APPLY[1..]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the status waited {took:?} behind the backlog");
    assert_eq!(status["status"]["conditions"][0]["status"], "True", "{status}");
    expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    task.await.unwrap().unwrap();
    // Once the backlog clears, the nodes' writes go out.
    drop(backlog);
    let programs = answer_all(&mut handle, 2).await;
    assert_eq!(programs.keys().collect::<Vec<_>>(), ["n1", "n2"]);
}

/// Writes waiting behind a backlog (every permit taken, as at a cold start) hold no plan's
/// programs: the plan they were handed with (the cache's) keeps them alive, and once a newer
/// plan replaces it they are gone, not kept beside the newer one (two plans at once were most
/// of the cold start's heap). Such writes go out from the newer plan's wants.
#[tokio::test]
async fn writes_that_wait_keep_no_plan_alive_and_go_out_from_the_newer_one() {
    let (stores, _w) = world();
    let (ctx, mut handle) = ctx(stores);
    let backlog = ctx.publisher.take_every_permit().await;
    // Lets the writers run until each waits for a permit.
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let first = ctx.stores.compile(None);
    let _ = ctx.publish(&first, None).await;
    settle().await;
    let program = Arc::downgrade(&first.programs["n1"]);
    drop(first);
    assert!(program.upgrade().is_none(), "a waiting write kept its plan's program alive");
    // The backlog clears: the writes whose plan went write nothing...
    drop(backlog);
    no_request(&mut handle, "a write whose plan went").await;
    // ...until the newer plan's wants come (the same slices): then they go out.
    let second = ctx.stores.compile(None);
    let _ = ctx.publish(&second, None).await;
    let programs = answer_all(&mut handle, 2).await;
    assert_eq!(programs.keys().collect::<Vec<_>>(), ["n1", "n2"]);
    drop(second);
}

/// A slice that cannot be written (refused: a chain over the object bound) holds up no new
/// chain in its node's other slices: the writer goes on with the writes that take no chain
/// away, then reports the failure (and retries the refused slice later).
#[tokio::test]
async fn a_slice_that_fails_holds_up_no_other_slice_of_its_node() {
    let (ctx, _handle, _writers) = with_n1_0_refused(srv6::slices::MAX_SLICE_CHAINS).await;
    let failures = ctx.publisher.failures();
    assert!(failures["n1"].contains("slice n1.0") && !failures.contains_key("n2"), "{failures:?}");
    assert!(ctx.publisher.written("n1.1").is_some());
}

/// The world with `n` chains more on n1 published, n1.0 refused: n2's and n1.1's writes go out
/// all the same (answered here), then the failure's Event on n1.
async fn with_n1_0_refused(n: usize) -> (Arc<Ctx>, Handle, Writers) {
    let (stores, mut writers) = world();
    local_chains(&mut writers, n);
    let (ctx, mut handle) = ctx(stores);
    let plan = ctx.stores.compile(None);
    let _ = ctx.publish(&plan, None).await;
    let mut first = sort_out(&mut handle, 2).await;
    refuse(first.remove("n1").unwrap(), 422, "too large");
    answer(first.remove("n2").unwrap()).await;
    let next = sort_out(&mut handle, 1).await;
    assert_eq!(next.keys().collect::<Vec<_>>(), ["n1.1"], "n1.1 waited behind the refused n1.0");
    for (_, pending) in next {
        answer(pending).await;
    }
    expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", "").await;
    drop(plan);
    (ctx, handle, writers)
}

/// `n` chains more on n1 (`local-{i}`: their client, function and destination there); 200
/// make two slices.
fn local_chains(writers: &mut Writers, n: usize) {
    for i in 0..n {
        writers.chains.apply_watcher_event(&watcher::Event::Apply(local_chain(i)));
    }
}

fn local_chain(i: usize) -> ServiceChain {
    let mut c = chain();
    c.metadata.name = Some(format!("local-{i}"));
    c.metadata.uid = Some(format!("uid-local-{i}"));
    c.spec.r#match.destination_prefixes = vec!["fd00:10:1::/64".into()];
    c
}

/// A slice that can never be written holds up no deletion of a chain in the node's other
/// slices: the write that takes the deleted chain away goes out, and once no slice of the node
/// holds it, its finalizer goes, although the node's failure stays.
#[tokio::test]
async fn a_slice_that_fails_holds_up_no_deletion_on_its_node() {
    // Some of them in n1.1.
    let (ctx, mut handle, mut writers) = with_n1_0_refused(srv6::slices::MAX_SLICE_CHAINS + 10).await;
    // The mirror brings what was written; then a chain of n1.1 is deleted.
    for name in ["n1.1", "n2.0"] {
        let written = ctx.publisher.written(name).expect(name);
        writers.slices.apply_watcher_event(&watcher::Event::Apply((*written).clone()));
    }
    let held = slim::chains_of(&ctx.publisher.written("n1.1").unwrap());
    let i = (0..srv6::slices::MAX_SLICE_CHAINS + 10).find(|i| held.contains(&format!("default/local-{i}"))).expect("a local chain in n1.1");
    let mut deleted = local_chain(i);
    deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    writers.chains.apply_watcher_event(&watcher::Event::Apply(deleted.clone()));
    let task = tokio::spawn(reconcile_chain(Arc::new(deleted), ctx.clone()));
    // n1.0 is refused again; n1.1 goes out without the chain.
    refuse(sort_out(&mut handle, 1).await.remove("n1").expect("n1.0 again"), 422, "too large");
    let n1_1 = answer(sort_out(&mut handle, 1).await.remove("n1.1").expect("n1.1's write taking the deleted chain away")).await;
    assert!(!n1_1.to_string().contains(&format!("local-{i}\"")), "n1.1 still holds local-{i}");
    let path = format!("/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/local-{i}");
    loop {
        let pending = next(&mut handle, "the finalizer's removal").await;
        if pending.0.uri().path().ends_with("/events") {
            answer(pending).await;
            continue;
        }
        check(&pending.0, "PATCH", &path, "fieldManager=srv6pipes-operator");
        let fin = answer(pending).await;
        assert_eq!(fin["metadata"]["finalizers"], json!([]), "{fin}");
        break;
    }
    task.await.unwrap().unwrap();
    assert!(ctx.publisher.failures()["n1"].contains("slice n1.0"), "n1's failure stays");
    // Every chain left in n1.1 deleted too: n1.1 is no longer wanted, but slice 0, which lists
    // it, cannot be written: n1.1 stays (deleted, it would leave the daemon an incomplete set of
    // slices, from which it programs nothing).
    for key in slim::chains_of(&ctx.publisher.written("n1.1").unwrap()) {
        let name = key.split_once('/').unwrap().1;
        let mut c = match name.strip_prefix("local-") {
            Some(i) => local_chain(i.parse().unwrap()),
            None => chain(),
        };
        assert_eq!(c.name_any(), name);
        c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        writers.chains.apply_watcher_event(&watcher::Event::Apply(c));
    }
    let plan = ctx.stores.compile(None);
    let _ = ctx.publish(&plan, None).await;
    let mut refused = false;
    while let Ok(Some((req, send))) = tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await {
        assert_ne!(req.method(), "DELETE", "{} while slice 0 is not written", req.uri());
        if req.uri().path().ends_with("/n1.0") {
            refused = true;
            refuse((req, send), 422, "too large");
        } else {
            answer((req, send)).await;
        }
    }
    assert!(refused, "n1.0 was tried again");
    drop(plan);
}

/// A ctx whose world version the test bumps, as the mirrors do.
fn ctx_with_world(stores: Stores) -> (Arc<Ctx>, Handle, Arc<watch::Sender<u64>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let world = Arc::new(watch::channel(0u64).0);
    let config = Config { block: "fcbb:bb00::/32".parse().unwrap(), locator_len: 48 };
    let ctx = Ctx::new(Client::new(service, "default"), stores, config, world.clone(), Some("test".into()), Fence::always());
    (Arc::new(ctx), handle, world)
}

/// No second plan is compiled while the last one is held elsewhere (two plans at once were
/// the peak of a cold start): the held one comes back as older than the world, with when to
/// look again; once it is let go, the next call compiles, and the old plan is gone.
#[tokio::test]
async fn no_plan_is_compiled_while_the_last_one_is_held() {
    let (stores, _w) = world();
    let (ctx, _handle, world) = ctx_with_world(stores);
    // Past the compilation budget's pause (a compilation of this world takes microseconds).
    let quiet = || tokio::time::sleep(Duration::from_millis(20));
    let (first, stale) = ctx.plan();
    assert!(stale.is_none());
    world.send_modify(|v| *v += 1);
    quiet().await;
    let (again, stale) = ctx.plan();
    assert!(Arc::ptr_eq(&first, &again), "a second plan was compiled while the first was held");
    assert_eq!(stale, Some(HELD));
    let old = Arc::downgrade(&first);
    drop((first, again));
    quiet().await;
    let (_newer, stale) = ctx.plan();
    assert!(stale.is_none());
    assert!(old.upgrade().is_none(), "the old plan outlived the new one's compilation");
}

/// A plan compiled before the chain's last change (held elsewhere here) gives a status that
/// says which spec it is of: observedGeneration the compiled generation, not the newest one,
/// which tools waiting on observedGeneration would take as the new spec's verdict.
#[tokio::test]
async fn a_status_from_an_older_plan_claims_no_newer_generation() {
    let (stores, mut writers) = world();
    let (ctx, mut handle, world) = ctx_with_world(stores);
    let (held, _) = ctx.plan();
    let mut newer = chain();
    newer.metadata.generation = Some(3);
    newer.spec.r#match.destination_prefixes = vec!["fd00:10:3::/64".into()];
    writers.chains.apply_watcher_event(&watcher::Event::Apply(newer.clone()));
    world.send_modify(|v| *v += 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let task = tokio::spawn(reconcile_chain(Arc::new(newer), ctx.clone()));
    // Both nodes' programs, the status, the chain's Event.
    let out = answer_all(&mut handle, 4).await;
    let status = &out["status"]["status"];
    assert_eq!(status["observedGeneration"], 2, "{status}");
    assert_eq!(status["conditions"][0]["observedGeneration"], 2, "{status}");
    assert_eq!(task.await.unwrap().unwrap(), Action::requeue(HELD), "looked at again once a newer plan can be made");
    drop(held);
}

/// The planner's round holds no plan while it waits for its writes: a reconcile may compile a
/// newer one meanwhile (the round's then goes), and the round ends without statuses, leaving
/// them to the newer world's round.
#[tokio::test]
async fn a_round_holds_no_plan_while_it_waits_for_its_writes() {
    let (stores, _w) = world();
    let (ctx, mut handle, world) = ctx_with_world(stores);
    let round = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.plan_round(None).await }
    });
    // The round's writes are sent and not answered yet: the round waits for them.
    let pending = sort_out(&mut handle, 2).await;
    world.send_modify(|v| *v += 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (newer, stale) = ctx.plan();
    assert!(stale.is_none(), "the round's plan was held through its wait");
    for p in pending.into_values() {
        answer(p).await;
    }
    let (changed, _, round) = round.await.unwrap();
    assert!(changed.is_empty() && round.is_none(), "a round whose plan was replaced wrote statuses from it");
    drop(newer);
}

#[tokio::test]
async fn a_fenced_off_instance_writes_nothing() {
    let (stores, mut writers) = world();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let config = Config { block: "fcbb:bb00::/32".parse().unwrap(), locator_len: 48 };
    let world = Arc::new(watch::channel(0u64).0);
    // Never held (or held and expired: the same closed fence).
    let ctx = Arc::new(Ctx::new(Client::new(service, "default"), stores, config, world, None, Fence::new()));
    let e = reconcile_chain(Arc::new(chain()), ctx.clone()).await.unwrap_err();
    assert!(e.to_string().contains("not the leader"), "{e}");
    let n3 = unlocated_n3(&mut writers);
    let e = reconcile_node(Arc::new(n3), ctx.clone()).await.unwrap_err();
    assert!(e.to_string().contains("not the leader"), "{e}");
    // The programs' writers are fenced too.
    let plan = ctx.stores.compile(None);
    let waits = ctx.publish(&plan, None).await;
    let failures = ctx.settled(waits).await;
    assert!(failures.is_empty(), "a fenced-off writer records no node failure: {failures:?}");
    drop(ctx);
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await {
        panic!("a fenced-off operator made an API call: {} {}", req.method(), req.uri());
    }
}

#[tokio::test]
async fn program_writes_are_conditional_and_a_conflict_reads_again() {
    let (stores, mut writers) = world();
    // n1's slice as the mirror knows it, at resourceVersion 5.
    let known: NodeProgramSlice = serde_json::from_value(json!({
        "apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
        "metadata": {"name": "n1.0", "generation": 1, "resourceVersion": "5"}, "spec": {"node": "n1", "tables": {}},
    }))
    .unwrap();
    writers.slices.apply_watcher_event(&watcher::Event::Apply(known));
    let (ctx, mut handle) = ctx(stores);
    let task = tokio::spawn(reconcile_chain(Arc::new(chain()), ctx.clone()));
    let mut programs = sort_out(&mut handle, 2).await;
    let n1 = programs.remove("n1").unwrap();
    let body: Value = serde_json::from_slice(&n1.0.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "5", "conditional on what the operator knew");
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                        "message": "the object has been modified"});
    n1.1.send_response(Response::builder().status(409).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap());
    let n2 = answer(programs.remove("n2").unwrap()).await;
    assert!(n2["metadata"].get("resourceVersion").is_none(), "unknown object: no condition");
    // Read again, then written conditional on the fresh version.
    let (req, send) = next(&mut handle, "GET n1").await;
    check(&req, "GET", "/apis/srv6pipes.io/v1alpha1/nodeprogramslices/n1.0", "");
    let fresh = json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
                       "metadata": {"name": "n1.0", "generation": 1, "resourceVersion": "6"}, "spec": {"node": "n1", "tables": {}}});
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&fresh).unwrap())).unwrap());
    let retried = expect(&mut handle, "PATCH", "/apis/srv6pipes.io/v1alpha1/nodeprogramslices/n1.0", &APPLY[1..]).await;
    assert_eq!(retried["metadata"]["resourceVersion"], "6");
    answer_all(&mut handle, 2).await;
    task.await.unwrap().unwrap();
    assert!(ctx.publisher.failures().is_empty());
}

#[test]
fn a_chain_changes_the_world_until_its_deletion_starts() {
    let mut seen = Seen::default();
    let mut changed = |e: watcher::Event<ServiceChain>| seen.changed(&e, relevant::chain);
    let mut c = chain();
    assert!(changed(watcher::Event::Apply(c.clone())), "a new chain");
    assert!(!changed(watcher::Event::Apply(c.clone())), "the same chain again (its status, its finalizer)");
    c.metadata.generation = Some(3);
    assert!(changed(watcher::Event::Apply(c.clone())), "a new spec");
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    assert!(changed(watcher::Event::Apply(c.clone())), "its deletion starts: it leaves the compilation");
    c.metadata.finalizers = None;
    assert!(!changed(watcher::Event::Apply(c.clone())), "its finalizer goes");
    assert!(!changed(watcher::Event::Delete(c.clone())), "then the chain: the compiler had left it out already");
    let live = chain();
    assert!(changed(watcher::Event::Apply(live.clone())));
    assert!(changed(watcher::Event::Delete(live)), "a live chain deleted at once (no finalizer) leaves the world");
}

#[test]
fn a_slice_changes_the_world_by_its_failures_and_slice_0_by_its_first_report() {
    let mut seen = Seen::default();
    let mut changed = |e: watcher::Event<NodeProgramSlice>| seen.changed(&e, relevant::slice);
    let slice = |name: &str, generation: i64, reported: Option<(i64, &str, &str)>| NodeProgramSlice {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(generation),
            ..Default::default()
        },
        spec: srv6pipes_crds::NodeProgramSliceSpec { node: "n1".into(), ..Default::default() },
        status: reported.map(|(observed, status, message)| srv6pipes_crds::NodeProgramStatus {
            observed_generation: Some(observed),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Programmed".into(),
                status: status.into(),
                reason: "Test".into(),
                message: message.into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
                observed_generation: Some(observed),
            }],
        }),
    };
    assert!(!changed(watcher::Event::Apply(slice("n1.7", 1, None))), "the operator writes a new slice");
    assert!(!changed(watcher::Event::Apply(slice("n1.7", 1, Some((1, "True", ""))))), "the daemon programmed it");
    assert!(changed(watcher::Event::Apply(slice("n1.7", 2, Some((2, "False", "no uplink"))))), "the daemon failed");
    assert!(changed(watcher::Event::Apply(slice("n1.7", 3, Some((3, "True", ""))))), "and heals");
    assert!(!changed(watcher::Event::Delete(slice("n1.7", 3, Some((3, "True", ""))))), "the operator deletes it");
    assert!(changed(watcher::Event::Apply(slice("n1.0", 1, None))), "slice 0: the pre-slice program's hand-over");
    assert!(changed(watcher::Event::Apply(slice("n1.0", 1, Some((1, "True", ""))))), "slice 0's first report");
    assert!(!changed(watcher::Event::Apply(slice("n1.0", 2, Some((2, "True", ""))))), "later reports");
}

#[test]
fn compilations_wait_for_their_budget_unless_saved_while_quiet() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // The first compilation (400 ms) owes its time: the next waits 400 ms after it.
    let b = Budget::after(None, ms(400), t0 + ms(400));
    assert_eq!(b.wait(t0 + ms(400)), ms(400));
    assert_eq!(b.wait(t0 + ms(700)), ms(100));
    assert_eq!(b.wait(t0 + ms(800)), Duration::ZERO);
    // Quiet for long: two compilations' worth saved, no more; two run back to back.
    let quiet = t0 + Duration::from_secs(60);
    let b = Budget::after(Some(b), ms(400), quiet + ms(400));
    assert_eq!(b.wait(quiet + ms(400)), Duration::ZERO, "a lone change after a quiet spell compiles at once");
    let b = Budget::after(Some(b), ms(400), quiet + ms(800));
    assert_eq!(b.wait(quiet + ms(800)), Duration::ZERO);
    let b = Budget::after(Some(b), ms(400), quiet + ms(1200));
    assert_eq!(b.wait(quiet + ms(1200)), ms(400), "a third back to back waits: half a core under a stream of changes");
    // A stream of changes: compiling 400 ms in every 800.
    let mut b = b;
    let mut now = quiet + ms(1200);
    for _ in 0..10 {
        now += b.wait(now) + ms(400);
        b = Budget::after(Some(b), ms(400), now);
    }
    assert_eq!(now - (quiet + ms(1200)), ms(8000));
}
