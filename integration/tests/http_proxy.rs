//! `--http-proxy-addr` through the real binaries: absolute-URI requests on a
//! kept-alive client connection, streaming bodies, hop-by-hop headers,
//! CONNECT, and the spec's error statuses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::http::{read_head, read_response, web_server_on, HttpResponse};
use integration::services::{echo_server, hanging_server, pattern, sha256_hex};
use integration::{Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A cluster with the HTTP proxy whose agent may dial `allow`.
fn setup(args: &[&str], allow: &[String]) -> Cluster {
    let mut opts = ClusterOptions::allowing(allow, &[]).server_args(args);
    opts.server.http_proxy = true;
    Cluster::start(opts)
}

/// Sends one request head on `conn` and reads the response.
async fn request(conn: &mut BufReader<TcpStream>, head: &str) -> HttpResponse {
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), read_response(conn))
        .await
        .expect("response within 15 s")
        .unwrap()
}

async fn proxy_conn(s: &Cluster) -> BufReader<TcpStream> {
    BufReader::new(
        TcpStream::connect(s.server.http_proxy_addr.unwrap())
            .await
            .unwrap(),
    )
}

fn get(target: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET http://{target}{path} HTTP/1.1\r\nHost: wrong.example\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_uri_requests_are_proxied_on_a_kept_alive_connection() {
    let web = web_server_on("127.0.0.1:0").await.unwrap();
    let s = setup(&[], &[web.to_string()]);
    let mut conn = proxy_conn(&s).await;

    let started = Instant::now();
    let r = request(
        &mut conn,
        &get(
            web,
            "/metrics?x=1",
            "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: text/plain\r\n",
        ),
    )
    .await;
    let first = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.text();
    // Origin-form towards the edge, Host from the URI, hop-by-hop headers gone.
    assert!(seen.starts_with("GET /metrics?x=1 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains(&format!("host: {web}\r\n")), "{seen}");
    assert!(seen.contains("accept: text/plain\r\n"), "{seen}");
    for hop in [
        "proxy-connection",
        "proxy-authorization",
        "x-hop",
        "connection",
    ] {
        assert!(
            !seen.contains(&format!("{hop}:")),
            "{hop} forwarded: {seen}"
        );
    }
    assert!(!r.head.contains("keep-alive: timeout"), "{}", r.head);

    // The same client connection carries more requests, including a large
    // streamed body.
    let mut times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = request(&mut conn, &get(web, &format!("/r{i}"), "")).await;
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with(&format!("GET /r{i} ")), "{}", r.text());
    }
    let n = 8 * 1024 * 1024;
    let t = Instant::now();
    let r = request(&mut conn, &get(web, &format!("/big?n={n}"), "")).await;
    let big = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&pattern(n, 7)));
    times.sort();
    eprintln!(
        "http proxy: first request {first:?}, per-request (kept edge connection) median {:?} max {:?}, 8 MiB body {big:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );

    // All 22 requests went to one target: one dial, one edge connection.
    let m = s.server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_streams_total{frontend=\"http\",result=\"ok\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains(
            "tunnel_server_frontend_requests_total{code=\"200\",protocol=\"http-proxy\"} 22"
        ),
        "{m}"
    );
    assert!(
        m.contains("tunnel_server_node_streams_total{node=\"edge-1\"} 1\n"),
        "{m}"
    );
    let from_edge = integration::process::metric_value(
        &m,
        "tunnel_server_node_bytes_total{direction=\"from_edge\",node=\"edge-1\"}",
    )
    .unwrap_or(0.0);
    assert!(from_edge > n as f64, "{m}");

    // The edge connection lives as long as the client connection.
    let active = |m: &str| {
        integration::process::metric_value(m, "tunnel_server_streams_active{frontend=\"http\"}")
    };
    assert_eq!(active(&s.server.metrics().unwrap()), Some(1.0));

    // Asking for another target moves the client connection's edge
    // connection there; both targets keep answering.
    let other = web_server_on("127.0.0.1:0").await.unwrap();
    drop(conn);
    drop(s);
    let s = setup(&[], &[web.to_string(), other.to_string()]);
    let mut conn = proxy_conn(&s).await;
    for (i, t) in [web, other, other, web, web].into_iter().enumerate() {
        let r = request(&mut conn, &get(t, &format!("/switch{i}"), "")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.text().contains(&format!("host: {t}\r\n")), "{}", r.text());
    }
    let m = s.server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_streams_total{frontend=\"http\",result=\"ok\"} 3\n"),
        "{m}"
    );
    drop(conn);

    // Once the client connection closes, its edge connection is released.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = s.server.metrics().unwrap();
        let active = integration::process::metric_value(
            &m,
            "tunnel_server_streams_active{frontend=\"http\"}",
        );
        if active == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "streams still active:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_service_that_closes_after_each_response_still_answers_every_request() {
    // Answers one request per connection, then closes without saying so.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let one_shot = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let s = setup(&[], &[one_shot.to_string()]);
    let mut conn = proxy_conn(&s).await;
    for i in 0..10 {
        let r = request(&mut conn, &get(one_shot, &format!("/n{i}"), "")).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, b"ok");
        // Give the FIN time to arrive on some iterations, not on others.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_served_for_https_targets() {
    let echo = echo_server().await.unwrap();
    // Also: with per-node series off, only the fleet-wide ones are exported.
    let s = setup(&["--per-node-metrics=false"], &[echo.to_string()]);
    let mut conn = proxy_conn(&s).await;
    conn.get_mut()
        .write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, head) = tokio::time::timeout(Duration::from_secs(15), read_head(&mut conn))
        .await
        .expect("CONNECT answered within 15 s")
        .unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(conn.buffer().is_empty());
    let mut sock = conn.into_inner();
    let data = pattern(1024 * 1024, 3);
    let (mut rd, mut wr) = sock.split();
    let send = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async {
        tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut back))
            .await
            .expect("echo within 15 s")
            .unwrap();
    };
    tokio::join!(send, recv);
    assert_eq!(sha256_hex(&back), sha256_hex(&data));

    let m = s.server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_streams_total{frontend=\"http\",result=\"ok\"} 1"),
        "{m}"
    );
    assert!(!m.contains("node=\"edge-1\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_follow_the_spec() {
    let web = web_server_on("127.0.0.1:0").await.unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (hang, _guard) = hanging_server().await.unwrap();
    let s = setup(
        &["--dial-timeout=2s"],
        &[web.to_string(), closed.to_string(), hang.to_string()],
    );

    let cases: Vec<(String, u16, &str)> = vec![
        (
            get("10.255.0.9:80".parse().unwrap(), "/", ""),
            503,
            "no agent",
        ),
        (
            "GET http://other-node:80/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            503,
            "no agent",
        ),
        (get(closed, "/", ""), 502, "could not dial"),
        (get("127.0.0.1:1".parse().unwrap(), "/", ""), 403, "refused"),
        (
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            405,
            "absolute URI",
        ),
        (
            format!("GET https://{web}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "CONNECT",
        ),
        (
            format!("CONNECT {closed} HTTP/1.1\r\nHost: x\r\n\r\n"),
            502,
            "could not dial",
        ),
        (
            "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            403,
            "refused",
        ),
    ];
    for (head, status, cause) in &cases {
        let mut conn = proxy_conn(&s).await;
        let r = request(&mut conn, head).await;
        assert_eq!(r.status, *status, "{head:?}: {r:?}");
        assert!(r.text().contains(cause), "{head:?}: {}", r.text());
        assert!(r.head.contains("connection: close"), "{head:?}: {}", r.head);
    }

    // A destination whose dial never completes: 504 after --dial-timeout.
    let t = Instant::now();
    let mut conn = proxy_conn(&s).await;
    let r = request(&mut conn, &get(hang, "/", "")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );

    // A stopped agent never answers: 504 too.
    s.agent().proc.signal(Signal::SIGSTOP);
    let mut conn = proxy_conn(&s).await;
    let r = request(&mut conn, &get(web, "/", "")).await;
    s.agent().proc.signal(Signal::SIGCONT);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.text().contains("within 2s"), "{}", r.text());
}
