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
        endpoints
    ),
    components(schemas(
        crate::error::ApiError,
        crate::error::ErrorCode,
        crate::view::JobState,
        crate::task::TaskState,
        crate::location::LeverKind
    ))
)]
struct Doc;

pub fn document() -> utoipa::openapi::OpenApi {
    Doc::openapi()
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
