//! Pages the edge serves, in headless Chromium driven over the DevTools
//! protocol: the business dashboard at `/admin/` (a staff member signs in
//! through the form and sees charts and tables drawn from live analytics; a
//! customer is refused), and the API reference at `/api/v1/docs/`.

mod common;

use std::{path::PathBuf, time::Duration};

use base64::Engine as _;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    async fn launch() -> Self {
        let port = free_port();
        let profile = std::env::temp_dir().join(format!("agora-chromium-{}", uuid::Uuid::new_v4()));
        let child = std::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1400",
                &format!("--remote-debugging-port={port}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium starts (scripts/test.sh installs Debian's chromium)");
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let url = loop {
            let targets: Option<Vec<Value>> = match http
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if let Some(url) = targets.into_iter().flatten().find_map(|t| {
                (t["type"] == "page")
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                break url;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools socket");
        Self {
            child,
            ws,
            next_id: 0,
            profile,
        }
    }

    /// Sends one command and waits for its answer (events in between are
    /// skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .expect("send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("socket open")
                .expect("frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn until(&mut self, what: &str, expression: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.eval(expression).await != Value::Bool(true) {
            let page = self.eval("document.body.innerText").await;
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the page shows:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `expression` is true, pressing the dashboard's refresh
    /// button meanwhile (reports change as events are counted).
    async fn until_refreshed(&mut self, what: &str, expression: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.eval(expression).await != Value::Bool(true) {
            assert!(std::time::Instant::now() < deadline, "{what} never showed");
            self.eval("document.getElementById('refresh').click(); true")
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Saves what the page shows to `target/tmp/<name>`.
    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png"))
            .expect("base64");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &png).expect("screenshot");
        println!("screenshot: {}", path.display());
    }

    async fn sign_in(&mut self, email: &str, password: &str) {
        self.until(
            "the sign-in form",
            "!document.getElementById('signin').hidden",
        )
        .await;
        let script = format!(
            "document.getElementById('email').value = {};
             document.getElementById('password').value = {};
             document.getElementById('signin').requestSubmit(); true",
            json!(email),
            json!(password)
        );
        self.eval(&script).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn staff_sign_in_and_see_the_reports_drawn_from_live_data() {
    let mesh = spawn_mesh().await;
    // A staff member whose password this test types into the form.
    let (email, staff) = staff_account(&mesh).await;

    // Live data: a customer looks at a product and buys it.
    let cat = category(&mesh, &staff, "dash", None).await;
    let product = product(&mesh, &staff, "dash-1", "Dashboard lamp", &cat, 4200, 5).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, ana) = mesh.customer("ana-dash@example.com").await;
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            Some(&ana),
            json!({"events": [{"type": "page_view", "properties": {"path": "/"}},
                              {"type": "product_view", "properties": {"productId": product}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = mesh
        .post(
            "/api/v1/reservations",
            Some(&ana),
            json!({"items": [{"productId": product, "quantity": 1}]}),
        )
        .await;
    let reservation = r.body["id"].as_str().expect("reservation").to_owned();
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{reservation}:commit"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The page is served by the edge, locked to its own origin.
    let page = reqwest::get(mesh.url("/admin/")).await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("default-src 'self'")
    );

    let mut browser = Browser::launch().await;
    browser
        .call("Page.navigate", json!({"url": mesh.url("/admin/")}))
        .await;
    browser.sign_in(&email, PASSWORD).await;
    browser
        .until(
            "the dashboard",
            "!document.getElementById('dashboard').hidden",
        )
        .await;
    // Events reach the rollups within seconds; the page refreshes on
    // demand.
    let sold = format!(
        "[...document.querySelectorAll('#top-products td.id')].some(td => td.dataset.productId === {})",
        json!(product)
    );
    browser.until_refreshed("the sale", &sold).await;
    // Events arrive in any order: the funnel fills as they are counted.
    browser
        .until_refreshed(
            "the funnel",
            "[...document.querySelectorAll('#funnel .step')].map(s => s.firstChild.textContent + ' ' + s.lastChild.textContent).join() === 'viewed 1 (100%),reserved 1 (100%),purchased 1 (100%)'",
        )
        .await;
    browser
        .until(
            "the charts",
            "[...document.querySelectorAll('#chart-revenue rect.bar')].some(b => Number(b.dataset.value) === 4200)
             && [...document.querySelectorAll('#chart-signups rect.bar')].some(b => Number(b.dataset.value) > 0)
             && [...document.querySelectorAll('#chart-page_views rect.bar')].some(b => Number(b.dataset.value) === 1)",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('revenue-currency').textContent")
            .await,
        "(EUR)"
    );
    browser
        .until(
            "the product's name from the catalog",
            "document.querySelector('#top-products td.id span').textContent === 'Dashboard lamp'",
        )
        .await;
    assert_eq!(
        browser
            .eval("getComputedStyle(document.getElementById('signin')).display")
            .await,
        "none",
        "the sign-in form is gone once signed in"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#cohorts tbody tr').length")
            .await,
        8
    );

    browser.screenshot("dashboard.png").await;

    // A customer signs in and is told the dashboard is not for them.
    browser
        .eval("document.getElementById('signout').click(); true")
        .await;
    browser.sign_in("ana-dash@example.com", PASSWORD).await;
    browser
        .until(
            "the refusal",
            "document.getElementById('load-error').textContent.includes('staff')",
        )
        .await;
    drop(browser);
    mesh.stop().await;
}

#[tokio::test]
async fn the_api_reference_lists_every_operation_and_tries_one_out() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    category(&mesh, &staff, "docs-lamps", None).await;
    let doc: Value = reqwest::get(mesh.url("/api/v1/openapi.json"))
        .await
        .expect("document")
        .json()
        .await
        .expect("json");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert!(operations > 40, "{operations} operations");

    let mut browser = Browser::launch().await;
    // Any script or style the page's policy refuses is recorded.
    browser.call("Page.enable", json!({})).await;
    browser
        .call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": "window.__refused = []; document.addEventListener('securitypolicyviolation', e => window.__refused.push(e.violatedDirective + ' ' + e.blockedURI));"}),
        )
        .await;
    browser
        .call("Page.navigate", json!({"url": mesh.url("/api/v1/docs")}))
        .await;
    browser
        .until(
            "the operations",
            &format!("document.querySelectorAll('.opblock').length === {operations}"),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('.opblock-summary-path[data-path=\"/api/v1/categories\"]') !== null")
            .await,
        true
    );
    assert_eq!(
        browser
            .eval("document.querySelector('.btn.authorize') !== null")
            .await,
        true,
        "sign-in by bearer token or API key"
    );

    // Try the public category listing from the page.
    browser
        .eval(
            "const op = document.getElementById('operations-CatalogService-CatalogService_ListCategories');
             op.querySelector('.opblock-summary-control').click(); true",
        )
        .await;
    // "Try it out" is on from the start: the execute button is there.
    browser
        .until(
            "the execute button",
            "document.querySelector('#operations-CatalogService-CatalogService_ListCategories .execute') !== null",
        )
        .await;
    browser
        .eval("document.querySelector('#operations-CatalogService-CatalogService_ListCategories .execute').click(); true")
        .await;
    browser
        .until(
            "the live answer",
            "[...document.querySelectorAll('#operations-CatalogService-CatalogService_ListCategories .response-col_status')].some(c => c.textContent.trim() === '200')
             && document.querySelector('#operations-CatalogService-CatalogService_ListCategories .live-responses-table').textContent.includes('docs-lamps')",
        )
        .await;
    assert_eq!(
        browser.eval("window.__refused").await,
        json!([]),
        "nothing the page needs was refused by its policy"
    );
    // The policy holds: an injected inline script does not run, and the
    // refusal is seen.
    assert_eq!(
        browser
            .eval("const s = document.createElement('script'); s.textContent = 'window.__ran = true'; document.body.appendChild(s); window.__ran === true")
            .await,
        false
    );
    browser
        .until("the refusal to be reported", "window.__refused.length > 0")
        .await;
    browser.screenshot("api-docs.png").await;
    drop(browser);

    // The bundle is revalidated, not downloaded again.
    let http = reqwest::Client::new();
    let bundle = http
        .get(mesh.url("/api/v1/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("bundle");
    let tag = bundle.headers()["etag"].clone();
    let again = http
        .get(mesh.url("/api/v1/docs/swagger-ui-bundle.js"))
        .header("if-none-match", tag)
        .send()
        .await
        .expect("bundle");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    mesh.stop().await;
}
