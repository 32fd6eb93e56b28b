//! The `agora` process as operators run it: the CLI, configuration errors,
//! and the drain-then-stop shutdown sequence.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, service_health, spawn_mesh, spawn_mesh_with};
use reqwest::StatusCode;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn agora() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    cmd.env("AGORA_LOG_FORMAT", "text").env("RUST_LOG", "warn");
    cmd
}

#[tokio::test]
async fn an_edge_calls_the_services_of_its_own_process_where_they_listen() {
    // Named after the edge, with a non-default address: the edge must
    // still reach this process's users service, not the configured URL.
    let mesh = spawn_mesh().await;
    let users_port = free_port();
    let users_addr = format!("127.0.0.1:{users_port}");
    let edge = mesh
        .spawn_process(
            "edge,users",
            free_port(),
            &[("AGORA_USERS_ADDR", users_addr.as_str())],
        )
        .await;
    let users = service_health(&mesh.http, &edge.url(""), "users").await;
    assert_eq!(users["endpoints"][0]["address"], users_addr, "{users}");
    assert_eq!(users["endpoints"][0]["inProcess"], true, "{users}");
    mesh.stop().await;
}

#[test]
fn targets_lists_every_component() {
    let out = agora().arg("targets").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("users") && text.contains("edge"), "{text}");
}

#[test]
fn an_unknown_target_or_bad_setting_stops_at_start_naming_it() {
    let out = agora()
        .args(["serve", "--target", "users,billing"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("billing"), "{err}");

    let out = agora()
        .args(["serve", "--target", "edge"])
        .env("AGORA_EDGE_ADDR", "port three thousand")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AGORA_EDGE_ADDR"), "{err}");

    let out = agora()
        .args(["serve"])
        .env("USER_SERVICE_URL", "::not a url::")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("USER_SERVICE_URL"));
}

#[tokio::test]
async fn probe_exits_zero_only_when_the_url_answers_200() {
    let mesh = spawn_mesh().await;
    // The mesh serves on this test's runtime: wait for the child without
    // blocking it.
    let probe = |url: String| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["probe", &url])
            .env("AGORA_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = probe(format!("{}/readyz", mesh.admin)).await;
    assert!(ok, "{err}");
    let (ok, err) = probe(format!("{}/no-such-page", mesh.admin)).await;
    assert!(!ok && err.contains("404"), "{err}");
    let closed = free_port();
    let (ok, err) = probe(format!("http://127.0.0.1:{closed}/readyz")).await;
    assert!(!ok && err.contains("cannot connect"), "{err}");
    mesh.stop().await;
}

#[test]
fn sigterm_stops_a_serving_process_cleanly() {
    let mut child = agora()
        .args(["serve", "--target", "edge"])
        .env("AGORA_EDGE_ADDR", "127.0.0.1:0")
        .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
        .env("AGORA_SHUTDOWN_DRAIN_MS", "100")
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    // Wait until it logs that it serves, keeping every line for the end.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line.clone());
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("agora is serving") => break,
            Ok(_) => {}
            Err(_) => panic!("the process never reported serving"),
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = child.try_wait().expect("wait") {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = reader.join().expect("reader");
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test]
async fn command_line_tools_stay_quiet_unless_something_is_wrong() {
    // The mesh has migrated its database: running `migrate` again is the
    // everyday case, where PostgreSQL answers "already exists, skipping".
    let mesh = spawn_mesh().await;
    // As an operator runs it: no log settings in the environment.
    let migrate = |database_url: &str| {
        Command::new(env!("CARGO_BIN_EXE_agora"))
            .arg("migrate")
            .env_remove("RUST_LOG")
            .env_remove("AGORA_LOG_FORMAT")
            .env("DATABASE_URL", database_url)
            .output()
            .expect("runs")
    };
    let out = migrate(&mesh.database.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "migrations applied"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no log lines, JSON or notices, on a normal run"
    );

    // A failure is told in human words on stderr.
    let out = migrate("postgres://nobody@127.0.0.1:1/none");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(!stderr.trim_start().starts_with('{'), "not JSON: {stderr}");
    mesh.stop().await;
}

#[tokio::test]
async fn create_admin_makes_an_administrator_who_can_log_in() {
    let mesh = spawn_mesh().await;
    let mut child = agora()
        .args([
            "users",
            "create-admin",
            "--email",
            "root@example.com",
            "--display-name",
            "Root",
        ])
        .env("DATABASE_URL", &mesh.database.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"an admin passphrase\n")
        .expect("write");
    let out = child.wait_with_output().expect("finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("an admin passphrase"),
        "a given password is not echoed"
    );

    let (access, _) = mesh.login("root@example.com", "an admin passphrase").await;
    let me = mesh.get("/api/v1/users/me", Some(&access)).await;
    assert_eq!(me.body["roles"], serde_json::json!(["ROLE_ADMIN"]));
    assert_eq!(
        mesh.get("/api/v1/users", Some(&access)).await.status,
        StatusCode::OK
    );
    mesh.stop().await;
}

#[tokio::test]
async fn on_stop_the_process_reports_not_serving_before_it_closes() {
    let mut mesh = spawn_mesh_with(|c| c.shutdown.drain_delay = Duration::from_secs(2)).await;
    let ready = mesh
        .http
        .get(format!("{}/readyz", mesh.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", mesh.users_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);

    mesh.begin_stop();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ready = mesh
            .http
            .get(format!("{}/readyz", mesh.admin))
            .send()
            .await
            .expect("readyz during drain");
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health during drain");
        if ready.status() == StatusCode::SERVICE_UNAVAILABLE
            && status.get_ref().status() == ServingStatus::NotServing
        {
            break;
        }
        assert!(Instant::now() < deadline, "draining was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.stop().await;
}

#[tokio::test]
async fn seeding_fills_the_catalog_that_the_edge_then_serves() {
    let mesh = spawn_mesh().await;
    let out = agora()
        .args(["seed", "catalog", "--products", "250"])
        .env("DATABASE_URL", &mesh.database.url)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("added 250 products"));
    let page = mesh.get("/api/v1/products?pageSize=100", None).await;
    assert_eq!(page.body["products"].as_array().map(Vec::len), Some(100));
    assert!(!page.body["nextPageToken"].as_str().unwrap_or("").is_empty());
    let lamps = mesh
        .get("/api/v1/products?q=lamp&category=lighting", None)
        .await;
    assert_eq!(lamps.status, StatusCode::OK);
    assert!(
        lamps.body["products"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{:?}",
        lamps.body
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_stalled_log_reader_does_not_hold_up_requests() {
    let mesh = spawn_mesh().await;
    // stdout is a pipe nobody reads: it fills after a few hundred access
    // lines. Requests must go on regardless.
    let edge = mesh
        .spawn_process_with(
            "edge",
            common::free_port(),
            &[("RUST_LOG", "info"), ("AGORA_LOG_FORMAT", "json")],
            Stdio::piped(),
        )
        .await;
    let url = edge.url("/api/v1/categories");
    let started = Instant::now();
    for i in 0..2000 {
        let r = mesh
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "2000 requests took {:?}",
        started.elapsed()
    );
    drop(edge);
    mesh.stop().await;
}
