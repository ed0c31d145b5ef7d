//! The tracking page in a real headless browser (Debian's chromium, driven
//! through chromedriver's WebDriver API; scripts/test.sh installs both):
//! the page shows the order, a payment appears without a reload, and after
//! orderflow restarts under it the page catches up with what happened
//! meanwhile, nothing missing and nothing twice. Leaves a screenshot in
//! `.local/track-page.png`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use orderflow::app::{self, Component};
use serde_json::{json, Value};

use crate::helpers::{cancellation, checkout, payment, TestApp, TestEnv, CHECKOUT_TOTAL};

/// A WebDriver session of chromedriver on a port of its own.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} ({e}): run ./scripts/test.sh, which installs chromium and chromium-driver")
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=900,900"]
            }
        }}});
        let created = post_json(&http, &format!("{base}/session"), &caps).await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        post_json(&self.http, &url, &body).await["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// The status shown and the timeline's entries, as the page has them.
    async fn page(&self) -> (String, Vec<String>) {
        let v = self
            .eval(
                "return [document.getElementById('status').textContent,
                         Array.from(document.querySelectorAll('#timeline li')).map(li => li.dataset.event)];",
            )
            .await;
        let status = v[0].as_str().unwrap_or_default().to_owned();
        let events = v[1]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (status, events)
    }

    async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&(String, Vec<String>)) -> bool,
    ) -> (String, Vec<String>) {
        let started = Instant::now();
        loop {
            let page = self.page().await;
            if check(&page) {
                return page;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "page never showed {what}; it shows {page:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        let response: Value = self
            .http
            .get(format!("{}/session/{}/screenshot", self.base, self.session))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(response["value"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill().await;
    }
}

/// A WebDriver call: POST a JSON body, the JSON answer.
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_tracking_page_follows_the_order_live_and_catches_up_after_a_restart() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("track-1", 99_001, 4242))
        .await;
    env.wait_status("track-1", "PENDING_PAYMENT").await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/track/track-1", app.base)).await;
    browser
        .wait_for("the order pending payment", |(status, _)| {
            status == "PENDING_PAYMENT"
        })
        .await;
    let total = browser
        .eval("return document.getElementById('total').textContent")
        .await;
    assert_eq!(total, json!("32.34 USD"), "the order's total: {total}");

    env.produce_payment(&payment("track-1", "pay-track-1", CHECKOUT_TOTAL))
        .await;
    browser
        .wait_for("PAID without a reload", |(status, events)| {
            status == "PAID" && events.iter().any(|e| e == "OrderPaid")
        })
        .await;

    // orderflow goes away under the open page; a cancellation is produced
    // meanwhile and applied by the next orderflow, on the same address.
    let addr = app.running.http_addr.unwrap();
    app.stop().await;
    env.produce_cancellation(&cancellation("track-1")).await;
    let mut settings = env.settings.clone();
    settings.http_addr = addr;
    let running = app::start(settings, &Component::ALL)
        .await
        .expect("restart");
    let restarted = TestApp {
        running,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };
    let (status, events) = browser
        .wait_for("the cancellation after the restart", |(status, events)| {
            status == "CANCELLED" && events.iter().any(|e| e == "RefundRequested")
        })
        .await;
    assert_eq!(status, "CANCELLED");
    assert_eq!(
        events,
        ["ordered", "OrderPaid", "OrderCancelled", "RefundRequested"],
        "every change once, in order"
    );
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/track-page.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    browser.quit().await;
    restarted.stop().await;
}
