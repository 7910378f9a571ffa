//! The node-writes admission webhook. RBAC gives the node daemons' one ServiceAccount (a
//! DaemonSet has one identity for every node) writes of every NodeSidTable and every
//! NodeProgramSlice status: it cannot say "your own node's". This webhook does. A daemon's token
//! is bound to its pod (a projected ServiceAccount token carries the pod's name and uid), the pod
//! says which node it runs on, and the objects name their node (a SID table by its name, a slice
//! in `spec.node`): a write is admitted only when the two agree. Writes by anyone else are left to RBAC.
//!
//! Every replica serves it (the API server may call any), with one certificate kept in a Secret
//! (the first replica makes it; a self-signed CA and a serving certificate for the Service's DNS
//! names) and the CA written into the ValidatingWebhookConfiguration's caBundle.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::Client;
use tracing::{debug, info, warn};

/// The path the ValidatingWebhookConfiguration calls.
pub const PATH: &str = "/validate-node-writes";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// The operator's namespace: the Service's, the Secret's and the node daemons' account's.
    pub namespace: String,
    /// The Service in front of the operators (its DNS names are in the certificate).
    pub service: String,
    /// The Secret holding the certificate (type kubernetes.io/tls, with ca.crt).
    pub secret: String,
    /// The ValidatingWebhookConfiguration whose caBundle is ours.
    pub configuration: String,
    /// The node daemons' ServiceAccount (in `namespace`).
    pub node_account: String,
}

/// Who writes, as far as this webhook cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Writer {
    /// Not a node daemon: RBAC decides.
    Other,
    /// A node daemon whose token is bound to pod `pod` (with `uid`, when the token says).
    Daemon { pod: String, uid: Option<String> },
    /// A node daemon's account with a token bound to no pod (a legacy Secret token): it cannot
    /// say which node it is on.
    Unbound,
}

pub fn writer(user: &UserInfo, namespace: &str, node_account: &str) -> Writer {
    if user.username.as_deref() != Some(format!("system:serviceaccount:{namespace}:{node_account}").as_str()) {
        return Writer::Other;
    }
    let extra = |key: &str| user.extra.as_ref().and_then(|e| e.get(key)).and_then(|v| v.first()).cloned();
    match extra(POD_NAME_EXTRA) {
        Some(pod) => Writer::Daemon { pod, uid: extra(POD_UID_EXTRA) },
        None => Writer::Unbound,
    }
}

/// Whether `writer` may write the object named `object` (a node's name). `pod` is the daemon's
/// pod as the API server has it: (uid, node name), or None when it does not exist.
pub fn judge(object: &str, writer: &Writer, pod: Option<(&str, &str)>) -> Result<(), String> {
    let (name, uid) = match writer {
        Writer::Other => return Ok(()),
        Writer::Unbound => {
            return Err(format!(
                "a node daemon may write only its own node's objects; its token is bound to no pod (use a projected ServiceAccount token), so {object:?} is refused"
            ))
        }
        Writer::Daemon { pod, uid } => (pod, uid),
    };
    match pod {
        None => Err(format!("the node daemon's pod {name} does not exist; {object:?} is refused")),
        Some((found, _)) if uid.as_deref().is_some_and(|u| u != found) => {
            Err(format!("the node daemon's token belongs to an earlier pod {name}; {object:?} is refused"))
        }
        Some((_, node)) if node != object => {
            Err(format!("the node daemon on node {node:?} (pod {name}) may write only node {node:?}'s objects, not {object:?}'s"))
        }
        Some(_) => Ok(()),
    }
}

/// Answers one AdmissionReview.
async fn review(client: &Client, cfg: &Config, body: &[u8]) -> AdmissionReview<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e).into_review(),
    };
    let response = AdmissionResponse::from(&req);
    let who = writer(&req.user_info, &cfg.namespace, &cfg.node_account);
    let pod = match &who {
        Writer::Daemon { pod, .. } => match Api::<Pod>::namespaced(client.clone(), &cfg.namespace).get_opt(pod).await {
            Ok(p) => p,
            Err(e) => return forbidden(response.deny(format!("cannot look up the node daemon's pod {pod}: {e}"))).into_review(),
        },
        _ => None,
    };
    let found = pod
        .as_ref()
        .map(|p| (p.metadata.uid.as_deref().unwrap_or_default(), p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()));
    let resource = match &req.sub_resource {
        Some(sub) => format!("{}/{sub}", req.resource.resource),
        None => req.resource.resource.clone(),
    };
    // A slice names its node in `spec.node` (as it was before the write: status writes cannot
    // change the spec); the other objects are named after their node.
    let object = match req.resource.resource.as_str() {
        "nodeprogramslices" => {
            let node =
                req.old_object.as_ref().or(req.object.as_ref()).and_then(|o| o.data.get("spec")?.get("node")?.as_str().map(String::from));
            match node {
                Some(n) => n,
                None => return forbidden(response.deny(format!("slice {} names no node in spec.node", req.name))).into_review(),
            }
        }
        _ => req.name.clone(),
    };
    match judge(&object, &who, found) {
        Ok(()) => {
            debug!(%resource, name = %req.name, user = ?req.user_info.username, "admitted");
            response.into_review()
        }
        Err(why) => {
            warn!(%resource, name = %req.name, operation = ?req.operation, reason = %why, "refused a node daemon's write");
            forbidden(response.deny(why)).into_review()
        }
    }
}

/// A refusal the client sees as 403 Forbidden (the API server would otherwise pick the code).
fn forbidden(mut r: AdmissionResponse) -> AdmissionResponse {
    r.result.code = 403;
    r.result.reason = "Forbidden".into();
    r
}

/// The certificate the webhook serves: PEM of the serving certificate, its key, and the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// The DNS names the API server may use for `service` in `namespace`.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local"), format!("{service}.{namespace}")]
}

/// A fresh self-signed CA and a serving certificate it signs for `names`.
pub fn generate(names: &[String]) -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "srv6pipes webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("srv6pipes-webhook"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca, &ca_key)?;
    Ok(Tls { cert: cert.pem(), key: key.serialize_pem(), ca: ca.pem() })
}

pub fn server_config(tls: &Tls) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(tls.cert.as_bytes()).collect::<Result<Vec<_>, _>>().context("serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).context("serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The Secret's certificate, made (and stored) by the first replica that finds none.
async fn ensure_tls(client: &Client, cfg: &Config) -> anyhow::Result<Tls> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(&cfg.secret).await.with_context(|| format!("get secret {}/{}", cfg.namespace, cfg.secret))? {
            let field = |k: &str| {
                let v =
                    s.data.as_ref().and_then(|d| d.get(k)).ok_or_else(|| anyhow!("secret {}/{} has no {k}", cfg.namespace, cfg.secret))?;
                String::from_utf8(v.0.clone()).map_err(|_| anyhow!("secret {}/{}: {k} is not PEM", cfg.namespace, cfg.secret))
            };
            return Ok(Tls { cert: field("tls.crt")?, key: field("tls.key")?, ca: field("ca.crt")? });
        }
        let tls = generate(&dns_names(&cfg.service, &cfg.namespace))?;
        let data = [("tls.crt", &tls.cert), ("tls.key", &tls.key), ("ca.crt", &tls.ca)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(cfg.secret.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %cfg.secret, namespace = %cfg.namespace, "webhook certificate made");
                return Ok(tls);
            }
            // Another replica made one first: use it.
            Err(kube::Error::Api(s)) if s.is_already_exists() => continue,
            Err(e) => return Err(e).with_context(|| format!("create secret {}/{}", cfg.namespace, cfg.secret)),
        }
    }
    Err(anyhow!("secret {}/{}: created and gone again three times", cfg.namespace, cfg.secret))
}

/// Writes the CA into every webhook of the configuration (replicas race: a conflict rereads).
async fn publish_ca(client: &Client, cfg: &Config, ca: &str) -> anyhow::Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let bundle = ByteString(ca.as_bytes().to_vec());
    for _ in 0..5 {
        let mut c =
            api.get(&cfg.configuration).await.with_context(|| format!("get validatingwebhookconfiguration {}", cfg.configuration))?;
        let stale: Vec<_> = c.webhooks.iter_mut().flatten().filter(|w| w.client_config.ca_bundle.as_ref() != Some(&bundle)).collect();
        if stale.is_empty() {
            return Ok(());
        }
        for w in stale {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
        match api.replace(&cfg.configuration, &PostParams::default(), &c).await {
            Ok(_) => {
                info!(configuration = %cfg.configuration, "webhook CA published");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            Err(e) => return Err(e).with_context(|| format!("update validatingwebhookconfiguration {}", cfg.configuration)),
        }
    }
    Err(anyhow!("validatingwebhookconfiguration {}: conflicts on every update", cfg.configuration))
}

/// Serves the webhook until an error (the caller's SIGTERM handling ends it).
pub async fn serve(client: Client, cfg: Config) -> anyhow::Result<()> {
    let tls = ensure_tls(&client, &cfg).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&tls)?));
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("bind webhook {}", cfg.addr))?;
    publish_ca(&client, &cfg, &tls.ca).await?;
    info!(addr = %cfg.addr, path = PATH, "serving the node-writes webhook");
    let cfg = Arc::new(cfg);
    loop {
        let (tcp, peer) = listener.accept().await.context("accept")?;
        let (acceptor, client, cfg) = (acceptor.clone(), client.clone(), cfg.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
            };
            let service = hyper::service::service_fn(move |req| {
                let (client, cfg) = (client.clone(), cfg.clone());
                async move { Ok::<_, Infallible>(handle(req, &client, &cfg).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, client: &Client, cfg: &Config) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    if req.method() != Method::POST || req.uri().path() != PATH {
        return reply(StatusCode::NOT_FOUND, format!("{{\"error\":\"POST {PATH}\"}}").into_bytes());
    }
    let body = match Limited::new(req.into_body(), 4 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": e.to_string()}).to_string().into_bytes()),
    };
    let answer = review(client, cfg, &body).await;
    match serde_json::to_vec(&answer) {
        Ok(b) => reply(StatusCode::OK, b),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": e.to_string()}).to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn user(name: &str, pod: Option<(&str, &str)>) -> UserInfo {
        let extra = pod.map(|(p, uid)| {
            BTreeMap::from([(POD_NAME_EXTRA.to_string(), vec![p.to_string()]), (POD_UID_EXTRA.to_string(), vec![uid.to_string()])])
        });
        UserInfo { username: Some(name.into()), extra, ..Default::default() }
    }

    const DAEMON: &str = "system:serviceaccount:kube-system:srv6pipes-node";

    #[test]
    fn a_node_daemon_writes_only_its_own_nodes_objects() {
        let w = writer(&user(DAEMON, Some(("srv6pipes-node-abc", "u1"))), "kube-system", "srv6pipes-node");
        assert_eq!(w, Writer::Daemon { pod: "srv6pipes-node-abc".into(), uid: Some("u1".into()) });
        assert_eq!(judge("n1", &w, Some(("u1", "n1"))), Ok(()));
        let other = judge("n2", &w, Some(("u1", "n1"))).unwrap_err();
        assert!(other.contains("\"n1\"") && other.contains("\"n2\""), "{other}");
        assert!(judge("n1", &w, None).unwrap_err().contains("does not exist"));
        assert!(judge("n1", &w, Some(("u0", "n1"))).unwrap_err().contains("earlier pod"), "a recreated pod of the same name");
        // A token without the pod's uid still needs the node to match.
        let no_uid = Writer::Daemon { pod: "p".into(), uid: None };
        assert_eq!(judge("n1", &no_uid, Some(("u9", "n1"))), Ok(()));
        assert!(judge("n2", &no_uid, Some(("u9", "n1"))).is_err());
    }

    #[test]
    fn unbound_daemon_tokens_are_refused_and_others_left_to_rbac() {
        let unbound = writer(&user(DAEMON, None), "kube-system", "srv6pipes-node");
        assert_eq!(unbound, Writer::Unbound);
        assert!(judge("n1", &unbound, None).unwrap_err().contains("bound to no pod"));
        for other in ["system:serviceaccount:kube-system:srv6pipes-operator", "system:serviceaccount:other:srv6pipes-node", "admin"] {
            let w = writer(&user(other, Some(("p", "u"))), "kube-system", "srv6pipes-node");
            assert_eq!(w, Writer::Other, "{other}");
            assert_eq!(judge("n2", &w, None), Ok(()));
        }
    }

    /// An AdmissionReview as the API server sends it, answered with the pod looked up through
    /// the API: the uid comes back, the own node's write is allowed, another's is 403.
    #[tokio::test]
    async fn reviews_look_up_the_daemons_pod() {
        use http::{Request, Response};
        use kube::client::Body;
        let cfg = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            namespace: "kube-system".into(),
            service: "srv6pipes-operator".into(),
            secret: "s".into(),
            configuration: "c".into(),
            node_account: "srv6pipes-node".into(),
        };
        // A SID table is named after its node; a slice names it in spec.node (its name is
        // "<node>.<index>", and a name proves nothing: "n1.0" could be node "n1.0"'s).
        let table = |object: &str| {
            (
                "nodesidtables",
                None,
                object.to_string(),
                serde_json::json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeSidTable", "metadata": {"name": object}}),
            )
        };
        let slice = |name: &str, node: &str| {
            let o = serde_json::json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "NodeProgramSlice",
                                       "metadata": {"name": name}, "spec": {"node": node, "tables": {}}});
            ("nodeprogramslices", Some("status"), name.to_string(), o)
        };
        for ((resource, sub, object, obj), allowed) in
            [(table("n1"), true), (table("n2"), false), (slice("n2.0", "n1"), true), (slice("n1.0", "n2"), false)]
        {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let body = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "req-1", "kind": {"group": "srv6pipes.io", "version": "v1alpha1", "kind": obj["kind"]},
                    "resource": {"group": "srv6pipes.io", "version": "v1alpha1", "resource": resource}, "subResource": sub,
                    "name": object, "operation": "UPDATE",
                    "userInfo": {"username": DAEMON, "extra": {POD_NAME_EXTRA: ["srv6pipes-node-abc"], POD_UID_EXTRA: ["u1"]}},
                    "object": obj, "oldObject": obj,
                    "dryRun": false, "options": null
                }
            });
            let api = tokio::spawn(async move {
                let (req, send) = handle.next_request().await.expect("a pod lookup");
                assert_eq!(req.uri().path(), "/api/v1/namespaces/kube-system/pods/srv6pipes-node-abc");
                let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "srv6pipes-node-abc", "uid": "u1"}, "spec": {"nodeName": "n1", "containers": []}});
                send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&pod).unwrap())).unwrap());
            });
            let answer = serde_json::to_value(review(&client, &cfg, body.to_string().as_bytes()).await).unwrap();
            api.await.unwrap();
            let r = &answer["response"];
            assert_eq!(r["uid"], "req-1");
            assert_eq!(r["allowed"], allowed, "{object}: {answer}");
            if !allowed {
                assert_eq!(r["status"]["code"], 403, "{answer}");
                assert!(r["status"]["message"].as_str().unwrap().contains("not \"n2\"'s"), "{answer}");
            }
            if resource == "nodeprogramslices" {
                assert_eq!(allowed, obj["spec"]["node"] == "n1", "judged by spec.node, not the name");
            }
        }
    }

    /// The certificate works as the API server uses it: a TLS client trusting only the CA
    /// completes a handshake for the Service's name and refuses another name.
    #[tokio::test]
    async fn generated_certificate_verifies_for_the_service_name_only() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let tls = generate(&dns_names("srv6pipes-operator", "kube-system")).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&tls).unwrap()));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(tls.ca.as_bytes()).unwrap()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        for (name, ok) in [("srv6pipes-operator.kube-system.svc", true), ("evil.kube-system.svc", false)] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn({
                let acceptor = acceptor.clone();
                async move { acceptor.accept(a).await.is_ok() }
            });
            let client = connector.connect(ServerName::try_from(name.to_string()).unwrap(), b).await;
            assert_eq!(client.is_ok(), ok, "{name}: {:?}", client.err());
            if ok {
                assert!(server.await.unwrap());
            }
        }
    }
}
