//! `docs/reference.md`: the resources' reference, generated from the same CRDs users install
//! (so from the Rust types and their doc comments), written by `crdgen` and drift-checked.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::fmt::Write;

/// Where the reference is committed, relative to the repository root.
pub const REFERENCE_FILE: &str = "docs/reference.md";

/// Fields whose schema is a Kubernetes type, documented by Kubernetes: named, not expanded.
const KUBERNETES_TYPES: [(&str, &str); 2] = [("podSelector", "LabelSelector"), ("conditions", "[]Condition")];

/// The whole reference, one section per resource.
pub fn reference_md() -> String {
    let mut out = String::from(
        "<!-- Generated from crds/src/lib.rs by `cargo run -p srv6pipes-crds --bin crdgen`: do not edit. -->\n\
         # Resource reference\n\n\
         srv6pipes' custom resources, API group `srv6pipes.io`, version `v1alpha1`. Users write\n\
         ServiceChains; the node daemons and the operator write the others. `kubectl get srv6pipes`\n\
         lists them all; `kubectl explain servicechain.spec` shows the same descriptions.\n",
    );
    for crd in crate::crds() {
        resource(&mut out, &crd);
    }
    out
}

fn resource(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let version = &crd.spec.versions[0];
    let schema =
        serde_json::to_value(&version.schema.as_ref().expect("a CRD has a schema").open_api_v3_schema).expect("a schema serializes");
    let _ = write!(out, "\n## {}\n\n{}\n\n", names.kind, text(&schema));
    let _ = writeln!(out, "- Scope: {}", crd.spec.scope);
    let _ = writeln!(out, "- Plural: `{}`", names.plural);
    if let Some(short) = &names.short_names {
        let _ = writeln!(out, "- Short names: {}", short.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "));
    }
    if let Some(categories) = &names.categories {
        let _ = writeln!(out, "- Categories: {}", categories.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "));
    }
    if let Some(columns) = &version.additional_printer_columns {
        let shown = |wide: bool| {
            columns.iter().filter(|c| (c.priority.unwrap_or(0) > 0) == wide).map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(out, "- `kubectl get` columns: {}", shown(false));
        let wide = shown(true);
        if !wide.is_empty() {
            let _ = writeln!(out, "- Also with `-o wide`: {wide}");
        }
    }
    for part in ["spec", "status"] {
        let Some(field) = schema["properties"].get(part) else { continue };
        let _ = write!(out, "\n### {} `.{part}`\n\n| Field | Type | Description |\n|---|---|---|\n", names.kind);
        fields(out, part, field);
    }
}

/// One table row per field below `prefix`, depth first in the schema's order.
fn fields(out: &mut String, prefix: &str, schema: &Value) {
    let required: Vec<&str> = schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else { return };
    for (name, field) in properties {
        let path = format!("{prefix}.{name}");
        let kubernetes = KUBERNETES_TYPES.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        let mut description = text(field);
        if required.contains(&name.as_str()) {
            description.insert_str(0, "**Required.** ");
        }
        if let Some(values) = field["enum"].as_array() {
            let values: Vec<String> = values.iter().filter_map(Value::as_str).map(|v| format!("`{v}`")).collect();
            let _ = write!(description, " One of {}.", values.join(", "));
        }
        if let Some(default) = field.get("default") {
            let _ = write!(description, " Default: `{default}`.");
        }
        let _ = writeln!(out, "| `{path}` | {} | {} |", kubernetes.unwrap_or(&type_name(field)), description.trim().replace('|', "\\|"));
        if kubernetes.is_none() {
            fields(out, &path, field);
            if field["type"] == "array" {
                fields(out, &format!("{path}[]"), &field["items"]);
            }
        }
    }
}

fn type_name(field: &Value) -> String {
    match field["type"].as_str() {
        Some("array") => format!("[]{}", type_name(&field["items"])),
        Some("object") if field.get("additionalProperties").is_some() => {
            format!("map[string]{}", type_name(&field["additionalProperties"]))
        }
        Some(t) => t.to_string(),
        None => "object".to_string(),
    }
}

/// A schema's description on one line.
fn text(schema: &Value) -> String {
    schema["description"].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_described_and_nothing_is_auto_generated() {
        let md = reference_md();
        assert!(!md.contains("Auto-generated"), "a resource lacks its own description");
        for line in md.lines().filter(|l| l.starts_with("| `")) {
            let description = line.rsplit(" | ").next().unwrap().trim_end_matches(" |").trim_end_matches('|').trim();
            assert!(!description.is_empty() && description != "**Required.**", "undescribed field: {line}");
        }
        for want in [
            "## ServiceChain",
            "| `spec.functions[].proxy` | string |",
            "`Dynamic`, `Static`, `Masquerading`",
            "| `spec.sources.podSelector` | LabelSelector |",
            "| `status.conditions` | []Condition |",
            "- Categories: `srv6pipes`",
            "- Also with `-o wide`: Segments",
            "## NodeProgramSlice",
        ] {
            assert!(md.contains(want), "{want:?} missing from the reference");
        }
    }
}
