//! Events (events.k8s.io/v1), each created as its own object. kube-runtime's `Recorder` keeps
//! every event of the last six minutes, to count repeats as a series, and scans all of them on
//! every publication: at a cold start with 100,000 chains, whose first statuses are an event
//! each, that is hundreds of MiB held and a scan of up to 100,000 entries per event under one
//! lock. The operator records transitions only (a chain's Ready condition, a node's program
//! failing or published again), so repeats are rare and need no series.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::Client;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    /// `reportingController`.
    controller: String,
    /// `reportingInstance` (the controller's name when not given).
    instance: String,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Recorder { client, controller: controller.to_string(), instance: instance.unwrap_or_else(|| controller.to_string()) }
    }

    /// Creates the event about `regarding`, in its namespace ("default" for a cluster-scoped
    /// object); an API server that does not answer within the writes' timeout holds up no
    /// caller for longer.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), String> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let object = self.object(event, regarding, now);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api = Api::<K8sEvent>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(crate::publisher::WRITE_TIMEOUT, api.create(&PostParams::default(), &object)).await {
            Ok(created) => created.map(drop).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", crate::publisher::WRITE_TIMEOUT.as_secs())),
        }
    }

    /// The object for `event` at `now`: named after what it regards and the time, unique per
    /// object and nanosecond.
    fn object(&self, event: &Event, regarding: &ObjectReference, now: k8s_openapi::jiff::Timestamp) -> K8sEvent {
        let name = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note: event.note.clone(),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_names_what_it_regards_and_who_reports_it() {
        let (service, _handle) = tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let recorder = Recorder::new(Client::new(service, "default"), "srv6pipes-operator", None);
        let regarding = ObjectReference {
            kind: Some("ServiceChain".into()),
            name: Some("web".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "ProgramFailed".into(),
            note: Some("node n2: denied".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let now = k8s_openapi::jiff::Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        let o = serde_json::to_value(recorder.object(&event, &regarding, now)).unwrap();
        assert_eq!(o["metadata"], serde_json::json!({"name": format!("web.{:x}", 1_700_000_000_123_456_789i128), "namespace": "shop"}));
        assert_eq!(
            (o["type"].as_str(), o["reason"].as_str(), o["action"].as_str()),
            (Some("Warning"), Some("ProgramFailed"), Some("Reconcile"))
        );
        assert_eq!((o["note"].as_str(), o["regarding"]["name"].as_str()), (Some("node n2: denied"), Some("web")));
        assert_eq!(
            (o["reportingController"].as_str(), o["reportingInstance"].as_str()),
            (Some("srv6pipes-operator"), Some("srv6pipes-operator"))
        );
        assert!(o["eventTime"].as_str().is_some_and(|t| t.starts_with("2023-11-14T22:13:20.123456")), "{o}");
        assert!(o.get("series").is_none() && o.get("deprecatedCount").is_none());
    }
}
