//! The spec's rules, one test per field group, each naming the field a bad value is refused at.

use super::*;
use crate::error::ErrorCode;
use serde_json::{json, Value};

/// The smallest valid spec; tests change one field at a time.
fn minimal() -> Value {
    json!({
        "name": "web",
        "applicationName": "shop",
        "location": "dc1:2",
        "cpus": 1.0,
        "memory": 512,
        "image": "busybox:latest",
    })
}

/// The minimal spec with `patch` merged in at the top level; a `null` in the patch removes the field.
fn with(patch: Value) -> String {
    let mut spec = minimal();
    let (Value::Object(spec_fields), Value::Object(patch_fields)) = (&mut spec, patch) else {
        panic!("specs and patches are objects");
    };
    for (key, value) in patch_fields {
        if value.is_null() {
            spec_fields.remove(&key);
        } else {
            spec_fields.insert(key, value);
        }
    }
    spec.to_string()
}

fn check(body: &str, format: BodyFormat) -> Result<JobSpec, ApiError> {
    JobSpec::parse(body.as_bytes(), format)
}

#[track_caller]
fn accepts(body: &str) -> JobSpec {
    match check(body, BodyFormat::Json) {
        Ok(spec) => spec,
        Err(e) => panic!("rejected {body}: {e}"),
    }
}

#[track_caller]
fn rejects_as(format: BodyFormat, body: &str, field: &str) -> ApiError {
    match check(body, format) {
        Ok(spec) => panic!("accepted {body}: {spec:?}"),
        Err(e) => {
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidSpec, Some(field)), "{e}");
            e
        }
    }
}

#[track_caller]
fn rejects(body: &str, field: &str) -> ApiError {
    rejects_as(BodyFormat::Json, body, field)
}

#[track_caller]
fn malformed(body: &str, format: BodyFormat) -> ApiError {
    let e = check(body, format).expect_err("a malformed body is rejected");
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::MalformedBody, None), "{e}");
    e
}

const FULL_JSON: &str = r#"{
        "name": "checkout-api",
        "applicationName": "shop_checkout.v2",
        "version": "1.4.2",
        "location": "dc1:20, dc2:40,dc5:60",
        "cpus": 2.5,
        "memory": 4096,
        "disk": 20,
        "ports": 2,
        "restartOnFailure": true,
        "numRetries": 5,
        "restartOnSuccess": false,
        "owner": "checkout-team@example.com",
        "capacityGroup": "shop-critical",
        "image": "registry.example.com/shop/checkout:1.4.2",
        "command": ["/bin/checkout", "--port", "8080"],
        "env": {"LOG_LEVEL": "info", "_PRIVATE": "x"},
        "type": "service",
        "constraints": [
            {"attribute": "zone", "operator": "balanced", "expected": 3},
            {"attribute": "host", "operator": "unique"},
            {"attribute": "instanceType", "operator": "in", "values": ["m5.large", "m5.xlarge"]},
            {"attribute": "zone", "operator": "notEquals", "value": "us-east-1e", "soft": true, "weight": 0.5},
            {"attribute": "rack", "operator": "maxPer", "max": 4}
        ],
        "volumes": [
            {"name": "cache", "path": "/var/cache/checkout", "sizeGib": 10},
            {"name": "ledger", "path": "/data", "sizeGib": 100, "persistent": true, "from": "ledger-seed@daily"}
        ],
        "healthCheck": {
            "type": "http", "path": "/healthz", "port": 0,
            "intervalSeconds": 15, "timeoutSeconds": 3, "gracePeriodSeconds": 60, "failureThreshold": 5
        },
        "disruptionBudget": {"maxUnavailablePercent": 10}
    }"#;

const FULL_YAML: &str = r#"
name: checkout-api
applicationName: shop_checkout.v2
version: "1.4.2"
location: "dc1:20, dc2:40,dc5:60"
cpus: 2.5
memory: 4096
disk: 20
ports: 2
restartOnFailure: true
numRetries: 5
restartOnSuccess: false
owner: checkout-team@example.com
capacityGroup: shop-critical
image: registry.example.com/shop/checkout:1.4.2
command: [/bin/checkout, --port, "8080"]
env:
  LOG_LEVEL: info
  _PRIVATE: x
type: service
constraints:
  - {attribute: zone, operator: balanced, expected: 3}
  - {attribute: host, operator: unique}
  - attribute: instanceType
    operator: in
    values: [m5.large, m5.xlarge]
  - {attribute: zone, operator: notEquals, value: us-east-1e, soft: true, weight: 0.5}
  - {attribute: rack, operator: maxPer, max: 4}
volumes:
  - {name: cache, path: /var/cache/checkout, sizeGib: 10}
  - name: ledger
    path: /data
    sizeGib: 100
    persistent: true
    from: ledger-seed@daily
healthCheck:
  type: http
  path: /healthz
  port: 0
  intervalSeconds: 15
  timeoutSeconds: 3
  gracePeriodSeconds: 60
  failureThreshold: 5
disruptionBudget:
  maxUnavailablePercent: 10
"#;

#[test]
fn a_full_titan_spec_parses_from_json_and_yaml_alike() {
    let spec = accepts(FULL_JSON);
    assert_eq!(spec.name, "checkout-api");
    assert_eq!(spec.application_name, "shop_checkout.v2");
    assert_eq!(spec.version.as_deref(), Some("1.4.2"));
    assert_eq!(spec.locations(), BTreeMap::from([("dc1".into(), 20), ("dc2".into(), 40), ("dc5".into(), 60)]));
    assert_eq!((spec.cpus, spec.memory, spec.disk, spec.ports), (2.5, 4096, 20, 2));
    assert_eq!(spec.job_type, JobType::Service);
    assert_eq!(spec.constraints[3].operator, ConstraintOperator::NotEquals);
    assert_eq!(spec.volumes[1].from.as_deref(), Some("ledger-seed@daily"));
    assert_eq!(spec.health_check.as_ref().map(|h| h.check_type), Some(HealthCheckType::Http));
    assert_eq!(spec.disruption_budget.as_ref().and_then(|b| b.max_unavailable_percent), Some(10));

    let from_yaml = check(FULL_YAML, BodyFormat::Yaml).expect("the YAML twin is valid");
    assert_eq!(from_yaml, spec);
}

#[test]
fn a_spec_survives_a_round_trip_through_json_and_yaml() {
    let spec = accepts(FULL_JSON);
    let json = serde_json::to_vec(&spec).expect("serializable");
    assert_eq!(JobSpec::parse(&json, BodyFormat::Json), Ok(spec.clone()));
    let yaml = serde_yaml::to_string(&spec).expect("serializable");
    assert_eq!(JobSpec::parse(yaml.as_bytes(), BodyFormat::Yaml), Ok(spec.clone()));
    let minimal = accepts(&with(json!({})));
    let json = serde_json::to_vec(&minimal).expect("serializable");
    assert_eq!(JobSpec::parse(&json, BodyFormat::Json), Ok(minimal));
}

#[test]
fn omitted_fields_take_titans_defaults() {
    let spec = accepts(&with(json!({})));
    assert_eq!(spec.disk, DEFAULT_DISK_GIB);
    assert_eq!(spec.ports, DEFAULT_PORTS);
    assert!(spec.restart_on_failure);
    assert_eq!(spec.num_retries, 3);
    assert!(!spec.restart_on_success);
    assert_eq!(spec.job_type, JobType::Service);
    assert_eq!((spec.version, spec.owner, spec.capacity_group, spec.command), (None, None, None, None));
    assert!(spec.env.is_empty() && spec.constraints.is_empty() && spec.volumes.is_empty());
    assert_eq!((spec.health_check, spec.schedule, spec.disruption_budget), (None, None, None));

    let spec = accepts(&with(json!({
        "ports": 1,
        "constraints": [{"attribute": "zone", "operator": "unique"}],
        "volumes": [{"name": "v", "path": "/v", "sizeGib": 1}],
        "healthCheck": {"type": "tcp", "port": 0},
    })));
    assert!(!spec.constraints[0].soft);
    assert_eq!(spec.constraints[0].weight, None);
    assert!(!spec.volumes[0].persistent);
    let check = spec.health_check.expect("given");
    assert_eq!(
        (check.interval_seconds, check.timeout_seconds, check.grace_period_seconds, check.failure_threshold),
        (10, 5, 0, 3)
    );
}

#[test]
fn required_fields_are_named_when_missing() {
    for field in ["name", "applicationName", "cpus", "memory", "image"] {
        rejects(&with(json!({ field: null })), field);
    }
    rejects(&with(json!({"volumes": [{"name": "v", "path": "/v"}]})), "volumes[0].sizeGib");
    rejects(&with(json!({"healthCheck": {"port": 0}})), "healthCheck.type");
    rejects(&with(json!({"constraints": [{"attribute": "zone"}]})), "constraints[0].operator");
}

#[test]
fn unknown_fields_are_named_at_any_depth() {
    rejects(&with(json!({"instances": 3})), "instances");
    rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0, "foo": 1}})), "healthCheck.foo");
    rejects(&with(json!({"volumes": [{"name": "v", "path": "/v", "sizeGib": 1, "ro": true}]})), "volumes[0].ro");
    rejects(
        &with(json!({"disruptionBudget": {"maxUnavailable": 1, "minAvailable": 2}})),
        "disruptionBudget.minAvailable",
    );
    // A field whose name repeats its parent's is still named once per level.
    rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0, "healthCheck": 1}})), "healthCheck.healthCheck");
    let e = rejects_as(BodyFormat::Yaml, "name: web\nwhat: 1\n", "what");
    assert!(e.message.contains("unknown field"), "{e}");
    rejects_as(BodyFormat::Yaml, "name: web\nhealthCheck:\n  type: tcp\n  bar: 1\n", "healthCheck.bar");
}

#[test]
fn a_field_given_twice_is_named() {
    rejects(r#"{"name": "a", "name": "b"}"#, "name");
}

#[test]
fn wrong_types_are_named_by_their_wire_path() {
    rejects(&with(json!({"cpus": "two"})), "cpus");
    rejects(&with(json!({"memory": -1})), "memory");
    rejects(&with(json!({"memory": 1.5})), "memory");
    rejects(&with(json!({"disk": -1})), "disk");
    rejects(&with(json!({"ports": "2"})), "ports");
    rejects(&with(json!({"numRetries": -1})), "numRetries");
    rejects(&with(json!({"restartOnFailure": "yes"})), "restartOnFailure");
    rejects(&with(json!({"type": "daemon"})), "type");
    rejects(&with(json!({"env": {"A": 1}})), "env.A");
    rejects(&with(json!({"command": "sleep 10"})), "command");
    rejects(&with(json!({"constraints": [{"attribute": "zone", "operator": "near"}]})), "constraints[0].operator");
    rejects(&with(json!({"volumes": [{"name": "v", "path": "/v", "sizeGib": -5}]})), "volumes[0].sizeGib");
    rejects(
        &with(json!({"healthCheck": {"type": "tcp", "port": 0, "intervalSeconds": -1}})),
        "healthCheck.intervalSeconds",
    );
    rejects(&with(json!({"name": null, "cpus": 1})), "name");
    rejects_as(BodyFormat::Yaml, "cpus: two\n", "cpus");
    rejects_as(BodyFormat::Yaml, "memory: -1\n", "memory");
}

#[test]
fn a_body_of_the_wrong_shape_has_no_field() {
    for body in ["[]", "\"job\"", "3"] {
        let e = check(body, BodyFormat::Json).expect_err("not an object");
        assert_eq!((e.code, e.field), (ErrorCode::InvalidSpec, None), "{body}");
    }
}

#[test]
fn malformed_bodies_say_where() {
    let e = malformed("{\"name\": \"web\",\n  \"cpus\": }", BodyFormat::Json);
    assert!(e.message.contains("line 2"), "{e}");
    // Cut short after a type error: still the transport's fault, not the spec's.
    malformed(r#"{"cpus": "two", "memory": 5"#, BodyFormat::Json);
    malformed(r#"{"name": "web"} trailing"#, BodyFormat::Json);
    malformed("", BodyFormat::Json);
    malformed("  \n", BodyFormat::Yaml);
    let e = malformed("name: web\n  cpus: [1\n", BodyFormat::Yaml);
    assert!(e.message.contains("line"), "{e}");
    malformed("name: web\n---\nname: other\n", BodyFormat::Yaml);
    malformed("{name: web", BodyFormat::Yaml);
}

#[test]
fn the_shorthand_is_written_as_it_is_read() {
    let counts = BTreeMap::from([("dc1".to_string(), 5), ("dc9".to_string(), 0), ("dc2".to_string(), 4)]);
    assert_eq!(format_location(&counts), "dc1:5,dc2:4,dc9:0");
    assert_eq!(parse_location(&format_location(&counts)), Ok(counts));
}

#[test]
fn deep_bodies_are_refused_before_parsing_in_both_formats() {
    let brackets = "[".repeat(1 << 20);
    for format in [BodyFormat::Json, BodyFormat::Yaml] {
        let e = check(&brackets, format).expect_err("too deep");
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BodyTooComplex, Some("body")), "{format:?}");
        let e = InstancesRequest::parse(brackets.as_bytes(), format).expect_err("too deep");
        assert_eq!(e.code, ErrorCode::BodyTooComplex, "{format:?}");
    }
    check(FULL_YAML, BodyFormat::Yaml).expect("a full spec is well within the bounds");
}

#[test]
fn names_follow_their_charsets() {
    accepts(&with(json!({"name": "a"})));
    accepts(&with(json!({"name": "web-2"})));
    accepts(&with(json!({"name": "a".repeat(MAX_NAME_LEN)})));
    for bad in ["", "Web", "web-", "-web", "web_1", "web.1", "wéb"] {
        rejects(&with(json!({"name": bad})), "name");
    }
    rejects(&with(json!({"name": "a".repeat(MAX_NAME_LEN + 1)})), "name");

    accepts(&with(json!({"applicationName": "shop_checkout.v2-x"})));
    for bad in ["", "Shop", "_shop", "shop.", "shop app"] {
        rejects(&with(json!({"applicationName": bad})), "applicationName");
    }
    rejects(&with(json!({"applicationName": "a".repeat(MAX_NAME_LEN + 1)})), "applicationName");
}

#[test]
fn labels_are_one_line_and_not_empty() {
    rejects(&with(json!({"version": ""})), "version");
    rejects(&with(json!({"version": "1\n2"})), "version");
    rejects(&with(json!({"owner": " "})), "owner");
    rejects(&with(json!({"capacityGroup": "x".repeat(MAX_LABEL_LEN + 1)})), "capacityGroup");
}

#[test]
fn resources_stay_within_limits() {
    accepts(&with(json!({"cpus": 0.25})));
    accepts(&with(json!({"cpus": MAX_CPUS, "memory": MAX_MEMORY_MIB, "disk": MAX_DISK_GIB})));
    accepts(&with(json!({"ports": MAX_PORTS, "numRetries": MAX_RETRIES})));
    for cpus in [json!(0), json!(-1), json!(MAX_CPUS + 0.5)] {
        rejects(&with(json!({ "cpus": cpus })), "cpus");
    }
    rejects(&with(json!({"memory": 0})), "memory");
    rejects(&with(json!({"memory": MAX_MEMORY_MIB + 1})), "memory");
    rejects(&with(json!({"disk": MAX_DISK_GIB + 1})), "disk");
    rejects(&with(json!({"ports": MAX_PORTS + 1})), "ports");
    rejects(&with(json!({"numRetries": MAX_RETRIES + 1})), "numRetries");
}

#[test]
fn cpus_must_be_finite() {
    // JSON cannot say NaN or infinity, YAML can.
    let yaml = |cpus: &str| {
        format!("{{name: web, applicationName: shop, location: 'dc1:1', cpus: {cpus}, memory: 1, image: x}}")
    };
    check(&yaml("0.5"), BodyFormat::Yaml).expect("valid");
    rejects_as(BodyFormat::Yaml, &yaml(".nan"), "cpus");
    rejects_as(BodyFormat::Yaml, &yaml(".inf"), "cpus");
    let mut spec = accepts(&with(json!({})));
    spec.cpus = f64::NAN;
    assert_eq!(spec.validate().expect_err("NaN").field.as_deref(), Some("cpus"));
}

#[test]
fn exactly_one_of_location_and_locations() {
    let spec = accepts(&with(json!({"location": null, "locations": {"dc1": 3, "dc2": 0}})));
    assert_eq!(spec.locations(), BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 0)]));
    rejects(&with(json!({"locations": {"dc1": 3}})), "locations");
    rejects(&with(json!({"location": null})), "location");
    rejects(&with(json!({"location": ""})), "location");
    rejects(&with(json!({"location": "dc1:2,dc1:3"})), "location");
    rejects(&with(json!({"location": null, "locations": {}})), "locations");
    rejects(&with(json!({"location": null, "locations": {"DC1": 1}})), "locations.DC1");
    rejects(&with(json!({"location": null, "locations": {"dc1": -1}})), "locations.dc1");
    rejects(&with(json!({"location": null, "locations": {"dc1": MAX_INSTANCES_PER_LOCATION + 1}})), "locations.dc1");
}

#[test]
fn location_shorthand() {
    let counts = |pairs: &[(&str, u32)]| pairs.iter().map(|&(n, c)| (n.to_owned(), c)).collect::<BTreeMap<_, _>>();
    // Each input with its counts, or a phrase its error must contain.
    type Case<'a> = (&'a str, Result<BTreeMap<String, u32>, &'a str>);
    let cases: &[Case] = &[
        ("dc1:20,dc2:40,dc5:60", Ok(counts(&[("dc1", 20), ("dc2", 40), ("dc5", 60)]))),
        ("dc1=5,dc2=3", Ok(counts(&[("dc1", 5), ("dc2", 3)]))),
        ("  dc1:5 ,\tdc2 = 3  ", Ok(counts(&[("dc1", 5), ("dc2", 3)]))),
        ("dc1:0", Ok(counts(&[("dc1", 0)]))),
        ("us-east-1a:10000", Ok(counts(&[("us-east-1a", MAX_INSTANCES_PER_LOCATION)]))),
        ("dc1:007", Ok(counts(&[("dc1", 7)]))),
        ("", Err("empty")),
        ("   ", Err("empty")),
        ("dc1:5,,dc2:3", Err("item 2")),
        ("dc1:5,", Err("item 2")),
        ("dc1", Err("`dc1` has no count")),
        ("dc1:", Err("non-negative integer")),
        ("dc1:-5", Err("non-negative integer")),
        ("dc1:+5", Err("non-negative integer")),
        ("dc1:2.5", Err("non-negative integer")),
        ("dc1:five", Err("non-negative integer")),
        ("dc1:=5", Err("non-negative integer")),
        ("dc1:10001", Err("more than 10000")),
        ("dc1:99999999999999999999", Err("more than 10000")),
        ("DC1:5", Err("`DC1` is not a location name")),
        (":5", Err("`` is not a location name")),
        ("-dc:5", Err("not a location name")),
        ("dc_1:5", Err("not a location name")),
        ("dc1:5,dc1=6", Err("dc1 appears twice")),
    ];
    for (input, expected) in cases {
        match (parse_location(input), expected) {
            (Ok(got), Ok(want)) => assert_eq!(&got, want, "{input:?}"),
            (Err(got), Err(want)) => {
                assert!(got.contains(want), "{input:?}: {got:?} lacks {want:?}")
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }
    let long = "a".repeat(MAX_LOCATION_NAME_LEN + 1);
    assert!(parse_location(&format!("{long}:1")).is_err());
    let many: Vec<String> = (0..=MAX_LOCATIONS).map(|i| format!("dc{i}:1")).collect();
    assert!(parse_location(&many.join(",")).is_err());
}

#[test]
fn image_command_and_env() {
    rejects(&with(json!({"image": ""})), "image");
    rejects(&with(json!({"image": "busy box"})), "image");
    rejects(&with(json!({"image": "x".repeat(MAX_IMAGE_LEN + 1)})), "image");
    accepts(&with(json!({"command": ["sleep", "10", ""]})));
    rejects(&with(json!({"command": []})), "command");
    rejects(&with(json!({"command": ["", "x"]})), "command[0]");
    rejects(&with(json!({"command": ["sh", "a\u{0}b"]})), "command[1]");
    accepts(&with(json!({"env": {"A": "", "_X1": "y", "lower_case": "z"}})));
    rejects(&with(json!({"env": {"1BAD": "x"}})), "env.1BAD");
    rejects(&with(json!({"env": {"BAD-NAME": "x"}})), "env.BAD-NAME");
    rejects(&with(json!({"env": {"": "x"}})), "env.");
    rejects(&with(json!({"env": {"NUL": "a\u{0}"}})), "env.NUL");
    let too_many: serde_json::Map<String, Value> = (0..=MAX_ENV_VARS).map(|i| (format!("V{i}"), json!("x"))).collect();
    rejects(&with(json!({ "env": too_many })), "env");
}

#[test]
fn schedules_are_for_batch_jobs_and_are_cron() {
    let batch = |schedule: &str| with(json!({"type": "batch", "schedule": schedule}));
    for good in [
        "*/5 * * * *",
        "0 0 * * *",
        "0,30 9-17 * * 1-5",
        "0 0 1 1 0",
        "59 23 31 12 7",
        "0-30/10 */2 1-15/7 * *",
        " 0  12 * * * ",
    ] {
        assert_eq!(accepts(&batch(good)).job_type, JobType::Batch, "{good}");
    }
    accepts(&with(json!({"type": "batch"})));
    rejects(&with(json!({"schedule": "* * * * *"})), "schedule");
    rejects(&with(json!({"type": "service", "schedule": "* * * * *"})), "schedule");
    for bad in [
        "",
        "* * * *",
        "* * * * * *",
        "@daily",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 0 *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "*/61 * * * *",
        "5/10 * * * *",
        "30-10 * * * *",
        "1,,2 * * * *",
        "1, * * * *",
        "a * * * *",
        "-1 * * * *",
        "1-2-3 * * * *",
        "** * * * *",
        "* * * JAN *",
        "99999999999 * * * *",
        "0 0 31 2 *",
    ] {
        rejects(&batch(bad), "schedule");
    }
    rejects(&with(json!({"type": "batch", "overlap": "skip"})), "overlap");
    rejects(&with(json!({"type": "batch", "schedule": "* * * * *", "overlap": "sometimes"})), "overlap");
    let replace = JobSpec::parse(
        with(json!({"type": "batch", "schedule": "* * * * *", "overlap": "replace"})).as_bytes(),
        BodyFormat::Json,
    );
    assert_eq!(replace.map(|s| s.overlap), Ok(Some(OverlapPolicy::Replace)));
}

#[test]
fn constraints_take_the_fields_their_operator_reads() {
    let constraint = |c: Value| with(json!({"constraints": [{"attribute": "zone", "operator": "unique"}, c]}));
    for good in [
        json!({"attribute": "zone", "operator": "equals", "value": "a"}),
        json!({"attribute": "zone", "operator": "notEquals", "value": "a"}),
        json!({"attribute": "zone", "operator": "in", "values": ["a", "b"]}),
        json!({"attribute": "host", "operator": "unique"}),
        json!({"operator": "exclusive"}),
        json!({"attribute": "zone", "operator": "balanced", "expected": 3}),
        json!({"attribute": "host", "operator": "maxPer", "max": 2, "soft": true}),
        json!({"attribute": "ec2.instance-type_x", "operator": "equals", "value": "a", "soft": true, "weight": 2.0}),
    ] {
        accepts(&constraint(good));
    }
    let cases = [
        (json!({"attribute": "zone", "operator": "equals"}), "value"),
        (json!({"attribute": "zone", "operator": "notEquals", "values": ["a"]}), "value"),
        (json!({"attribute": "zone", "operator": "in"}), "values"),
        (json!({"attribute": "zone", "operator": "in", "values": []}), "values"),
        (json!({"attribute": "zone", "operator": "in", "values": ["a"], "value": "a"}), "value"),
        (json!({"attribute": "zone", "operator": "unique", "max": 1}), "max"),
        (json!({"attribute": "zone", "operator": "maxPer"}), "max"),
        (json!({"attribute": "zone", "operator": "maxPer", "max": 0}), "max"),
        (json!({"attribute": "zone", "operator": "balanced"}), "expected"),
        (json!({"attribute": "zone", "operator": "balanced", "expected": 0}), "expected"),
        (json!({"attribute": "zone", "operator": "maxPer", "max": 1, "expected": 1}), "expected"),
        (json!({"operator": "unique"}), "attribute"),
        (json!({"operator": "equals", "value": "a"}), "attribute"),
        (json!({"attribute": "host", "operator": "exclusive"}), "attribute"),
        (json!({"attribute": "zone name", "operator": "unique"}), "attribute"),
        (json!({"attribute": "", "operator": "unique"}), "attribute"),
        (json!({"attribute": "a".repeat(MAX_ATTRIBUTE_LEN + 1), "operator": "unique"}), "attribute"),
        (json!({"attribute": "zone", "operator": "unique", "weight": 1.0}), "weight"),
        (json!({"attribute": "zone", "operator": "unique", "soft": true, "weight": 0.0}), "weight"),
        (json!({"attribute": "zone", "operator": "unique", "soft": true, "weight": -1.0}), "weight"),
    ];
    for (bad, field) in cases {
        rejects(&constraint(bad), &format!("constraints[1].{field}"));
    }
    let many: Vec<Value> = (0..=MAX_CONSTRAINTS).map(|_| json!({"operator": "exclusive"})).collect();
    rejects(&with(json!({ "constraints": many })), "constraints");
    let mut spec = accepts(&constraint(json!({"attribute": "z", "operator": "unique", "soft": true, "weight": 1.0})));
    spec.constraints[1].weight = Some(f64::INFINITY);
    assert_eq!(spec.validate().expect_err("infinite").field.as_deref(), Some("constraints[1].weight"));
}

#[test]
fn volumes_have_unique_names_and_safe_paths() {
    let volumes = |second: Value| with(json!({"volumes": [{"name": "data", "path": "/data", "sizeGib": 1}, second]}));
    accepts(&volumes(
        json!({"name": "logs", "path": "/data/logs", "sizeGib": 1, "persistent": true, "from": "snap-1"}),
    ));
    let cases = [
        (json!({"name": "data", "path": "/other", "sizeGib": 1}), "name"),
        (json!({"name": "Logs", "path": "/logs", "sizeGib": 1}), "name"),
        (json!({"name": "logs", "path": "/data/", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "//data/.", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "logs", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "/logs/../etc", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "/..", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "/", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "", "sizeGib": 1}), "path"),
        (json!({"name": "logs", "path": "/logs", "sizeGib": 0}), "sizeGib"),
        (json!({"name": "logs", "path": "/logs", "sizeGib": MAX_DISK_GIB + 1}), "sizeGib"),
        (json!({"name": "logs", "path": "/logs", "sizeGib": 1, "from": ""}), "from"),
    ];
    for (bad, field) in cases {
        rejects(&volumes(bad), &format!("volumes[1].{field}"));
    }
    let many: Vec<Value> =
        (0..=MAX_VOLUMES).map(|i| json!({"name": format!("v{i}"), "path": format!("/v{i}"), "sizeGib": 1})).collect();
    rejects(&with(json!({ "volumes": many })), "volumes");
}

#[test]
fn health_checks_fit_their_type_and_the_job() {
    let health = |check: Value| with(json!({"ports": 2, "healthCheck": check}));
    for good in [
        json!({"type": "http", "path": "/healthz", "port": 1}),
        json!({"type": "tcp", "port": 0}),
        json!({"type": "command", "command": ["pg_isready"]}),
        json!({"type": "tcp", "port": 0, "intervalSeconds": 3600, "timeoutSeconds": 3600, "gracePeriodSeconds": 3600, "failureThreshold": 100}),
        json!({"type": "tcp", "port": 0, "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}),
    ] {
        accepts(&health(good));
    }
    let cases = [
        (json!({"type": "http", "port": 0}), "path"),
        (json!({"type": "http", "path": "healthz", "port": 0}), "path"),
        (json!({"type": "tcp", "path": "/x", "port": 0}), "path"),
        (json!({"type": "http", "path": "/x"}), "port"),
        (json!({"type": "tcp"}), "port"),
        (json!({"type": "tcp", "port": 2}), "port"),
        (json!({"type": "command", "command": ["x"], "port": 0}), "port"),
        (json!({"type": "command"}), "command"),
        (json!({"type": "command", "command": []}), "command"),
        (json!({"type": "tcp", "port": 0, "command": ["x"]}), "command"),
        (json!({"type": "tcp", "port": 0, "intervalSeconds": 0}), "intervalSeconds"),
        (json!({"type": "tcp", "port": 0, "intervalSeconds": 3601}), "intervalSeconds"),
        (json!({"type": "tcp", "port": 0, "timeoutSeconds": 0}), "timeoutSeconds"),
        (json!({"type": "tcp", "port": 0, "intervalSeconds": 4}), "timeoutSeconds"),
        (json!({"type": "tcp", "port": 0, "gracePeriodSeconds": 3601}), "gracePeriodSeconds"),
        (json!({"type": "tcp", "port": 0, "failureThreshold": 0}), "failureThreshold"),
        (json!({"type": "tcp", "port": 0, "failureThreshold": 101}), "failureThreshold"),
        (json!({"type": "grpc", "port": 0}), "type"),
    ];
    for (bad, field) in cases {
        rejects(&health(bad), &format!("healthCheck.{field}"));
    }
    // A job without dynamic ports has nothing for a tcp check to probe.
    rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0}})), "healthCheck.port");
    rejects(&health(json!({"type": "command", "command": ["", "x"]})), "healthCheck.command[0]");
}

#[test]
fn disruption_budgets_are_a_count_or_a_percentage() {
    let budget = |b: Value| with(json!({ "disruptionBudget": b }));
    accepts(&budget(json!({"maxUnavailable": 1})));
    accepts(&budget(json!({"maxUnavailablePercent": 100})));
    rejects(&budget(json!({})), "disruptionBudget");
    rejects(
        &budget(json!({"maxUnavailable": 1, "maxUnavailablePercent": 5})),
        "disruptionBudget.maxUnavailablePercent",
    );
    rejects(&budget(json!({"maxUnavailable": 0})), "disruptionBudget.maxUnavailable");
    rejects(&budget(json!({"maxUnavailablePercent": 0})), "disruptionBudget.maxUnavailablePercent");
    rejects(&budget(json!({"maxUnavailablePercent": 101})), "disruptionBudget.maxUnavailablePercent");
    rejects(&budget(json!({"maxUnavailable": -1})), "disruptionBudget.maxUnavailable");
}

#[test]
fn a_disconnect_stop_after_is_positive_and_bounded() {
    let disconnect = |d: Value| with(json!({ "disconnect": d }));
    let spec = accepts(&disconnect(json!({"stopAfterSeconds": 30})));
    assert_eq!(spec.disconnect.map(|d| d.stop_after_ms()), Some(30_000));
    assert_eq!(accepts(&with(json!({}))).disconnect, None, "absent: tasks ride out a disconnect");
    accepts(&disconnect(json!({"stopAfterSeconds": MAX_DISCONNECT_STOP_AFTER_SECONDS})));
    let e = rejects(&disconnect(json!({"stopAfterSeconds": 0})), "disconnect.stopAfterSeconds");
    assert!(e.message.contains("1 to 86400"), "{e}");
    rejects(
        &disconnect(json!({"stopAfterSeconds": MAX_DISCONNECT_STOP_AFTER_SECONDS + 1})),
        "disconnect.stopAfterSeconds",
    );
    rejects(&disconnect(json!({"stopAfterSeconds": -5})), "disconnect.stopAfterSeconds");
    rejects(&disconnect(json!({"stopAfterSeconds": 10, "lostAfter": 3})), "disconnect.lostAfter");
}

#[test]
fn the_first_broken_rule_wins_in_field_order() {
    rejects(&with(json!({"name": "Bad", "cpus": -1, "image": ""})), "name");
    rejects(&with(json!({"cpus": -1, "image": ""})), "cpus");
}

#[test]
fn instances_requests() {
    let check = |body: &str, format| InstancesRequest::parse(body.as_bytes(), format);
    let request = check(r#"{"location": "dc1:3, dc2=0"}"#, BodyFormat::Json).expect("valid");
    assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 0)])));
    let request = check(r#"{"locations": {"dc1": 4}}"#, BodyFormat::Json).expect("valid");
    assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 4)])));
    let request = check("locations:\n  dc1: 4\n", BodyFormat::Yaml).expect("valid");
    assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 4)])));

    let cases = [
        (r#"{}"#, ErrorCode::InvalidSpec, Some("location")),
        (r#"{"location": "dc1:1", "locations": {"dc1": 1}}"#, ErrorCode::InvalidSpec, Some("locations")),
        (r#"{"location": "dc1:1,dc1:2"}"#, ErrorCode::InvalidSpec, Some("location")),
        (r#"{"location": 5}"#, ErrorCode::InvalidSpec, Some("location")),
        (r#"{"locations": {"dc1": -1}}"#, ErrorCode::InvalidSpec, Some("locations.dc1")),
        (r#"{"locations": {}}"#, ErrorCode::InvalidSpec, Some("locations")),
        (r#"{"location": "dc1:1", "count": 3}"#, ErrorCode::InvalidSpec, Some("count")),
        (r#"{"location": "#, ErrorCode::MalformedBody, None),
    ];
    for (body, code, field) in cases {
        let e = check(body, BodyFormat::Json).expect_err(body);
        assert_eq!((e.code, e.field.as_deref()), (code, field), "{body}: {e}");
    }
    // counts() holds the rule for requests built in code, not only parsed ones.
    let built = InstancesRequest { location: None, locations: None };
    assert_eq!(built.counts().expect_err("empty").field.as_deref(), Some("location"));
}

#[test]
fn the_openapi_schema_follows_the_wire_names_and_defaults() {
    let schema = serde_json::to_value(<JobSpec as utoipa::PartialSchema>::schema()).expect("serializable");
    let properties = schema["properties"].as_object().expect("an object schema");
    for field in ["applicationName", "restartOnFailure", "type", "healthCheck", "disruptionBudget", "locations"] {
        assert!(properties.contains_key(field), "{field} missing from {schema}");
    }
    let required: BTreeSet<&str> =
        schema["required"].as_array().expect("a list").iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["name", "applicationName", "cpus", "memory", "image"]));
}
