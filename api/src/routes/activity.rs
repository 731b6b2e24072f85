//! `GET /v1/admin/activity`: accepted and decided orders per second over
//! the last minutes, for the operations console. Read from this instance's
//! in-memory series (`crate::activity`), which counts the whole
//! deployment: cheap enough to poll every second during a sale.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::activity::SECONDS_MAX;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Shortest series answered, in seconds.
pub const SECONDS_MIN: usize = 10;
/// The series' length when `seconds` is not given.
pub const SECONDS_DEFAULT: usize = 300;

/// The activity route, with its OpenAPI operation.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(activity))
}

/// One second of the series.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ActivityPoint)]
pub struct Point {
    /// The second's start, RFC 3339 to the second.
    #[schema(example = "2026-11-22T10:00:09Z")]
    at: DateTime<Utc>,
    /// Orders queued and answered `202` in this second, by any API instance.
    #[schema(minimum = 0)]
    accepted: u64,
    /// Orders decided (reserved, confirmed or rejected) in this second, by
    /// the decision's time.
    #[schema(minimum = 0)]
    decided: u64,
}

/// Accepted and decided orders per second.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = Activity,
    examples(json!({"interval_secs": 1, "points": [
        {"at": "2026-11-22T10:00:08Z", "accepted": 1840, "decided": 1795},
        {"at": "2026-11-22T10:00:09Z", "accepted": 2012, "decided": 2050}]}))
)]
pub struct Series {
    /// Seconds per point: always 1.
    #[schema(minimum = 1, maximum = 1)]
    interval_secs: u32,
    /// Exactly `seconds` points, one per whole second, oldest first,
    /// ending with the last complete second; seconds without orders are 0.
    points: Vec<Point>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/activity",
    operation_id = "getAdminActivity",
    tag = "admin",
    summary = "Accepted and decided orders per second",
    description = "Requires the `admin` role. Orders accepted (queued and answered `202`) and decided (reserved, confirmed or rejected; an order cancelled while pending is not counted) per second, over the whole deployment, for watching a sale: cheap to poll every second, it reads no table.\n\n\
It is an **approximation**, built by every API instance from the events it receives: each instance counts the decisions the workers announce, and publishes its accepted orders once a second to the other instances. A lost event or sample undercounts, and an API instance counts only since it started (a series reaching back before that reads 0 there). A sample from an instance whose clock runs ahead more than 30 s is counted in the current second. The exact counts are in PostgreSQL (the orders, `GET /v1/admin/stats`) and in the Prometheus counters (`checkline_orders_accepted_total` of each API instance, `checkline_worker_decisions_total` of each worker).",
    security(("bearerAuth" = [])),
    params(
        ("seconds" = Option<i64>, Query, minimum = 10, maximum = 600,
            description = "Length of the series in seconds (default 300); anything else is `400 invalid_request`."),
    ),
    responses(
        (status = 200, description = "The last `seconds` complete seconds, oldest first.", body = Series),
        (status = 400, response = crate::openapi::InvalidRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn activity(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Series>, ApiError> {
    caller.require_admin()?;
    let seconds = seconds(&query)?;
    let points = state
        .activity
        .series(seconds)
        .into_iter()
        .map(|second| Point {
            at: DateTime::from_timestamp(second.at, 0).unwrap_or_default(),
            accepted: second.counts.accepted,
            decided: second.counts.decided,
        })
        .collect();
    Ok(Json(Series {
        interval_secs: 1,
        points,
    }))
}

/// `seconds`, the only query parameter: 10 to 600, by default 300.
fn seconds(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    let mut seconds = SECONDS_DEFAULT;
    for (name, value) in query {
        if name != "seconds" {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {name:?}"
            )));
        }
        seconds = value
            .parse::<usize>()
            .ok()
            .filter(|s| (SECONDS_MIN..=SECONDS_MAX).contains(s))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "seconds must be an integer from {SECONDS_MIN} to {SECONDS_MAX}"
                ))
            })?;
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemCode;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn seconds_is_10_to_600_and_300_by_default() {
        assert_eq!(seconds(&query(&[])).unwrap(), 300);
        assert_eq!(seconds(&query(&[("seconds", "10")])).unwrap(), 10);
        assert_eq!(seconds(&query(&[("seconds", "600")])).unwrap(), 600);
        for bad in [
            [("seconds", "9")],
            [("seconds", "601")],
            [("seconds", "-1")],
            [("seconds", "1.5")],
            [("seconds", "")],
            [("minutes", "5")],
        ] {
            assert_eq!(
                seconds(&query(&bad)).unwrap_err().code(),
                ProblemCode::InvalidRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_point_is_a_whole_second_in_rfc_3339() {
        let point = Point {
            at: DateTime::from_timestamp(1_800_000_009, 0).unwrap(),
            accepted: 2,
            decided: 1,
        };
        assert_eq!(
            serde_json::to_value(point).unwrap(),
            serde_json::json!({"at": "2027-01-15T08:00:09Z", "accepted": 2, "decided": 1})
        );
    }
}
