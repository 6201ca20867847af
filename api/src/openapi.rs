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
        freeze,
        unfreeze,
        evacuate,
        restore,
        set_weight,
        endpoints
    ),
    components(schemas(
        crate::error::ApiError,
        crate::error::ErrorCode,
        crate::view::JobState,
        crate::task::TaskState
    ))
)]
struct Doc;

pub fn document() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
