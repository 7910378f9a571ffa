//! chart-render: renders charts/srv6pipes the way `helm template` does, for machines without
//! helm (these CI machines). Test tooling, not a Helm replacement: it implements the subset of
//! Helm's template language the chart uses (Go text/template through the `gtmpl` crate, plus
//! `default`, `quote`, `toYaml`, `toJson`, `nindent`, `indent` and `dict`; `.Values`,
//! `.Release.Name`, `.Release.Namespace`, `.Chart.*`), and fails on anything else, so the chart
//! cannot drift out of it unnoticed. e2e/cluster/up uses `helm template` when helm is present.
//!
//!   chart-render CHART_DIR [--release NAME] [--namespace NS] [-f VALUES.yaml]... [--set a.b=v]...

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gtmpl::{Context, FuncError, Template, Value};
use serde_json::Value as Json;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chart-render: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<String, String> {
    let (mut chart, mut release, mut namespace) = (None, "srv6pipes".to_string(), "kube-system".to_string());
    let (mut files, mut sets) = (vec![], vec![]);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--release" => release = value("--release")?,
            "--namespace" | "-n" => namespace = value("--namespace")?,
            "-f" | "--values" => files.push(PathBuf::from(value("-f")?)),
            "--set" => sets.push(value("--set")?),
            "-h" | "--help" => {
                return Ok(include_str!("chart-render.rs")
                    .lines()
                    .skip(1)
                    .take_while(|l| l.starts_with("//!"))
                    .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
                    .collect())
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            s if chart.is_none() => chart = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    let chart = chart.ok_or("usage: chart-render CHART_DIR [--release NAME] [--namespace NS] [-f VALUES]... [--set a.b=v]...")?;
    let mut values = yaml_file(&chart.join("values.yaml"))?;
    for f in &files {
        merge(&mut values, yaml_file(f)?);
    }
    for s in &sets {
        let (path, v) = s.split_once('=').ok_or_else(|| format!("--set {s}: expected key=value"))?;
        merge(&mut values, set_value(path, v));
    }
    let meta = yaml_file(&chart.join("Chart.yaml"))?;
    let ctx = serde_json::json!({
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    });
    render_chart(&chart.join("templates"), &Context::from(to_gtmpl(&ctx)))
}

fn render_chart(dir: &Path, ctx: &Context) -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".tpl"))
        .collect();
    // CRDs first, as helm installs them first.
    names.sort_by_key(|n| (n != "crds.yaml", n.clone()));
    let mut out = String::new();
    for name in names.iter().filter(|n| !n.starts_with('_')) {
        let text = std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let mut t = Template::with_name(name.as_str());
        t.add_funcs(&FUNCS);
        t.parse(text).map_err(|e| format!("{name}: {e}"))?;
        let rendered = t.render(ctx).map_err(|e| format!("{name}: {e}"))?;
        for doc in rendered.split("\n---") {
            let doc = doc.trim_start_matches("---").trim_matches('\n');
            let content = doc.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if content {
                out.push_str(&format!("---\n# Source: srv6pipes/templates/{name}\n{doc}\n"));
            }
        }
    }
    // The output must be YAML a client can apply.
    for d in serde_yaml::Deserializer::from_str(&out) {
        <Json as serde::Deserialize>::deserialize(d).map_err(|e| format!("rendered YAML is invalid: {e}\n{out}"))?;
    }
    Ok(out)
}

const FUNCS: [(&str, gtmpl::Func); 7] = [
    ("default", default),
    ("quote", quote),
    ("toYaml", to_yaml),
    ("toJson", to_json),
    ("nindent", nindent),
    ("indent", indent),
    ("dict", dict),
];

fn args<const N: usize>(name: &str, a: &[Value]) -> Result<[Value; N], FuncError> {
    a.to_vec().try_into().map_err(|_| FuncError::ExactlyXArgs(name.into(), N))
}

fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        other => other.to_string(),
    }
}

/// `default DEFAULT VALUE`: VALUE unless it is empty (Helm's emptiness: "", 0, false, nil, {}, []).
fn default(a: &[Value]) -> Result<Value, FuncError> {
    let [d, v] = args("default", a)?;
    Ok(if gtmpl_truthy(&v) { v } else { d })
}

fn gtmpl_truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) | Value::Map(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::Function(_) => true,
        Value::NoValue | Value::Nil => false,
    }
}

fn quote(a: &[Value]) -> Result<Value, FuncError> {
    let [v] = args("quote", a)?;
    Ok(Value::from(serde_json::to_string(&string(&v)).expect("a string serializes")))
}

fn to_yaml(a: &[Value]) -> Result<Value, FuncError> {
    let [v] = args("toYaml", a)?;
    let y = serde_yaml::to_string(&to_json_value(&v)).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::from(y.trim_end().to_string()))
}

fn to_json(a: &[Value]) -> Result<Value, FuncError> {
    let [v] = args("toJson", a)?;
    Ok(Value::from(to_json_value(&v).to_string()))
}

fn indent(a: &[Value]) -> Result<Value, FuncError> {
    let [n, s] = args("indent", a)?;
    let pad = " ".repeat(n.to_string().parse().map_err(|_| FuncError::Generic(format!("indent: {n} is not a number")))?);
    Ok(Value::from(string(&s).lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")))
}

fn nindent(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(format!("\n{}", string(&indent(a)?))))
}

fn dict(a: &[Value]) -> Result<Value, FuncError> {
    if !a.len().is_multiple_of(2) {
        return Err(FuncError::Generic("dict needs key/value pairs".into()));
    }
    Ok(Value::Map(a.chunks(2).map(|kv| (string(&kv[0]), kv[1].clone())).collect::<HashMap<_, _>>()))
}

fn to_gtmpl(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => n.as_i64().map(Value::from).or_else(|| n.as_f64().map(Value::from)).unwrap_or(Value::Nil),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        Json::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect()),
    }
}

fn to_json_value(v: &Value) -> Json {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => n.as_i64().map(Json::from).or_else(|| n.as_f64().map(Json::from)).unwrap_or(Json::Null),
        Value::Array(a) => Json::Array(a.iter().map(to_json_value).collect()),
        // Sorted keys, as Helm's toYaml and toJson write them.
        Value::Object(o) | Value::Map(o) => {
            let sorted: std::collections::BTreeMap<_, _> = o.iter().collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), to_json_value(v))).collect())
        }
    }
}

fn yaml_file(path: &Path) -> Result<Json, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Helm's values merge: maps merge key by key, anything else replaces.
fn merge(base: &mut Json, over: Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `--set a.b=v`: v as a bool or integer when it reads as one, else a string (as helm does).
fn set_value(path: &str, v: &str) -> Json {
    let leaf = match v {
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        _ => v.parse::<i64>().map(Json::from).unwrap_or_else(|_| Json::String(v.into())),
    };
    path.rsplit('.').fold(leaf, |acc, key| serde_json::json!({ key: acc }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, values: Json) -> Result<String, String> {
        let mut t = Template::with_name("t");
        t.add_funcs(&FUNCS);
        t.parse(text).map_err(|e| e.to_string())?;
        t.render(&Context::from(to_gtmpl(&serde_json::json!({"Values": values})))).map_err(|e| e.to_string())
    }

    #[test]
    fn helm_functions_behave_as_helm_documents_them() {
        let v = serde_json::json!({"tag": "", "n": 0, "t": [{"operator": "Exists", "key": "a"}], "s": "x\"y"});
        assert_eq!(render(r#"{{ default "1.0" .Values.tag }}"#, v.clone()).unwrap(), "1.0");
        assert_eq!(render(r#"{{ if .Values.n }}yes{{ else }}no{{ end }}"#, v.clone()).unwrap(), "no");
        assert_eq!(render(r#"{{ quote .Values.s }}"#, v.clone()).unwrap(), r#""x\"y""#);
        assert_eq!(render("a:{{ toYaml .Values.t | nindent 2 }}", v.clone()).unwrap(), "a:\n  - key: a\n    operator: Exists");
        assert_eq!(render(r#"{{ toJson (dict "b" 1 "a" "x") }}"#, v.clone()).unwrap(), r#"{"a":"x","b":1}"#);
        assert!(render(r#"{{ include "x" . }}"#, v).is_err(), "outside the subset: an error, not a silent gap");
    }

    #[test]
    fn values_merge_and_set_like_helm() {
        let mut v = serde_json::json!({"cni": {"mode": "multus", "mtu": 0}, "list": [1, 2]});
        merge(&mut v, set_value("cni.mode", "chained"));
        merge(&mut v, set_value("cni.mtu", "1400"));
        merge(&mut v, serde_json::json!({"list": [3]}));
        assert_eq!(v, serde_json::json!({"cni": {"mode": "chained", "mtu": 1400}, "list": [3]}));
    }

    /// The chart's stream proxies (SRv6 pipes): off by default; on, a Deployment in the asked
    /// namespace whose pods ask for the chain network and have CAP_NET_ADMIN and nothing else.
    #[test]
    fn the_chart_deploys_stream_proxies_only_when_asked() {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/srv6pipes").to_string();
        let off = run(vec![chart.clone()]).unwrap();
        assert!(!off.contains("component: stream"), "no proxy unless stream.enabled");
        let args = ["--set", "stream.enabled=true", "--set", "stream.namespace=pipes", "--set", "stream.replicas=3"];
        let on = run(std::iter::once(chart).chain(args.iter().map(|s| s.to_string())).collect()).unwrap();
        let docs: Vec<Json> =
            serde_yaml::Deserializer::from_str(&on).map(|d| <Json as serde::Deserialize>::deserialize(d).unwrap()).collect();
        let d = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "srv6pipes-stream")
            .expect("the proxies' Deployment");
        assert_eq!((d["metadata"]["namespace"].as_str(), d["spec"]["replicas"].as_u64()), (Some("pipes"), Some(3)));
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["app"], "srv6pipes-stream", "chains select the proxies by this label");
        assert_eq!(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"], "srv6pipes");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false, "no credentials");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], format!("localhost/srv6pipes-stream:{}", chart_version()));
        assert_eq!(c["securityContext"]["capabilities"], serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN"]}));
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert!(pod["spec"].get("hostNetwork").is_none() && pod["spec"].get("volumes").is_none(), "nothing of the host");
    }

    fn chart_version() -> String {
        let chart = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/srv6pipes/Chart.yaml")).unwrap();
        let v: Json = serde_yaml::from_str(&chart).unwrap();
        v["appVersion"].as_str().unwrap().to_string()
    }
}
