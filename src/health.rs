//! What `GET /healthz` and `GET /readyz` report: liveness, and readiness to serve.
//!
//! `/healthz` says only that the process answers HTTP (a worker took the request). `/readyz` says
//! whether this instance should get traffic: its database answers on the worker's read
//! connection and has the schema version this binary brings. It also reports what wxauth already
//! knows about WeChat, from the last call it made and its access-token cache, but WeChat's state
//! never makes wxauth unready (the endpoints that need no WeChat still work) and a probe never
//! calls WeChat, so probes cannot be used to spend WeChat's quota or wxauth's in-flight calls.
//! No HTTP here: the router turns these answers into responses.

use serde_json::{Value, json};

use crate::metrics::METRICS;
use crate::store::Connection;
use crate::wechat::{AccessTokenState, WeChat};

/// The answer of `/readyz`: ready or not, why not, and the JSON body.
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    /// Why not, for the access log.
    pub(crate) reason: Option<String>,
    pub(crate) body: Value,
}

/// `GET /healthz`.
pub(crate) fn health() -> Value {
    json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })
}

/// `GET /readyz`, checked on the worker's read connection `db` at `now` (Unix seconds).
pub(crate) fn readiness(db: &Connection, wechat: &WeChat, demo: bool, now: i64) -> Readiness {
    let expected = crate::store::current_version();
    let (database, reason) = match crate::store::schema_version(db) {
        Ok(version) if version == expected => {
            (json!({ "ok": true, "schema_version": version }), None)
        }
        Ok(version) => (
            json!({ "ok": false, "schema_version": version, "expected_schema_version": expected }),
            Some(format!("database schema version {version}, this binary needs {expected}")),
        ),
        // SQLite's messages name no values we bound (see error.rs), so they may be shown.
        Err(error) => (json!({ "ok": false }), Some(format!("database does not answer: {error}"))),
    };
    let last_call = METRICS.last_wechat_call().map(|call| {
        json!({
            "api": call.api,
            "outcome": call.outcome.name(),
            "reachable": call.outcome.answered(),
            "seconds_ago": (now - call.at).max(0),
        })
    });
    let access_token = match wechat.access_token_state() {
        AccessTokenState::Cached => "cached",
        AccessTokenState::Missing => "none",
        AccessTokenState::Refreshing => "refreshing",
    };
    let ready = reason.is_none();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": database,
        "wechat": {
            "mode": if demo { "demo" } else { "wechat" },
            "last_call": last_call,
            "access_token": access_token,
        },
    });
    if let (Some(reason), Some(object)) = (&reason, body.as_object_mut()) {
        object.insert("reason".into(), reason.clone().into());
    }
    Readiness { ready, reason, body }
}
