//! The OpenAPI document, generated from the wire types and the handlers' annotations.

use utoipa::OpenApi;

use crate::router::paths::*;

#[derive(OpenApi)]
#[openapi(
    info(title = "Titan", description = "A multi-region container scheduler: one cell's REST API."),
    paths(
        submit_job,
        list_jobs,
        get_job,
        job_history,
        update_job,
        set_instances,
        enable_job,
        disable_job,
        kill_job,
        cluster,
        add_member,
        remove_member,
        cells,
        autoscaler,
        ready,
        register_agent,
        heartbeat,
        list_agents,
        get_agent,
        assignments,
        drain_agent,
        enable_agent,
        report_status,
        events,
        list_tasks,
        task_logs,
        get_task,
        kill_task,
        list_quotas,
        get_quota,
        put_quota,
        delete_quota,
        list_locations,
        get_location,
        pull_lever,
        set_weight,
        endpoints,
        create_token,
        list_tokens,
        get_token,
        revoke_token
    ),
    components(schemas(
        crate::error::ApiError,
        crate::error::ErrorCode,
        crate::view::JobState,
        crate::task::TaskState,
        crate::location::LeverKind,
        crate::acl::Role
    ))
)]
struct Doc;

/// The name of the bearer scheme in the document.
pub const BEARER: &str = "bearer";

/// The document, with the bearer scheme declared on every operation that needs a token (`acl::rule`).
pub fn document() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
    let mut doc = Doc::openapi();
    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some("an API token's secret (`titan acl token create`): `Authorization: Bearer <secret>`"))
        .build();
    doc.components.get_or_insert_with(Default::default).add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
        ] {
            let Some(op) = op.as_mut() else { continue };
            if crate::acl::rule(method, path) != Some(crate::acl::Access::Public) {
                op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                let responses = &mut op.responses.responses;
                for (status, what) in [
                    ("401", "no token, or a malformed, unknown, expired or revoked one"),
                    ("403", "the token's role, applications or agent do not allow this"),
                    ("429", "too many bad tokens from this address"),
                ] {
                    responses.entry(status.to_string()).or_insert_with(|| {
                        utoipa::openapi::ResponseBuilder::new()
                            .description(what)
                            .content(
                                "application/json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError")))
                                    .build(),
                            )
                            .into()
                    });
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    /// Every `$ref` in `value`, recursively.
    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_the_document_refers_to_is_in_it() {
        let doc = serde_json::to_value(super::document()).expect("the document serializes");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is not a schema"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r} is referred to but not defined");
        }
    }
}
