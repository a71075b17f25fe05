//! Quotas and ambiguous routing (issue 12, findings 4, 5, 6), through the
//! real binaries: `--forward` and `--http-proxy-addr` cannot use up
//! kube-apiserver's streams, listeners cap their connections, idle streams
//! are closed while busy ones live, `--header-timeout` holds on the HTTP
//! proxy without cutting kept-alive connections, and an IP two nodes claim
//! is refused by IP while both stay reachable by name.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration::http::{read_response, web_server_on};
use integration::process::free_port;
use integration::services::echo_server;
use integration::{connect_uds, AgentOptions, AgentProc, Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Echoes `msg` over an established stream.
async fn echo_once<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    msg: &[u8],
) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    assert_eq!(back, msg);
    Ok(())
}

/// True when the peer closes `s` (EOF or error) within `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_cannot_use_up_the_apiserver_streams() {
    let echo = echo_server().await.unwrap();
    let port = free_port();
    let forward = format!("--forward=127.0.0.1:{port}=edge-1/{echo}");
    // 8 streams: --forward and --http-proxy-addr get 2 each by default.
    let s = Cluster::start(
        ClusterOptions::allowing(&[echo.to_string()], &[])
            .server_args(&["--max-streams=8", &forward]),
    );
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if echo_once(&mut c, b"f").await.is_ok() {
            held.push(c);
        }
    }
    assert_eq!(
        held.len(),
        2,
        "forward streams beyond --max-streams-forward"
    );
    // kube-apiserver still has the other 6.
    let mut apiserver = Vec::new();
    for _ in 0..6 {
        let mut r = connect_uds(&s.uds(), &echo.to_string()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        echo_once(&mut r.stream, b"a").await.unwrap();
        apiserver.push(r);
    }
    let r = connect_uds(&s.uds(), &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    let m = s.server.metrics().unwrap();
    assert_eq!(
        metric(&m, "tunnel_server_streams_active{frontend=\"forward\"}"),
        Some(2.0),
        "{m}"
    );
    let logs = s.server.proc.logs();
    assert!(logs.contains("--max-streams-forward"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_cap_their_connections_and_answer_at_once() {
    let mut opts = ClusterOptions::default().server_args(&["--max-connections-per-listener=2"]);
    opts.server.http_proxy = true;
    let s = Cluster::start(opts);
    let http = s.server.http_proxy_addr.unwrap();
    let _a = TcpStream::connect(http).await.unwrap();
    let _b = TcpStream::connect(http).await.unwrap();
    let mut third = BufReader::new(TcpStream::connect(http).await.unwrap());
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("--max-connections-per-listener"),
        "{}",
        r.text()
    );
    println!("503 at the cap after {:?}", started.elapsed());

    let _u1 = UnixStream::connect(s.uds()).await.unwrap();
    let _u2 = UnixStream::connect(s.uds()).await.unwrap();
    let mut u3 = UnixStream::connect(s.uds()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), u3.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let m = s.server.metrics().unwrap();
    for l in ["http-proxy-addr", "uds"] {
        let series = format!("tunnel_server_connections_refused_total{{listener=\"{l}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_closed_and_busy_ones_are_not() {
    let echo = echo_server().await.unwrap();
    let port = free_port();
    let forward = format!("--forward=127.0.0.1:{port}=edge-1/{echo}");
    let s = Cluster::start(
        ClusterOptions::allowing(&[echo.to_string()], &[])
            .server_args(&["--stream-idle-timeout=1s", &forward]),
    );
    let mut busy = connect_uds(&s.uds(), &echo.to_string()).await.unwrap();
    assert_eq!(busy.status, 200, "{}", busy.body);
    let mut idle = connect_uds(&s.uds(), &echo.to_string()).await.unwrap();
    let mut idle_fwd = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut idle_fwd, b"x").await.unwrap();
    // A byte every 300 ms for 3 s: three idle timeouts' worth, never idle.
    for i in 0..10u8 {
        echo_once(&mut busy.stream, &[i])
            .await
            .expect("busy stream kept");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closed_within(&mut idle.stream, Duration::from_secs(3)).await);
    assert!(closed_within(&mut idle_fwd, Duration::from_secs(3)).await);
    echo_once(&mut busy.stream, b"still").await.unwrap();
    let m = s.server.metrics().unwrap();
    for f in ["connect", "forward"] {
        let series = format!("tunnel_server_stream_idle_timeouts_total{{frontend=\"{f}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_holds_on_the_http_proxy_without_cutting_keep_alive() {
    let web = web_server_on("127.0.0.1:0").await.unwrap();
    let mut opts = ClusterOptions::allowing(&[web.to_string()], &[])
        .server_args(&["--header-timeout=1s", "--http-proxy-idle-timeout=30s"]);
    opts.server.http_proxy = true;
    let s = Cluster::start(opts);
    let http = s.server.http_proxy_addr.unwrap();
    // A head started and never finished: closed after --header-timeout (was 120 s).
    let mut slow = TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET http://10.9.9.9:80/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    println!("unfinished head closed after {took:?}");

    // A kept-alive connection idle for twice --header-timeout still serves.
    let mut conn = BufReader::new(TcpStream::connect(http).await.unwrap());
    let req = format!("GET http://{web}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..2 {
        conn.get_mut().write_all(req.as_bytes()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut conn))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_two_nodes_claim_is_refused_by_ip_and_both_route_by_name() {
    let echo = echo_server().await.unwrap();
    let mut s = Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &[]));
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    // edge-3's certificate lists edge-1's IP.
    let mut edge3 = AgentProc::start(
        &s.pki,
        s.server.agent_addr,
        "edge-3",
        &[loopback],
        AgentOptions::default(),
    )
    .unwrap();
    let server = &mut s.server;
    server.wait_agents(2, Duration::from_secs(30)).unwrap();
    let uds = server.uds.clone().unwrap();
    let r = connect_uds(&uds, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("edge-1") && r.body.contains("edge-3"),
        "{}",
        r.body
    );
    // By name: edge-1's agent answers (200), edge-3's applies its own allowlist (403).
    let mut r = connect_uds(&uds, &format!("edge-1:{}", echo.port()))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent for node edge-1"), "{}", r.body);
    r = connect_uds(&uds, &format!("edge-3:{}", echo.port()))
        .await
        .unwrap();
    assert!(r.body.contains("agent for node edge-3"), "{}", r.body);

    let agents = server.agents().unwrap();
    let rows = agents.as_array().unwrap();
    for row in rows {
        assert_eq!(
            row["ip_conflicts"],
            serde_json::json!([{"ip": "127.0.0.1", "nodes": ["edge-1", "edge-3"]}]),
            "{agents}"
        );
    }
    let m = server.metrics().unwrap();
    assert_eq!(metric(&m, "tunnel_server_ip_conflicts"), Some(1.0), "{m}");

    // When edge-3 leaves, the IP routes to edge-1 again.
    edge3.proc.stop(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = connect_uds(&uds, &echo.to_string()).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = server.metrics().unwrap();
    assert_eq!(metric(&m, "tunnel_server_ip_conflicts"), Some(0.0), "{m}");
}
