//! The whole REST API against its own OpenAPI document, with schemathesis
//! (`st`, installed by ./scripts/test.sh): every operation, every check, as
//! a signed-in customer and as an administrator, each signing in through the
//! login route (tests/schemathesis/hooks.py). What the run is told, and
//! why, is in tests/schemathesis/schemathesis.toml.
//!
//! A fixed seed and a bounded number of examples keep it to a few minutes;
//! `AGORA_ST_EXAMPLES` raises the bound for a longer local run.

mod common;

use std::{path::Path, process::Command};

use common::{PASSWORD, TestMesh, spawn_mesh};

/// Runs schemathesis as `email` and returns its report when it failed.
fn schemathesis(mesh: &TestMesh, email: &str) -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let examples = std::env::var("AGORA_ST_EXAMPLES").unwrap_or_else(|_| "15".into());
    let out = Command::new("st")
        .current_dir(&dir)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(mesh.url("/api/v1/openapi.json"))
        .args(["--max-examples", &examples, "--seed", "1", "--workers", "2"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &dir)
        .env("AGORA_ST_BASE_URL", mesh.url(""))
        .env("AGORA_ST_EMAIL", email)
        .env("AGORA_ST_PASSWORD", PASSWORD)
        .output()
        .expect("schemathesis (`st`) on PATH: ./scripts/test.sh installs it");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    (!out.status.success()).then(|| format!("{report}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_document_for_customers_and_administrators() {
    let mesh = spawn_mesh().await;
    let customer = format!("st-customer-{}@example.com", uuid::Uuid::new_v4().simple());
    mesh.register(&customer).await;
    let admin = format!("st-admin-{}@example.com", uuid::Uuid::new_v4().simple());
    agora_users::create_admin(&mesh.database, &admin, PASSWORD.into(), "Admin")
        .await
        .expect("create admin");
    // One after the other: each run already calls with two workers.
    for (who, email) in [("customer", &customer), ("admin", &admin)] {
        let mesh = &mesh;
        let email = email.clone();
        let failed = tokio::task::block_in_place(|| schemathesis(mesh, &email));
        if let Some(report) = failed {
            panic!("schemathesis found problems as the {who}:\n{report}");
        }
    }
    mesh.stop().await;
}
