//! The Helm chart (`charts/titan`) under the real tools, without a Kubernetes API server (none can be had here):
//! `helm lint --strict` and `helm template` with the default and the multi-cell values; the manifests validated
//! offline against the Kubernetes API schemas (kubernetes-validate, strict) and the Prometheus Operator's objects
//! checked by shape (their schemas are not Kubernetes'); the objects a cell needs checked one by one; the rendered
//! titan.toml, with the flags the rendered entrypoint derives, read and validated by Titan's own configuration type;
//! the rendered entrypoints run as a real member and a real agent that registers with it; and every values file of
//! `ci/bad-values` refused, naming what is wrong.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_yaml::Value;
use titan_scheduler::config::CellConfig;

/// Where `scripts/deps` installs Helm 4; `TITAN_HELM` names another.
const HELM: &str = "/opt/titan-helm/helm";
/// Where `scripts/deps` installs kubernetes-validate; `TITAN_KUBERNETES_VALIDATE` names another.
const KUBERNETES_VALIDATE: &str = "/opt/titan-kubernetes-validate/bin/kubernetes-validate";
/// The Kubernetes versions the manifests are validated against: the oldest the chart supports (Chart.yaml's
/// kubeVersion) and the newest kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29", "1.37"];
/// The Prometheus Operator's kinds: kubernetes-validate has no schema for them (it says so, and passes them), so
/// their shape is checked here.
const OPERATOR_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/titan");
const MULTI_CELL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/titan/ci/multi-cell-values.yaml");
/// The release is named like the chart, so objects are named `titan`, `titan-peers`, `titan-agent`, ...
const RELEASE: &str = "titan";
const NAMESPACE: &str = "titan";
/// The longest one run of helm, kubernetes-validate, promtool or an entrypoint with stubs may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a member started from the rendered chart has to become ready, and its agent to register.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn tool(env: &str, default: &str, what: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(path.is_file(), "{what} is missing at {}: run scripts/deps to install it", path.display());
    path
}

/// Runs `cmd` to its end, for at most `TOOL_TIMEOUT` (killed and failed past it), and returns what it printed.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}

fn printed(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Helm with a home of its own (cache, configuration, data, no kubeconfig), so no run reads or writes the user's
/// and none reaches a cluster.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Helm {
        Helm { bin: tool("TITAN_HELM", HELM, "helm"), home: tempfile::tempdir().expect("temp dir") }
    }

    fn command(&self) -> Command {
        let home = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-kubeconfig"))
            .env_remove("HELM_KUBECONTEXT")
            .env_remove("HELM_NAMESPACE");
        cmd
    }

    /// `helm template` with these extra arguments (`-f FILE`, `--set K=V`): the manifests, or what helm said.
    fn template(&self, args: &[&str]) -> Result<String, String> {
        let out = run(self.command().args(["template", RELEASE, CHART, "--namespace", NAMESPACE]).args(args));
        match out.status.success() {
            true => Ok(String::from_utf8(out.stdout).expect("helm prints UTF-8")),
            false => Err(printed(&out)),
        }
    }

    fn render(&self, args: &[&str]) -> Rendered {
        let text = self.template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}"));
        Rendered::parse(text)
    }
}

/// The values files the chart is rendered with: the defaults, and the multi-cell example.
fn value_sets() -> [(&'static str, Vec<&'static str>); 2] {
    [("default values", vec![]), ("multi-cell values", vec!["-f", MULTI_CELL])]
}

/// Rendered manifests: the text helm printed and its objects.
struct Rendered {
    text: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn parse(text: String) -> Rendered {
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("helm rendered bad YAML: {e}\n{text}"));
            if !value.is_null() {
                objects.push(value);
            }
        }
        Rendered { text, objects }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"].as_str() == Some(kind)).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self.of_kind(kind).into_iter().filter(|o| name_of(o) == name).collect();
        assert_eq!(found.len(), 1, "want one {kind} {name}, found {}:\n{}", found.len(), self.text);
        found[0]
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The value at a dotted path (`spec.template.spec`, numbers index lists), failing with the path when it is absent.
fn get<'a>(object: &'a Value, path: &str) -> &'a Value {
    let mut at = object;
    for step in path.split('.') {
        at = match step.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[step],
        };
        assert!(!at.is_null(), "{} {} has no {path}", object["kind"].as_str().unwrap_or("?"), name_of(object));
    }
    at
}

fn text<'a>(object: &'a Value, path: &str) -> &'a str {
    get(object, path).as_str().unwrap_or_else(|| panic!("{path} of {} is not a string", name_of(object)))
}

fn list<'a>(object: &'a Value, path: &str) -> &'a Vec<Value> {
    get(object, path).as_sequence().unwrap_or_else(|| panic!("{path} of {} is not a list", name_of(object)))
}

/// The entry of a list of named things (containers, volumes, ports, env) called `name`.
fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items.iter().find(|i| i["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("no {name:?} in {items:?}"))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    named(list(workload, "spec.template.spec.containers"), name)
}

/// A container's plain environment variables (those with a `value`).
fn env_of(container: &Value) -> BTreeMap<String, String> {
    list(container, "env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

fn args_of(container: &Value) -> Vec<String> {
    list(container, "args").iter().map(|a| a.as_str().expect("an argument is a string").to_string()).collect()
}

/// A ConfigMap's entry `key` (keys hold dots, so not through `get`).
fn data<'a>(config_map: &'a Value, key: &str) -> &'a str {
    config_map["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap {} has no {key}", name_of(config_map)))
}

fn config_map_data<'a>(rendered: &'a Rendered, name: &str, key: &str) -> &'a str {
    data(rendered.one("ConfigMap", name), key)
}

/// Files of the chart's `dir` ending in `ext`, sorted.
fn chart_files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(CHART).join(dir))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == ext));
    files.sort();
    files
}

#[test]
fn the_chart_lints_strictly_with_the_default_and_the_multi_cell_values() {
    let helm = Helm::new();
    for (what, args) in value_sets() {
        let out = run(helm.command().args(["lint", "--strict", CHART]).args(&args));
        assert!(out.status.success(), "helm lint --strict with the {what} failed: {}", printed(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}",
            printed(&out)
        );
    }
    // kubeVersion and the oldest version the manifests are validated against stay in step.
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(Path::new(CHART).join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    assert_eq!(chart["kubeVersion"].as_str(), Some(format!(">={}.0-0", KUBERNETES_VERSIONS[0]).as_str()));
}

/// kubernetes-validate, strict, over a file of manifests: its exit status and its report.
fn kubernetes_validate(file: &Path) -> Output {
    let mut cmd = Command::new(tool("TITAN_KUBERNETES_VALIDATE", KUBERNETES_VALIDATE, "kubernetes-validate"));
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["-k", v]);
    }
    run(cmd.arg(file))
}

#[test]
fn the_manifests_validate_against_the_kubernetes_api_schemas() {
    let helm = Helm::new();
    let dir = tempfile::tempdir().expect("temp dir");
    for (what, args) in value_sets() {
        let rendered = helm.render(&args);
        let file = dir.path().join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &rendered.text).expect("write manifests");
        let out = kubernetes_validate(&file);
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "the {what} render does not validate: {}", printed(&out));
        // A kind without a schema is only warned about: every object of Kubernetes' own kinds must have passed
        // against every version, and only the operator's kinds may lack a schema.
        for object in &rendered.objects {
            let kind = text(object, "kind");
            if OPERATOR_KINDS.contains(&kind) {
                continue;
            }
            for v in KUBERNETES_VERSIONS {
                let passed =
                    format!("passed for resource {}/{} against version {v}", kind.to_lowercase(), name_of(object));
                assert!(
                    report.contains(&passed),
                    "{what}: {kind} {} was not validated for {v}:\n{report}",
                    name_of(object)
                );
            }
        }
        for line in report.lines().filter(|l| !l.starts_with("INFO ")) {
            let operator =
                OPERATOR_KINDS.iter().any(|k| line.contains(&format!("schema for kind {k} with api version")));
            assert!(line.starts_with("WARN ") && operator, "{what}: kubernetes-validate says: {line}\n{report}");
        }
        assert!(rendered.objects.len() >= 8, "{what}: only {} objects rendered", rendered.objects.len());
        check_operator_objects(&rendered, what);
    }
}

/// The validator's strictness is real: a field the API does not know, slipped into the rendered StatefulSet, is
/// refused.
#[test]
fn the_schema_validation_refuses_an_unknown_field() {
    let helm = Helm::new();
    let mut rendered = helm.render(&[]);
    let sts = rendered
        .objects
        .iter_mut()
        .find(|o| o["kind"].as_str() == Some("StatefulSet"))
        .expect("a StatefulSet is rendered");
    sts["spec"].as_mapping_mut().expect("spec").insert("replica".into(), 3.into());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.yaml");
    let text: Vec<String> = rendered.objects.iter().map(|o| serde_yaml::to_string(o).expect("YAML")).collect();
    std::fs::write(&file, text.join("---\n")).expect("write manifests");
    let out = kubernetes_validate(&file);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "an unknown field passed: {}", printed(&out));
    assert!(report.contains("statefulset/titan") && report.contains("'replica'"), "{report}");
}

/// ServiceMonitors and the PrometheusRule, by shape: kind and version, each monitor selecting one rendered Service
/// that has its port, and rule groups of named rules with an expression each.
fn check_operator_objects(rendered: &Rendered, what: &str) {
    let services = rendered.of_kind("Service");
    for monitor in rendered.of_kind("ServiceMonitor") {
        assert_eq!(text(monitor, "apiVersion"), "monitoring.coreos.com/v1", "{what}");
        let selector = get(monitor, "spec.selector.matchLabels");
        let chosen: Vec<&&Value> = services.iter().filter(|s| selects(selector, get(s, "metadata.labels"))).collect();
        assert_eq!(chosen.len(), 1, "{what}: ServiceMonitor {} selects {} Services", name_of(monitor), chosen.len());
        let endpoints = list(monitor, "spec.endpoints");
        assert!(!endpoints.is_empty(), "{what}: ServiceMonitor {} has no endpoint", name_of(monitor));
        for endpoint in endpoints {
            named(list(chosen[0], "spec.ports"), text(endpoint, "port"));
            assert_eq!(text(endpoint, "path"), "/metrics");
        }
    }
    for rule in rendered.of_kind("PrometheusRule") {
        assert_eq!(text(rule, "apiVersion"), "monitoring.coreos.com/v1", "{what}");
        let groups = list(rule, "spec.groups");
        assert!(!groups.is_empty(), "{what}: PrometheusRule without groups");
        for group in groups {
            let name = text(group, "name");
            for r in list(group, "rules") {
                let kinds = u8::from(r["alert"].is_string()) + u8::from(r["record"].is_string());
                assert_eq!(kinds, 1, "{what}: group {name}: a rule is an alert or a recording rule: {r:?}");
                assert!(!text(r, "expr").is_empty(), "{what}: group {name}: {r:?}");
            }
        }
    }
}

#[test]
fn a_cell_is_a_statefulset_of_three_members_with_volumes_a_headless_service_and_a_budget() {
    let rendered = Helm::new().render(&[]);
    let sts = rendered.one("StatefulSet", RELEASE);
    assert_eq!(get(sts, "spec.replicas").as_u64(), Some(3));
    // Members find each other before any is ready (a member is ready once the cell has a leader).
    assert_eq!(text(sts, "spec.podManagementPolicy"), "Parallel");
    let pod_labels = get(sts, "spec.template.metadata.labels");
    assert!(selects(get(sts, "spec.selector.matchLabels"), pod_labels));

    let headless = rendered.one("Service", text(sts, "spec.serviceName"));
    assert_eq!(text(headless, "spec.clusterIP"), "None");
    assert_eq!(get(headless, "spec.publishNotReadyAddresses").as_bool(), Some(true));
    assert!(selects(get(headless, "spec.selector"), pod_labels));
    let api = rendered.one("Service", RELEASE);
    assert!(api["spec"]["clusterIP"].is_null(), "the API Service balances over the members");
    assert!(selects(get(api, "spec.selector"), pod_labels));
    assert_eq!(get(named(list(api, "spec.ports"), "http"), "port").as_u64(), Some(7070));

    let claims = list(sts, "spec.volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(name_of(&claims[0]), "data");
    assert_eq!(text(&claims[0], "spec.resources.requests.storage"), "10Gi");
    assert_eq!(list(&claims[0], "spec.accessModes"), &vec![Value::from("ReadWriteOnce")]);

    let member = container(sts, "titan");
    assert_eq!(text(named(list(member, "volumeMounts"), "data"), "mountPath"), "/var/lib/titan");
    assert_eq!(get(named(list(member, "ports"), "http"), "containerPort").as_u64(), Some(7070));
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(text(member, &format!("{probe}.httpGet.path")), path);
        assert_eq!(text(member, &format!("{probe}.httpGet.port")), "http");
    }
    assert!(get(member, "resources.requests").as_mapping().is_some_and(|r| !r.is_empty()));
    let env = env_of(member);
    let hosts: Vec<String> = (0..3).map(|i| format!("titan-{i}.titan-peers.titan.svc.cluster.local")).collect();
    assert_eq!(env["MEMBER_HOSTS"], hosts.join(" "));
    assert_eq!(env["TITAN_CONFIG"], "/etc/titan/titan.toml");
    let downward: Vec<&str> = list(member, "env")
        .iter()
        .filter(|e| !e["valueFrom"]["fieldRef"].is_null())
        .map(|e| text(e, "valueFrom.fieldRef.fieldPath"))
        .collect();
    assert_eq!(downward, ["metadata.name", "status.podIP"]);

    // A member runs unprivileged, read-only, as a non-root user; no API token.
    assert_eq!(get(sts, "spec.template.spec.securityContext.runAsNonRoot").as_bool(), Some(true));
    assert_eq!(get(member, "securityContext.allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(get(member, "securityContext.readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(list(member, "securityContext.capabilities.drop"), &vec![Value::from("ALL")]);
    assert_eq!(get(sts, "spec.template.spec.automountServiceAccountToken").as_bool(), Some(false));

    let budget = rendered.one("PodDisruptionBudget", RELEASE);
    assert_eq!(get(budget, "spec.maxUnavailable").as_u64(), Some(1));
    assert!(selects(get(budget, "spec.selector.matchLabels"), pod_labels));

    // The Prometheus Operator's objects are off by default (their CRDs may not be installed).
    for kind in OPERATOR_KINDS {
        assert!(rendered.of_kind(kind).is_empty(), "{kind} rendered by default");
    }
}

#[test]
fn agents_are_a_privileged_daemonset_on_the_docker_socket() {
    let helm = Helm::new();
    for (what, args) in value_sets() {
        let rendered = helm.render(&args);
        let agents = rendered.one("DaemonSet", "titan-agent");
        let pod = get(agents, "spec.template.spec");
        assert_eq!(get(pod, "hostNetwork").as_bool(), Some(true), "{what}");
        assert_eq!(text(pod, "dnsPolicy"), "ClusterFirstWithHostNet", "{what}");
        let agent = container(agents, "agent");
        assert_eq!(get(agent, "securityContext.privileged").as_bool(), Some(true), "{what}");
        let socket = named(list(pod, "volumes"), "docker-socket");
        assert_eq!(text(socket, "hostPath.path"), "/var/run/docker.sock", "{what}");
        assert_eq!(text(socket, "hostPath.type"), "Socket", "{what}");
        assert_eq!(text(named(list(agent, "volumeMounts"), "docker-socket"), "mountPath"), "/var/run/docker.sock");
        // The data directory is the same path on the node and inside, for the Docker engine's bind mounts.
        assert_eq!(text(named(list(pod, "volumes"), "data"), "hostPath.path"), "/var/lib/titan-agent");
        assert_eq!(text(named(list(agent, "volumeMounts"), "data"), "mountPath"), "/var/lib/titan-agent");
        assert_eq!(text(agent, "livenessProbe.httpGet.path"), "/healthz");
        let args = args_of(agent);
        let members: Vec<String> =
            (0..3).map(|i| format!("titan-{i}.titan-peers.titan.svc.cluster.local:7070")).collect();
        assert!(args.contains(&format!("--cell-addr={}", members.join(","))), "{what}: {args:?}");
        assert!(args.contains(&"--runtime=docker".to_string()), "{what}: {args:?}");
        let zfs = args.iter().any(|a| a.starts_with("--zfs-parent"));
        let volumes = list(pod, "volumes");
        if what == "default values" {
            assert!(!zfs && volumes.iter().all(|v| v["name"] != "dev-zfs"), "ZFS is off by default: {args:?}");
        } else {
            assert!(args.contains(&"--zfs-parent=tank/titan".to_string()), "{args:?}");
            assert_eq!(text(named(volumes, "dev-zfs"), "hostPath.path"), "/dev/zfs");
            let mounts = named(list(agent, "volumeMounts"), "zfs-mounts");
            assert_eq!(text(mounts, "mountPath"), "/tank/titan");
            assert_eq!(text(mounts, "mountPropagation"), "Bidirectional");
            for attr in ["--attr=zone=us-east-1a", "--attr=instanceGroup=general-m5", "--ports=31000-31999"] {
                assert!(args.contains(&attr.to_string()), "{attr} not in {args:?}");
            }
            assert_eq!(env_of(agent)["AGENT_EC2_INSTANCE_ID"], "true");
        }
    }
}

#[test]
fn every_dashboard_is_a_config_map_labelled_for_grafana() {
    let dashboards = chart_files("dashboards", "json");
    assert!(!dashboards.is_empty(), "charts/titan/dashboards/ has no *.json dashboard");
    let rendered = Helm::new().render(&[]);
    let labelled: Vec<&Value> = rendered
        .of_kind("ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"))
        .collect();
    assert_eq!(labelled.len(), dashboards.len(), "one labelled ConfigMap per dashboard file");
    for file in &dashboards {
        let key = file.file_name().and_then(|n| n.to_str()).expect("a file name");
        let holding: Vec<&&Value> = labelled.iter().filter(|c| !c["data"][key].is_null()).collect();
        assert_eq!(holding.len(), 1, "{key} is in {} ConfigMaps", holding.len());
        let entries = holding[0]["data"].as_mapping().expect("data");
        assert_eq!(entries.len(), 1, "{key}'s ConfigMap holds one dashboard");
        let shipped: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read dashboard")).expect("dashboard JSON");
        let carried: serde_json::Value = serde_json::from_str(data(holding[0], key)).expect("the ConfigMap holds JSON");
        assert_eq!(carried, shipped, "{key} reaches Grafana unchanged");
    }
}

#[test]
fn the_prometheus_rule_carries_every_rule_group_and_promtool_accepts_them() {
    let files = chart_files("rules", "yaml");
    let mut shipped = Vec::new();
    for file in &files {
        let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(file).expect("read rules")).expect("rules YAML");
        if doc.get("rule_files").is_none() {
            shipped.extend(list(&doc, "groups").iter().cloned());
        }
    }
    assert!(!shipped.is_empty(), "charts/titan/rules/ has no rule group");
    let rendered = Helm::new().render(&["-f", MULTI_CELL]);
    let rules = rendered.one("PrometheusRule", RELEASE);
    assert_eq!(text(rules, "metadata.labels.release"), "prometheus", "the ruleSelector's labels");
    let groups = list(rules, "spec.groups");
    let summary = |groups: &[Value]| -> Vec<(String, Vec<String>)> {
        groups
            .iter()
            .map(|g| {
                let rules = list(g, "rules")
                    .iter()
                    .map(|r| format!("{:?} {:?} {}", r["alert"].as_str(), r["record"].as_str(), text(r, "expr")))
                    .collect();
                (text(g, "name").to_string(), rules)
            })
            .collect()
    };
    assert_eq!(summary(groups), summary(&shipped), "every group and rule of rules/*.yaml, unchanged");
    // The rendered groups are still a rule file Prometheus loads.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered-rules.yaml");
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("groups".into(), Value::Sequence(groups.clone()));
    std::fs::write(&file, serde_yaml::to_string(&doc).expect("YAML")).expect("write rules");
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&file));
    assert!(out.status.success(), "promtool check rules on the rendered PrometheusRule: {}", printed(&out));
}

/// Writes an executable script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    let mut perms = std::fs::metadata(path).expect("script").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(path, perms).expect("chmod");
}

/// The rendered member entrypoint, run as pod `titan-1` of three with a stand-in for `titan` (prints its arguments)
/// and a PATH of nothing else, so it resolves no name: the flags it derives.
fn member_flags(rendered: &Rendered, pod_ip: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("member.sh"), config_map_data(rendered, "titan-scripts", "member.sh")).expect("w");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    script(&bin.join("titan"), "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n");
    let member = container(rendered.one("StatefulSet", RELEASE), "titan");
    let out = run(Command::new("/bin/sh")
        .arg(dir.path().join("member.sh"))
        .env_clear()
        .envs(env_of(member))
        .env("POD_NAME", "titan-1")
        .env("POD_IP", pod_ip)
        .env("PATH", &bin));
    assert!(out.status.success(), "member.sh failed: {}", printed(&out));
    let args: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(args.first().map(String::as_str), Some("server"), "member.sh runs `titan server`: {args:?}");
    let flags: BTreeMap<String, String> = args[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    assert_eq!(flags.len() * 2, args.len() - 1, "flags and values in pairs: {args:?}");
    flags
}

/// The rendered titan.toml, with the flags a member adds, read by Titan's own configuration type (every section
/// refuses unknown keys) and validated by its rules.
fn titan_config(rendered: &Rendered, flags: &BTreeMap<String, String>) -> CellConfig {
    let toml_text = config_map_data(rendered, "titan-config", "titan.toml");
    let mut table: toml::Table =
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("titan.toml is not TOML: {e}\n{toml_text}"));
    let node_id: i64 = flags["--node-id"].parse().expect("a numeric --node-id");
    table.insert("node_id".into(), node_id.into());
    table.insert("listen".into(), flags["--listen"].clone().into());
    table.insert("advertise".into(), flags["--advertise"].clone().into());
    let mut config: CellConfig = toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e| panic!("Titan refuses the rendered titan.toml: {e}\n{toml_text}"));
    config.peers = titan_scheduler::parse_peers(&flags["--peers"]).expect("--peers parses as Titan parses it");
    if let Err(e) = config.validate() {
        panic!("Titan refuses the rendered configuration: {e}\n{toml_text}\n{flags:?}");
    }
    config
}

#[test]
fn the_rendered_configuration_and_entrypoint_make_a_member_titan_accepts() {
    let helm = Helm::new();
    for (what, args) in value_sets() {
        let rendered = helm.render(&args);
        // Members are known by their stable DNS names through the headless Service, whatever their pod IPs, and
        // listen on every address of the pod in its own family.
        let name = |i: u32| format!("titan-{i}.titan-peers.titan.svc.cluster.local:7070");
        let peers = format!("1={},2={},3={}", name(0), name(1), name(2));
        for (pod_ip, listen) in [("10.0.0.2", "0.0.0.0:7070"), ("fd00::2", "[::]:7070")] {
            let flags = member_flags(&rendered, pod_ip);
            assert_eq!(flags["--node-id"], "2", "{what}: pod titan-1 is member 2");
            assert_eq!(flags["--listen"], listen, "{what}");
            assert_eq!(flags["--advertise"], name(1), "{what}");
            assert_eq!(flags["--peers"], peers, "{what}");
            let config = titan_config(&rendered, &flags);
            assert_eq!(config.cell, "dc1");
            assert_eq!(config.data_dir, PathBuf::from("/var/lib/titan"));
            assert_eq!(config.advertised(), config.peers[&2], "{what}");
        }
    }
    // The multi-cell values reach Titan's settings.
    let rendered = helm.render(&["-f", MULTI_CELL]);
    let config = titan_config(&rendered, &member_flags(&rendered, "10.0.0.2"));
    assert_eq!(config.raft.heartbeat_ms, 150);
    assert_eq!(config.scheduler.breaker_fraction, 0.25);
    assert_eq!(config.federation.cells.keys().collect::<Vec<_>>(), ["dc2", "dc3"]);
    assert_eq!(config.federation.cells["dc2"].len(), 3);
    assert_eq!(config.federation.cells["dc3"][0].as_str(), "titan.dc3.example.com:7070", "a cell by DNS name");
    assert!(config.federation.failover.enabled);
    let groups: Vec<(&str, titan_autoscaler::config::FleetKind)> =
        config.autoscaler.groups.iter().map(|g| (g.name.as_str(), g.fleet)).collect();
    use titan_autoscaler::config::FleetKind::Ec2;
    assert_eq!(groups, [("general-m5", Ec2), ("batch-c5", Ec2)]);
    assert_eq!(config.autoscaler.groups[0].asg.as_deref(), Some("titan-dc1-general-m5"));
    assert!(matches!(config.autoscaler.groups[0].policy, titan_autoscaler::policy::PolicyConfig::Hybrid(_)));
    let member = container(rendered.one("StatefulSet", RELEASE), "titan");
    let secret: Vec<&str> = list(member, "env")
        .iter()
        .filter(|e| !e["valueFrom"]["secretKeyRef"].is_null())
        .map(|e| text(e, "valueFrom.secretKeyRef.name"))
        .collect();
    assert_eq!(secret, ["titan-aws"; 3], "AWS keys from the credentials Secret");
    assert_eq!(env_of(member)["AWS_REGION"], "us-east-1");
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status code of `GET path` on a loopback port, if anything answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    Some((status, answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

fn wait_for(what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !done() {
        if Instant::now() > deadline {
            panic!("{what} within {START_TIMEOUT:?}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts a rendered entrypoint from `dir`, with the real `titan` first on the PATH, logging to `log`.
fn start(dir: &Path, entrypoint: &str, env: BTreeMap<String, String>, args: &[String], log: &Path) -> Running {
    let titan = Path::new(env!("CARGO_BIN_EXE_titan")).parent().expect("the binary's directory");
    let path = format!("{}:{}", titan.display(), std::env::var("PATH").unwrap_or_default());
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new("/bin/sh")
        .arg(dir.join(entrypoint))
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {entrypoint}: {e}"));
    Running(child)
}

#[test]
fn the_rendered_entrypoints_start_a_member_and_an_agent_that_registers_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, agent_port) = (common::free_port(), common::free_port());
    let data = dir.path().join("member-data");
    let agent_data = dir.path().join("agent-data");
    let sets = [
        "cell.replicas=1".to_string(),
        format!("cell.port={port}"),
        format!("cell.dataDir={}", data.display()),
        "agent.runtime=process".to_string(),
        format!("agent.port={agent_port}"),
        format!("agent.dataDir={}", agent_data.display()),
        "agent.attributes.zone=rack-7".to_string(),
    ];
    // The multi-cell values, less what would reach beyond this machine: other cells, AWS, ZFS, EC2's metadata.
    let mut values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(MULTI_CELL).expect("read values")).expect("values YAML");
    let top = values.as_mapping_mut().expect("values are a map");
    top.remove("autoscaler");
    top.remove("aws");
    values["federation"].as_mapping_mut().expect("federation").remove("cells");
    values["agent"]["ec2InstanceId"] = false.into();
    // Tokens off here: the agent started below has no token of a node to present (`auth` is rendered and parsed
    // by the other tests).
    values.as_mapping_mut().expect("values are a map").remove("auth");
    values["agent"].as_mapping_mut().expect("agent").remove("tokenSecret");
    values["agent"]["zfs"]["parent"] = "".into();
    let local = dir.path().join("local-values.yaml");
    std::fs::write(&local, serde_yaml::to_string(&values).expect("YAML")).expect("write values");
    let mut args = vec!["-f", local.to_str().expect("a UTF-8 path")];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let rendered = Helm::new().render(&args);
    for (key, name) in [("member.sh", "member.sh"), ("agent.sh", "agent.sh")] {
        std::fs::write(dir.path().join(name), config_map_data(&rendered, "titan-scripts", key)).expect("write");
    }
    let config = dir.path().join("titan.toml");
    std::fs::write(&config, config_map_data(&rendered, "titan-config", "titan.toml")).expect("write config");

    let mut env = env_of(container(rendered.one("StatefulSet", RELEASE), "titan"));
    env.insert("POD_NAME".into(), "titan-0".into());
    env.insert("POD_IP".into(), "127.0.0.1".into());
    env.insert("TITAN_CONFIG".into(), config.display().to_string());
    let member_log = dir.path().join("member.log");
    let _member = start(dir.path(), "member.sh", env, &[], &member_log);
    wait_for("the member did not become ready", &member_log, || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    // Ready although its advertised name does not resolve here: a cell of one member never calls itself.
    let logged = std::fs::read_to_string(&member_log).unwrap_or_default();
    let advertised = format!("titan-0.titan-peers.titan.svc.cluster.local:{port}");
    let expected = format!("member 1 listening on 0.0.0.0:{port} as {advertised}, peers 1={advertised}");
    assert!(logged.contains(&expected), "{logged}");

    // The agent with the rendered arguments, but the member's loopback address for the cell's: the members' DNS
    // names through the headless Service do not resolve outside Kubernetes.
    let agents = rendered.one("DaemonSet", "titan-agent");
    let agent = container(agents, "agent");
    let mut agent_args = args_of(agent);
    let cell_addr = agent_args.iter_mut().find(|a| a.starts_with("--cell-addr=")).expect("--cell-addr");
    *cell_addr = format!("--cell-addr=127.0.0.1:{port}");
    let mut env = env_of(agent);
    env.insert("HOST_IP".into(), "127.0.0.1".into());
    let agent_log = dir.path().join("agent.log");
    let _agent = start(dir.path(), "agent.sh", env, &agent_args, &agent_log);
    wait_for("the agent did not answer /healthz", &agent_log, || {
        http_get(agent_port, "/healthz").is_some_and(|(status, _)| status == 200)
    });
    wait_for("the agent did not register with its attributes", &agent_log, || {
        let Some((200, body)) = http_get(port, "/v1/agents") else { return false };
        let agents: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        agents.as_array().is_some_and(|all| {
            all.iter().any(|a| {
                a["addr"] == format!("127.0.0.1:{agent_port}")
                    && a["attributes"]["zone"] == "rack-7"
                    && a["attributes"]["instanceGroup"] == "general-m5"
            })
        })
    });
}

#[test]
fn values_that_break_the_schema_are_refused_naming_the_setting() {
    let helm = Helm::new();
    let files = chart_files("ci/bad-values", "yaml");
    assert!(files.len() >= 3, "ci/bad-values has {} files", files.len());
    for file in &files {
        // `# expect: MESSAGE`, a rule of values.schema.json, which helm template and helm lint both apply; or
        // `# expect from a template: MESSAGE`, a rule across settings that a template's `fail` applies (helm 4's
        // lint only logs those).
        let body = std::fs::read_to_string(file).expect("read values");
        let (expect, schema) = body
            .lines()
            .find_map(|l| {
                let schema = l.strip_prefix("# expect: ").map(|e| (e, true));
                schema.or_else(|| l.strip_prefix("# expect from a template: ").map(|e| (e, false)))
            })
            .unwrap_or_else(|| panic!("{} has no `# expect: ` line", file.display()));
        let path = file.to_str().expect("a UTF-8 path");
        match helm.template(&["-f", path]) {
            Ok(_) => panic!("helm template accepted {}", file.display()),
            Err(said) => assert!(said.contains(expect), "{}: want {expect:?} in:\n{said}", file.display()),
        }
        if schema {
            let out = run(helm.command().args(["lint", "--strict", CHART, "-f", path]));
            assert!(!out.status.success(), "helm lint accepted {}: {}", file.display(), printed(&out));
            assert!(printed(&out).contains(expect), "{}: want {expect:?} from lint: {}", file.display(), printed(&out));
        }
    }
    // The same from the command line: a wrong type, and a count of members Raft cannot use.
    for (set, expect) in [
        ("cell.port=http", "at '/cell/port': got string, want integer"),
        ("cell.replicas=4", "at '/cell/replicas': value must be one of 1, 3, 5"),
        ("agent.dockersocket=/x", "at '/agent': additional properties 'dockersocket' not allowed"),
    ] {
        let said = helm.template(&["--set", set]).expect_err(set);
        assert!(said.contains(expect), "--set {set}: want {expect:?} in:\n{said}");
    }
}
