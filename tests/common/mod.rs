//! The end-to-end harness: `spawn_mesh()` starts the whole process (every
//! target) in-process on ephemeral ports, against its own fresh PostgreSQL
//! database, and gives typed helpers that act as REST and gRPC clients.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use agora::{
    app::{App, Targets},
    config::Config,
};
use agora_kit::db::DatabaseConfig;
use aws_lc_rs::signature::Ed25519KeyPair;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};

pub const PASSWORD: &str = "correct horse battery";

pub struct TestMesh {
    pub edge: String,
    pub users_addr: SocketAddr,
    pub catalog_addr: SocketAddr,
    pub chat_addr: SocketAddr,
    pub analytics_addr: SocketAddr,
    pub admin: String,
    pub database: DatabaseConfig,
    pub db_name: String,
    /// The PKCS#8 PEM the users service signs with (tests forge tokens with it).
    pub signing_pem: String,
    pub http: reqwest::Client,
    /// The configuration the mesh was built from (before the module table
    /// rewrote addresses), for further replicas.
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The maintenance database URL tests create their databases from.
fn base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn new_signing_pem() -> String {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate a key");
    pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()))
}

pub async fn spawn_mesh() -> TestMesh {
    spawn_mesh_with(|_| {}).await
}

/// Like [`spawn_mesh`], with a chance to adjust the configuration.
pub async fn spawn_mesh_with(adjust: impl FnOnce(&mut Config)) -> TestMesh {
    let db_name = format!("agora_test_{}", uuid::Uuid::new_v4().simple());
    let url = url_with_database(&base_url(), &db_name);
    let signing_pem = new_signing_pem();
    let mut config = Config::default();
    config.admin.addr = "127.0.0.1:0".parse().expect("addr");
    config.users.addr = "127.0.0.1:0".parse().expect("addr");
    config.edge.addr = "127.0.0.1:0".parse().expect("addr");
    config.catalog.addr = "127.0.0.1:0".parse().expect("addr");
    config.chat.addr = "127.0.0.1:0".parse().expect("addr");
    config.chat.mongodb_uri = mongodb_uri(&db_name);
    config.chat.key_prefix = format!("{db_name}:chat:");
    // Attachments go to a bucket of the test's own on the local S3 server.
    if std::env::var("AWS_ENDPOINT_URL_S3").is_ok() {
        config.chat.attachments_bucket = db_name.replace('_', "-");
        config.chat.s3_path_style = true;
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        config.chat.redis_url = url;
    }
    config.analytics.addr = "127.0.0.1:0".parse().expect("addr");
    config.analytics.mongodb_uri = config.chat.mongodb_uri.clone();
    config.analytics.wait = Duration::from_secs(5);
    // Each test has its own event queue on the local SQS server; without
    // one, events stay in the outboxes.
    config.events.queue = if std::env::var("AWS_ENDPOINT_URL_SQS").is_ok() {
        db_name.clone()
    } else {
        String::new()
    };
    config.events.poll_interval = Duration::from_millis(50);
    config.catalog.cache_key_prefix = format!("{db_name}:");
    if let Ok(url) = std::env::var("REDIS_URL") {
        config.catalog.redis_url = url;
    }
    config.edge.key_prefix = format!("{db_name}:edge:");
    if let Ok(url) = std::env::var("REDIS_URL") {
        config.edge.redis_url = url;
    }
    // Every test's calls come from 127.0.0.1; the tests of rate limits
    // turn them on.
    config.edge.rate_limits.anonymous_per_minute = 0;
    config.edge.rate_limits.user_per_minute = 0;
    config.edge.rate_limits.auth_per_minute = 0;
    config.users.private_key = Some(signing_pem.clone());
    config.database.url = url;
    config.database.max_connections = 5;
    config.shutdown.drain_delay = Duration::ZERO;
    config.shutdown.grace_period = Duration::from_secs(5);
    adjust(&mut config);
    let database = config.database.clone();
    let base = config.clone();

    let app = App::build(config, &"all".parse::<Targets>().expect("targets"))
        .await
        .expect("mesh builds");
    let edge = format!("http://{}", app.addr("edge").expect("edge addr"));
    let users_addr = app.addr("users").expect("users addr");
    let catalog_addr = app.addr("catalog").expect("catalog addr");
    let chat_addr = app.addr("chat").expect("chat addr");
    let analytics_addr = app.addr("analytics").expect("analytics addr");
    let admin = format!("http://{}", app.admin_addr().expect("admin addr"));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestMesh {
        edge,
        users_addr,
        catalog_addr,
        chat_addr,
        analytics_addr,
        admin,
        database,
        db_name,
        signing_pem,
        http: reqwest::Client::new(),
        config: base,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Another `agora` process of the same mesh (same database, signing key
/// and Redis prefixes), running some targets: a second catalog replica, a
/// second edge. Dropping it kills it.
pub struct Replica {
    /// The listen address of the first target named.
    pub addr: SocketAddr,
    pub admin: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestMesh {
    /// Starts `targets` as another process would, from the mesh's
    /// configuration adjusted by `adjust`.
    pub async fn spawn(&self, targets: &str, adjust: impl FnOnce(&mut Config)) -> Replica {
        let mut config = self.config.clone();
        config.database.migrate_on_start = false;
        // By default it reaches the mesh's own services.
        let users = format!("http://{}", self.users_addr);
        config.catalog.users_url = users.clone();
        config.chat.users_url = users.clone();
        config.analytics.users_url = users.clone();
        for (name, url) in [
            ("users", users),
            ("catalog", format!("http://{}", self.catalog_addr)),
            ("chat", format!("http://{}", self.chat_addr)),
            ("analytics", format!("http://{}", self.analytics_addr)),
        ] {
            if let Some(policy) = config.edge.upstreams.0.get_mut(name) {
                policy.url = url;
            }
        }
        adjust(&mut config);
        let targets: Targets = targets.parse().expect("targets");
        let first = targets.0[0];
        let app = App::build(config, &targets).await.expect("replica builds");
        let addr = app.addr(first.name).expect("addr");
        let admin = format!("http://{}", app.admin_addr().expect("admin addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Replica {
            addr,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://addr`, as a gRPC URL.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends the process at once, as a crash or SIGKILL would: listeners
    /// close and connections drop mid-call.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Stops as on SIGTERM (NOT_SERVING, drain delay, in-flight calls
    /// finish) and waits until it has.
    pub async fn terminate(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("replica task")
                .expect("replica stops cleanly");
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The MongoDB URI of a test's own database (`MONGODB_URI`'s server).
pub fn mongodb_uri(db: &str) -> String {
    let server =
        std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    url_with_database(&server, db)
}

/// `url` with its database path replaced by `db`.
fn url_with_database(url: &str, db: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[authority_start..]
        .find('/')
        .map_or(head.len(), |i| authority_start + i);
    let mut out = format!("{}/{}", &head[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A response: status and JSON body (Null when the body is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

impl TestMesh {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.edge)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("edge answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, token, body).await
    }

    pub async fn register(&self, email: &str) -> Value {
        let r = self
            .post(
                "/api/v1/users",
                None,
                json!({"email": email, "password": PASSWORD, "displayName": "Test User"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "register {email}: {:?}", r.body);
        r.body
    }

    /// Logs in; returns (access token, refresh token).
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let r = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login {email}: {:?}", r.body);
        let t = &r.body["tokens"];
        // JSON names, or proto names when the edge is set to answer in them.
        let field = |json: &str, proto: &str| -> String {
            t[json]
                .as_str()
                .or_else(|| t[proto].as_str())
                .expect("token")
                .into()
        };
        (
            field("accessToken", "access_token"),
            field("refreshToken", "refresh_token"),
        )
    }

    /// Registers and logs in a customer; returns (user id, access token).
    pub async fn customer(&self, email: &str) -> (String, String) {
        let user = self.register(email).await;
        let (access, _) = self.login(email, PASSWORD).await;
        (user["id"].as_str().expect("id").to_owned(), access)
    }

    /// Creates an admin the way an operator does and logs in.
    pub async fn admin(&self) -> (String, String) {
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        let user = agora_users::create_admin(&self.database, &email, PASSWORD.into(), "Admin")
            .await
            .expect("create admin");
        let (access, _) = self.login(&email, PASSWORD).await;
        (user.id.to_string(), access)
    }

    /// The secret token of the newest `event_type` outbox event for a user.
    pub async fn outbox_token(&self, event_type: &str, user_id: &str) -> String {
        let mut conn = PgConnection::connect(&self.database.url).await.expect("db");
        let payload: Value = sqlx::query_scalar(
            "SELECT payload FROM users.outbox WHERE event_type = $1 AND aggregate_id = $2 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(event_type)
        .bind(user_id)
        .fetch_one(&mut conn)
        .await
        .expect("outbox event");
        payload["token"]
            .as_str()
            .expect("token in payload")
            .to_owned()
    }

    /// Signals the process to stop (as SIGTERM would) without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the mesh and drops its database.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            task.await.expect("mesh task").expect("mesh stops cleanly");
        }
        drop_database(&self.db_name).await;
        self.db_name.clear();
    }
}

async fn drop_database(name: &str) {
    if let Ok(mut conn) = PgConnection::connect(&base_url()).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
    if let Ok(client) = mongodb::Client::with_uri_str(mongodb_uri(name)).await {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.database(name).drop()).await;
    }
}

/// A test that failed before `stop()` still leaves no database behind.
impl Drop for TestMesh {
    fn drop(&mut self) {
        self.begin_stop();
        if self.db_name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.db_name);
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread of its own does the work.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}

// === catalog helpers ===

/// A staff member: registered, promoted by an admin, logged in again.
pub async fn staff(mesh: &TestMesh) -> String {
    staff_account(mesh).await.1
}

/// A new staff member (its password is [`PASSWORD`]): (email, access token).
pub async fn staff_account(mesh: &TestMesh) -> (String, String) {
    let email = format!("staff-{}@example.com", uuid::Uuid::new_v4().simple());
    let user = mesh.register(&email).await;
    let (_, admin) = mesh.admin().await;
    let r = mesh
        .call(
            Method::PUT,
            &format!("/api/v1/users/{}/roles", user["id"].as_str().expect("id")),
            Some(&admin),
            json!({"roles": ["ROLE_STAFF"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = mesh.login(&email, PASSWORD).await.0;
    (email, token)
}

pub async fn category(mesh: &TestMesh, token: &str, slug: &str, parent: Option<&str>) -> String {
    let r = mesh
        .post(
            "/api/v1/categories",
            Some(token),
            json!({"slug": slug, "name": slug, "parentId": parent.unwrap_or("")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

pub async fn product(
    mesh: &TestMesh,
    token: &str,
    sku: &str,
    name: &str,
    cat: &str,
    price: i64,
    stock: i32,
) -> Value {
    let r = mesh
        .post(
            &format!("/api/v1/products?initialStock={stock}"),
            Some(token),
            json!({"sku": sku, "name": name, "description": format!("About the {name}"), "categoryId": cat,
                   "price": {"currency": "EUR", "amountMinor": price.to_string()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

/// The services a gRPC server lists through server reflection (v1), as
/// `grpcurl list` shows them.
pub async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let reply = stream.next().await.expect("one reply").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

// === real processes ===

/// A free local port (bound, read, released).
/// A connection to the mesh's database.
pub async fn db(mesh: &TestMesh) -> PgConnection {
    PgConnection::connect(&mesh.database.url).await.expect("db")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An `agora serve` OS process of the mesh, for what only a real process
/// shows: SIGKILL drops every connection, SIGTERM runs the real drain.
pub struct AgoraProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl TestMesh {
    /// Starts `agora serve --target <target>` listening on `port`, against
    /// the mesh's database, users service and Redis prefix, and waits until
    /// its gRPC health says SERVING. `env` adds or overrides variables.
    pub async fn spawn_process(
        &self,
        target: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> AgoraProcess {
        self.spawn_process_with(target, port, env, std::process::Stdio::null())
            .await
    }

    /// Like [`spawn_process`](Self::spawn_process), with the process's
    /// stdout (its log) going to `stdout`. An edge is ready when its
    /// `/health` answers 200; a service when its gRPC health says SERVING.
    pub async fn spawn_process_with(
        &self,
        target: &str,
        port: u16,
        env: &[(&str, &str)],
        stdout: std::process::Stdio,
    ) -> AgoraProcess {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // With several targets, `port` is the first one's.
        let first = target.split(',').next().unwrap_or(target);
        let addr_var = format!("AGORA_{}_ADDR", first.to_uppercase());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agora"));
        cmd.args(["serve", "--target", target])
            .env("DATABASE_URL", &self.database.url)
            .env("AGORA_DATABASE_MIGRATE_ON_START", "false")
            .env(&addr_var, addr.to_string())
            .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
            .env("USER_SERVICE_URL", format!("http://{}", self.users_addr))
            .env(
                "PRODUCT_SERVICE_URL",
                format!("http://{}", self.catalog_addr),
            )
            .env(
                "AGORA_CACHE_KEY_PREFIX",
                &self.config.catalog.cache_key_prefix,
            )
            .env("AGORA_EDGE_KEY_PREFIX", &self.config.edge.key_prefix)
            .env("CHAT_SERVICE_URL", format!("http://{}", self.chat_addr))
            .env("MONGODB_URI", &self.config.chat.mongodb_uri)
            .env("AGORA_CHAT_KEY_PREFIX", &self.config.chat.key_prefix)
            .env(
                "DATA_SERVICE_URL",
                format!("http://{}", self.analytics_addr),
            )
            .env("AGORA_EVENTS_QUEUE", &self.config.events.queue)
            .env("AGORA_ANALYTICS_WAIT_SECS", "5")
            .env("AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0")
            .env("AGORA_SHUTDOWN_DRAIN_MS", "0")
            .env("AGORA_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(stdout);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("agora starts");
        let process = AgoraProcess { addr, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !process.ready(target).await {
            assert!(
                std::time::Instant::now() < deadline,
                "agora --target {target} did not start serving on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }
}

impl AgoraProcess {
    async fn ready(&self, target: &str) -> bool {
        let url = format!("http://{}", self.addr);
        if target.starts_with("edge") {
            return reqwest::get(format!("{url}/health"))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
        }
        let Ok(channel) = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
        else {
            return false;
        };
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok_and(|r| r.get_ref().status == 1)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGKILL: every connection drops at once, mid-call.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it
    /// exited successfully.
    pub async fn terminate(mut self) -> bool {
        self.signal("-TERM");
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().expect("true"),
        );
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .is_ok_and(|s| s.success())
    }
}

impl Drop for AgoraProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `request` from `workers` concurrent loops until `stop` is set;
/// returns each answer's status with its body when it failed.
pub async fn load<F, Fut>(
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    request: F,
) -> Vec<(u16, String)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (u16, String)> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (stop, request) = (stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                out.push(request(w * 1_000_000 + i).await);
                i += 1;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

/// The value of one Prometheus series (`name{labels}` as exported) on an
/// admin server, 0 when it is not exported yet.
pub async fn metric(http: &reqwest::Client, admin: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

/// The entry for the service `name` in the `/health` of the edge at `edge`
/// (a base URL).
pub async fn service_health(http: &reqwest::Client, edge: &str, name: &str) -> Value {
    let health: Value = http
        .get(format!("{edge}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    health["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {health}"))
        .clone()
}
