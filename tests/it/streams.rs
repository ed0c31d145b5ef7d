//! Live streams (server-sent events): snapshot then changes, `?wait=true`,
//! resume with `Last-Event-ID`, a change applied on one instance reaching a
//! subscriber of another, slow subscribers cut off, the connection limit;
//! and the feed's cursor under concurrent commits.

use std::time::Duration;

use orderflow::app::Component;
use orderflow::domain::lifecycle::RequestedBy;
use orderflow::domain::OrderStatus;
use orderflow::events::order_events::{OrderEvent, OrderEventBody};
use orderflow::store::feed::{self, Target};
use orderflow::store::outbox::NewRecord;
use orderflow_testkit::sse::{self, SseEvent, SseStream};

use crate::helpers::{
    cancellation, checkout, new_event_id, order_id_of, payment, TestApp, TestEnv, CHECKOUT_TOTAL,
};

const T: Duration = Duration::from_secs(30);

async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> SseStream {
    sse::connect(&app.http, &format!("{}{path}", app.base), last_event_id)
        .await
        .unwrap_or_else(|(status, body)| panic!("{path}: {status} {body}"))
}

async fn next(stream: &mut SseStream) -> SseEvent {
    stream
        .next(T)
        .await
        .expect("an event in time")
        .expect("the stream stays open")
}

/// Asserts nothing more arrives for a while.
async fn quiet(stream: &mut SseStream) {
    if let Ok(event) = stream.next(Duration::from_millis(1500)).await {
        panic!("expected nothing more, got {event:?}");
    }
}

fn cursor(event: &SseEvent) -> i64 {
    event
        .id
        .as_deref()
        .expect("an id")
        .parse()
        .expect("a numeric id")
}

#[tokio::test]
async fn an_order_stream_sends_its_snapshot_then_each_change_with_the_published_body() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("sse-o1", 91_001, 501)).await;
    env.wait_status("sse-o1", "PENDING_PAYMENT").await;

    let mut stream = open(&app, "/orders/sse-o1/events", None).await;
    let hint = stream.next_any(T).await.unwrap().unwrap();
    assert_eq!(hint.retry, Some(2000), "a retry hint first: {hint:?}");
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.event, "snapshot");
    let state = snapshot.json();
    assert_eq!(state["status"], "PENDING_PAYMENT");
    assert_eq!(state["total_minor"], CHECKOUT_TOTAL);
    assert_eq!(state["items"].as_array().map(Vec::len), Some(2), "{state}");
    let mut last = cursor(&snapshot);

    env.produce_payment(&payment("sse-o1", "pay-sse-1", CHECKOUT_TOTAL))
        .await;
    let paid = next(&mut stream).await;
    assert_eq!(paid.event, "OrderPaid");
    assert!(cursor(&paid) > last);
    last = cursor(&paid);
    env.produce_cancellation(&cancellation("sse-o1")).await;
    let cancelled = next(&mut stream).await;
    let refund = next(&mut stream).await;
    assert_eq!(
        (cancelled.event.as_str(), refund.event.as_str()),
        ("OrderCancelled", "RefundRequested")
    );
    assert!(cursor(&cancelled) > last && cursor(&refund) > cursor(&cancelled));
    assert_eq!(refund.json()["status"], "CANCELLED");

    // The same bodies as on order-events, in the same order.
    let published: Vec<serde_json::Value> = env
        .events_of("sse-o1")
        .await
        .into_iter()
        .skip(1) // OrderCreated, before the snapshot
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        published,
        vec![paid.json(), cancelled.json(), refund.json()]
    );
    quiet(&mut stream).await;
    app.wait_metric("orderflow_sse_connections{route=\"/orders/{order_id}/events\"} 1")
        .await;
    drop(stream);
    app.wait_metric("orderflow_sse_disconnects_total{reason=\"client\"} 1")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_user_stream_includes_new_orders_with_consecutive_ids() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut stream = open(&app, "/users/777/orders/events", None).await;
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["orders"], serde_json::json!([]));
    assert_eq!(snapshot.id.as_deref(), Some("0"));

    env.produce_checkout(&checkout("sse-u1", 92_001, 777)).await;
    env.produce_checkout(&checkout("sse-u2", 92_002, 777)).await;
    env.produce_checkout(&checkout("sse-other", 92_003, 778))
        .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = next(&mut stream).await;
        assert_eq!(e.event, "OrderCreated");
        seen.push((
            e.json()["order_id"].as_str().unwrap().to_owned(),
            cursor(&e),
        ));
    }
    seen.sort();
    assert_eq!(
        seen.iter().map(|(_, c)| *c).collect::<Vec<_>>().len(),
        2,
        "{seen:?}"
    );
    let mut cursors: Vec<i64> = seen.iter().map(|(_, c)| *c).collect();
    cursors.sort();
    assert_eq!(cursors, vec![1, 2]);
    env.produce_payment(&payment("sse-u2", "pay-sse-u2", CHECKOUT_TOTAL))
        .await;
    let paid = next(&mut stream).await;
    assert_eq!(
        (
            paid.event.as_str(),
            paid.json()["order_id"].as_str(),
            cursor(&paid)
        ),
        ("OrderPaid", Some("sse-u2"), 3)
    );
    quiet(&mut stream).await;

    // A new subscriber's snapshot lists both orders, newest first.
    let mut again = open(&app, "/users/777/orders/events", None).await;
    let snapshot = next(&mut again).await;
    assert_eq!(snapshot.id.as_deref(), Some("3"));
    let orders = snapshot.json()["orders"].as_array().unwrap().clone();
    assert_eq!(orders.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn unknown_orders_404_unless_the_client_waits_for_the_checkout() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let (status, body) = app.get("/orders/sse-later/events").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("order sse-later not found"))
    );
    let (status, _) = app.get("/orders/sse-later/events?after=abc").await;
    assert_eq!(status, 400);
    let (status, _) = app.get("/users/x/orders/events").await;
    assert_eq!(status, 400);

    let mut stream = open(&app, "/orders/sse-later/events?wait=true", None).await;
    env.produce_checkout(&checkout("sse-later", 93_001, 601))
        .await;
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["status"], "PENDING_PAYMENT");
    env.produce_payment(&payment("sse-later", "pay-later", CHECKOUT_TOTAL))
        .await;
    assert_eq!(next(&mut stream).await.event, "OrderPaid");
    quiet(&mut stream).await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_resumes_gets_exactly_what_it_missed_in_order() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("sse-r1", 94_001, 602)).await;
    env.wait_status("sse-r1", "PENDING_PAYMENT").await;
    let mut stream = open(&app, "/orders/sse-r1/events", None).await;
    next(&mut stream).await; // snapshot
    env.produce_payment(&payment("sse-r1", "pay-r1", CHECKOUT_TOTAL))
        .await;
    let paid = next(&mut stream).await;
    assert_eq!(paid.event, "OrderPaid");
    drop(stream);

    // Committed while the client was away.
    env.produce_cancellation(&cancellation("sse-r1")).await;
    env.wait_status("sse-r1", "CANCELLED").await;
    env.wait_until("the refund in the feed", || async {
        env.count("SELECT count(*) FROM order_feed WHERE order_id = 'sse-r1'")
            .await
            == 4
    })
    .await;

    for (header, query) in [
        (paid.id.as_deref(), String::new()),
        (None, format!("?after={}", cursor(&paid))),
    ] {
        let mut resumed = open(&app, &format!("/orders/sse-r1/events{query}"), header).await;
        let a = next(&mut resumed).await;
        let b = next(&mut resumed).await;
        assert_eq!(
            (a.event.as_str(), b.event.as_str()),
            ("OrderCancelled", "RefundRequested"),
            "resumed with {header:?} {query:?}"
        );
        assert!(cursor(&a) > cursor(&paid) && cursor(&b) > cursor(&a));
        quiet(&mut resumed).await;
    }
    // A cursor from nowhere (ahead of the feed) restarts from a snapshot.
    let mut lost = open(&app, "/orders/sse-r1/events", Some("999999")).await;
    let snapshot = next(&mut lost).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["status"], "CANCELLED");
    app.stop().await;
}

#[tokio::test]
async fn a_change_applied_by_one_instance_reaches_a_subscriber_of_another() {
    let env = TestEnv::new().await;
    let writer = env.start().await;
    // The reader runs no consumer loop: only the feed's NOTIFY can wake it.
    let reader = env.start_only(&[Component::Http]).await;
    let mut user = open(&reader, "/users/880/orders/events", None).await;
    next(&mut user).await; // snapshot
    let mut order = open(&reader, "/orders/sse-x1/events?wait=true", None).await;

    env.produce_checkout(&checkout("sse-x1", 95_001, 880)).await;
    assert_eq!(next(&mut user).await.event, "OrderCreated");
    assert_eq!(next(&mut order).await.event, "snapshot");
    let started = std::time::Instant::now();
    env.produce_payment(&payment("sse-x1", "pay-x1", CHECKOUT_TOTAL))
        .await;
    assert_eq!(next(&mut user).await.event, "OrderPaid");
    assert_eq!(next(&mut order).await.event, "OrderPaid");
    // Well within the tailer's one-second fallback read: the NOTIFY woke it.
    assert!(
        reader
            .metrics()
            .await
            .contains("orderflow_feed_reads_total"),
        "the reader tails the feed"
    );
    tracing_free_elapsed(started);
    reader.stop().await;
    writer.stop().await;
}

/// Just documents the delivery time in the test log; timings are not
/// asserted (they belong to the benchmark).
fn tracing_free_elapsed(started: std::time::Instant) {
    eprintln!("cross-instance delivery took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_subscriber_that_cannot_keep_up_is_cut_off_and_others_are_not() {
    let env = TestEnv::with(|s| s.streams.buffer = 64).await;
    let app = env.start().await;
    // The slow client: a socket with a small receive window that is never
    // read, so the server's writes block and its buffer fills.
    let addr = app.running.http_addr.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        b"GET /users/990/orders/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut fast = open(&app, "/users/990/orders/events", None).await;
    next(&mut fast).await; // snapshot
    let mut bystander = open(&app, "/users/991/orders/events", None).await;
    next(&mut bystander).await;
    app.wait_metric("orderflow_sse_connections{route=\"/users/{user_id}/orders/events\"} 3")
        .await;

    let mut produced = 0i64;
    let mut received = 0i64;
    while !app
        .metrics()
        .await
        .contains("orderflow_sse_disconnects_total{reason=\"slow\"} 1")
    {
        assert!(produced < 20_000, "the slow subscriber was never cut off");
        // Rounds smaller than the buffer: a reader that keeps up never
        // has more than one round queued.
        let batch: Vec<_> = (0..40)
            .map(|i| {
                checkout(
                    &format!("sse-s{}", produced + i),
                    1_000_000 + produced + i,
                    990,
                )
            })
            .collect();
        futures::future::join_all(batch.iter().map(|c| env.produce_checkout(c))).await;
        produced += 40;
        // The fast subscriber gets every one, in order, without a gap.
        while received < produced {
            let e = next(&mut fast).await;
            received += 1;
            assert_eq!(cursor(&e), received, "{e:?}");
        }
    }
    eprintln!("the slow subscriber was cut off after {produced} events");
    // Its place in the hub is gone (memory bounded by the buffer it had).
    env.produce_checkout(&checkout("sse-b1", 96_001, 991)).await;
    assert_eq!(next(&mut bystander).await.event, "OrderCreated");
    assert_eq!(app.running.hub.as_ref().unwrap().subscribers(), 2);
    drop(slow);
    app.stop().await;
}

#[tokio::test]
async fn streams_over_the_limit_get_503_with_retry_after() {
    let env = TestEnv::with(|s| s.streams.max_connections = 2).await;
    let app = env.start().await;
    let _a = open(&app, "/users/1/orders/events", None).await;
    let _b = open(&app, "/users/2/orders/events", None).await;
    let response = app
        .http
        .get(format!("{}/users/3/orders/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    drop(_a);
    app.wait_metric("orderflow_sse_connections{route=\"/users/{user_id}/orders/events\"} 1")
        .await;
    let _c = open(&app, "/users/3/orders/events", None).await;
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_ends_open_streams() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut stream = open(&app, "/users/5/orders/events", None).await;
    next(&mut stream).await;
    let stopping = tokio::spawn(app.running.stop());
    assert_eq!(
        stream.next(T).await.unwrap(),
        None,
        "the server closed the stream"
    );
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
}

/// Reads from `socket` until `needle` has arrived (or the peer closes, when
/// `needle` is empty); everything read so far.
async fn read_until(
    socket: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    needle: &str,
) -> String {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(T, async {
        loop {
            let text = String::from_utf8_lossy(seen).into_owned();
            if !needle.is_empty() && text.contains(needle) {
                return text;
            }
            if socket.read_buf(seen).await.unwrap() == 0 {
                assert!(needle.is_empty(), "closed before {needle:?}: {text}");
                return text;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} in time: {}", String::from_utf8_lossy(seen)))
}

async fn send(addr: std::net::SocketAddr, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

/// A connection whose first request is a stream is written by orderflow's
/// own writer (http::event_stream, no hyper buffers): chunked, closed after
/// the response; a client leaving an idle stream is noticed. Everything
/// else on such a route (HTTP/1.0, a kept-alive connection, a body) is
/// hyper's and still works.
#[tokio::test]
async fn a_stream_on_a_connection_of_its_own_is_chunked_and_ends_when_the_client_leaves() {
    const USERS: &str = "orderflow_sse_connections{route=\"/users/{user_id}/orders/events\"}";
    let env = TestEnv::new().await;
    let app = env.start().await;
    let addr = app.running.http_addr.unwrap();

    let mut seen = Vec::new();
    let mut stream = send(
        addr,
        "GET /users/77/orders/events HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let head = read_until(&mut stream, &mut seen, "event: snapshot").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "x-accel-buffering: no",
    ] {
        assert!(head.contains(&format!("{line}\r\n")), "{line} in {head}");
    }
    app.wait_metric(&format!("{USERS} 1")).await;
    env.produce_checkout(&checkout("sse-raw-1", 77_001, 77))
        .await;
    let text = read_until(&mut stream, &mut seen, "event: OrderCreated").await;
    // The event is a chunk of its own: a hex size line, then the event.
    let at = text.find("event: OrderCreated").unwrap();
    let size_line = text[..at]
        .trim_end_matches("\r\n")
        .rsplit("\r\n")
        .next()
        .unwrap();
    assert!(
        usize::from_str_radix(size_line, 16).is_ok_and(|n| n > 0),
        "a chunk size before the event: {size_line:?}"
    );
    drop(stream);
    app.wait_metric(&format!("{USERS} 0")).await;
    app.wait_metric("orderflow_sse_disconnects_total{reason=\"client\"} 1")
        .await;

    // An unknown order: a whole 404 with its length, then the close.
    let mut seen = Vec::new();
    let mut socket = send(
        addr,
        "GET /orders/nope-1/events HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let text = read_until(&mut socket, &mut seen, "").await;
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{text}"
    );
    assert!(body.contains("not found"), "{body}");

    // hyper's: HTTP/1.0, a request with a body, a kept-alive connection.
    for request in [
        "GET /users/78/orders/events HTTP/1.0\r\nHost: x\r\n\r\n",
        "GET /users/78/orders/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /users/78/orders/events HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut seen = Vec::new();
        let mut socket = send(addr, request).await;
        let text = read_until(&mut socket, &mut seen, "event: snapshot").await;
        assert!(!text.contains("connection: close"), "hyper's: {text}");
    }
    app.stop().await;
}

fn event(order_id: &str, body: OrderEventBody, status: OrderStatus) -> NewRecord {
    let at = orderflow::clock::Clock::default().now();
    let e = OrderEvent::new(&new_event_id(), &order_id_of(order_id), status, at, body);
    NewRecord::order_event("order-events", &e)
}

fn cancelled(order_id: &str) -> NewRecord {
    event(
        order_id,
        OrderEventBody::OrderCancelled {
            reason: "test".into(),
            requested_by: RequestedBy::System,
        },
        OrderStatus::Cancelled,
    )
}

/// The cursor design: a transaction that took its ids first but commits
/// last is neither skipped by the tailer nor given a cursor below one a
/// client already saw; a user's seqs commit in order.
#[tokio::test]
async fn the_feed_cursor_survives_transactions_that_commit_out_of_order() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("cur-a", 97_001, 31)).await;
    env.produce_checkout(&checkout("cur-b", 97_002, 32)).await;
    env.wait_count("SELECT count(*) FROM order_feed", 2).await;
    app.stop().await; // nothing else writes from here on
    let pool = &env.pool;
    let start = feed::horizon(pool).await.unwrap();

    // T1 writes first (older xid) and stays open; T2 writes and commits.
    let mut t1 = pool.begin().await.unwrap();
    feed::append(&mut t1, &[cancelled("cur-a")]).await.unwrap();
    let mut t2 = pool.begin().await.unwrap();
    feed::append(&mut t2, &[cancelled("cur-b")]).await.unwrap();
    t2.commit().await.unwrap();
    let (rows, h1) = feed::tail(pool, &start).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>(),
        ["cur-b"]
    );
    t1.commit().await.unwrap();
    let (rows, h2) = feed::tail(pool, &h1).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.order_id.as_str(), r.seq))
            .collect::<Vec<_>>(),
        [("cur-a", 2)],
        "the late commit is read once, after the earlier one"
    );
    assert!(feed::tail(pool, &h2).await.unwrap().0.is_empty());

    // Same user: the second writer waits for the first one's commit, so seq
    // order is commit order.
    let mut first = pool.begin().await.unwrap();
    feed::append(&mut first, &[cancelled("cur-a")])
        .await
        .unwrap();
    let pool2 = pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool2.begin().await.unwrap();
        feed::append(&mut tx, &[cancelled("cur-a")]).await.unwrap();
        tx.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second writer waits for the user's head"
    );
    let (before, _) = feed::after(pool, &Target::User(31), 2, 10).await.unwrap();
    assert!(before.is_empty(), "nothing is visible before a commit");
    first.commit().await.unwrap();
    second.await.unwrap();
    let (rows, complete) = feed::after(pool, &Target::User(31), 0, 10).await.unwrap();
    assert!(complete);
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

/// Many writers over a few users, committing in random order after random
/// delays, while a tailer reads: every row is read exactly once, and each
/// user's seqs are 1..=n without a hole.
#[tokio::test]
async fn concurrent_writers_and_a_tailer_agree_on_every_row() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let users = [41i64, 42, 43];
    for (i, user) in users.iter().enumerate() {
        env.produce_checkout(&checkout(&format!("con-{user}"), 98_000 + i as i64, *user))
            .await;
    }
    env.wait_count("SELECT count(*) FROM order_feed", 3).await;
    app.stop().await;
    let pool = env.pool.clone();
    let start = feed::horizon(&pool).await.unwrap();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let mut tx = pool.begin().await.unwrap();
                    let user = [41, 42, 43][((w + i) % 3) as usize];
                    // Take an xid early, then wait: commits land out of xid order.
                    sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis((w * 7 + i * 13) % 40)).await;
                    feed::append(&mut tx, &[cancelled(&format!("con-{user}"))])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let mut horizon = start;
    let mut seen = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        let (rows, next) = feed::tail(&pool, &horizon).await.unwrap();
        horizon = next;
        for r in rows {
            seen.entry(r.user_id).or_default().push(r.seq);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let (rows, _) = feed::tail(&pool, &horizon).await.unwrap();
    for r in rows {
        seen.entry(r.user_id).or_default().push(r.seq);
    }
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, 200, "every row read exactly once: {seen:?}");
    for (user, seqs) in &seen {
        let expected: Vec<i64> = (2..2 + seqs.len() as i64).collect();
        assert_eq!(seqs, &expected, "user {user}: in order, no hole, no repeat");
    }
}
