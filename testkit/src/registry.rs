//! TEST DOUBLE — a minimal Confluent-compatible schema registry, served on a
//! random loopback port. No real registry server can run on the development
//! machines; production uses the Confluent Schema Registry (docker-compose.yml).
//!
//! Serves what the client library and `orderflow schemas` use: register a
//! version, schema by id, a subject's latest or numbered version, and a
//! BACKWARD compatibility check. `set_down(true)` answers 503 to everything,
//! as a registry does while it restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

#[derive(Default)]
struct Inner {
    /// Schema texts; id = index + 1.
    schemas: Vec<String>,
    /// Subject -> schema ids, version = index + 1.
    subjects: HashMap<String, Vec<u32>>,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

pub struct RegistryDouble {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryDouble {
    pub async fn start() -> RegistryDouble {
        let shared = Shared::default();
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(by_id))
            .route(
                "/compatibility/subjects/{subject}/versions",
                post(compatibility),
            )
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post(compatibility_version),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RegistryDouble { url, shared, task }
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Registers `schema` under `subject` without any compatibility check
    /// (as a registry with compatibility NONE would); returns its id.
    pub fn force_register(&self, subject: &str, schema: &str) -> u32 {
        add(&mut self.shared.inner.lock().unwrap(), subject, schema)
    }

    pub fn latest_id(&self, subject: &str) -> Option<u32> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .subjects
            .get(subject)?
            .last()
            .copied()
    }
}

impl Drop for RegistryDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn add(inner: &mut Inner, subject: &str, schema: &str) -> u32 {
    let canonical = Schema::parse_str(schema)
        .map(|s| s.canonical_form())
        .unwrap_or_else(|_| schema.to_owned());
    let id = match inner.schemas.iter().position(|s| {
        Schema::parse_str(s)
            .map(|p| p.canonical_form())
            .unwrap_or_else(|_| s.clone())
            == canonical
    }) {
        Some(i) => i as u32 + 1,
        None => {
            inner.schemas.push(schema.to_owned());
            inner.schemas.len() as u32
        }
    };
    let versions = inner.subjects.entry(subject.to_owned()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn unavailable(shared: &Shared) -> Option<Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.down.load(Ordering::SeqCst).then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error_code": 50301, "message": "registry restarting (test double)"})),
        )
            .into_response()
    })
}

fn not_found(code: u32, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if let Some(r) = unavailable(&s) {
        return r;
    }
    let Some(schema) = body["schema"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "no schema"})),
        )
            .into_response();
    };
    if Schema::parse_str(schema).is_err() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "invalid schema"})),
        )
            .into_response();
    }
    let id = add(&mut s.inner.lock().unwrap(), &subject, schema);
    Json(json!({"id": id})).into_response()
}

fn version_doc(inner: &Inner, subject: &str, version: &str) -> Option<serde_json::Value> {
    let versions = inner.subjects.get(subject)?;
    let index = match version {
        "latest" => versions.len().checked_sub(1)?,
        v => v.parse::<usize>().ok()?.checked_sub(1)?,
    };
    let id = *versions.get(index)?;
    Some(json!({
        "subject": subject, "version": index + 1, "id": id,
        "schema": inner.schemas[id as usize - 1],
    }))
}

async fn version(
    State(s): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    if let Some(r) = unavailable(&s) {
        return r;
    }
    match version_doc(&s.inner.lock().unwrap(), &subject, &version) {
        Some(doc) => Json(doc).into_response(),
        None => not_found(40401, "Subject or version not found"),
    }
}

async fn by_id(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    if let Some(r) = unavailable(&s) {
        return r;
    }
    let inner = s.inner.lock().unwrap();
    match inner.schemas.get((id as usize).wrapping_sub(1)) {
        Some(schema) => Json(json!({"schema": schema})).into_response(),
        None => not_found(40403, "Schema not found"),
    }
}

fn compatible(inner: &Inner, subject: &str, version: &str, schema: &str) -> Response {
    let Some(doc) = version_doc(inner, subject, version) else {
        return not_found(40401, "Subject not found");
    };
    let (Ok(writer), Ok(reader)) = (
        Schema::parse_str(doc["schema"].as_str().unwrap()),
        Schema::parse_str(schema),
    ) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "invalid schema"})),
        )
            .into_response();
    };
    let ok = matches!(
        SchemaCompatibility::can_read(&writer, &reader),
        Ok(Compatibility::Full)
    );
    Json(json!({"is_compatible": ok})).into_response()
}

async fn compatibility(
    state: State<Shared>,
    Path(subject): Path<String>,
    body: Json<serde_json::Value>,
) -> Response {
    compatibility_version(state, Path((subject, "latest".to_owned())), body).await
}

async fn compatibility_version(
    State(s): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if let Some(r) = unavailable(&s) {
        return r;
    }
    compatible(
        &s.inner.lock().unwrap(),
        &subject,
        &version,
        body["schema"].as_str().unwrap_or_default(),
    )
}
