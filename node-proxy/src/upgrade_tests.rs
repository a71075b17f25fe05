//! In-process check that the hub splices upgraded connections (exec, attach,
//! port-forward): 101 passes through and bytes flow both ways.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::settings::FilterSettings;
use crate::test_hub::{self, FakeBody};

/// Answers every request with 101 and echoes the upgraded bytes.
async fn echo_upgrade(mut req: Request<hyper::body::Incoming>) -> Response<FakeBody> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .body(Empty::<Bytes>::new().boxed())
        .unwrap()
}

#[tokio::test]
async fn upgraded_connections_are_spliced_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    test_hub::pki(dir.path());
    let upstream = test_hub::fake_apiserver(dir.path(), echo_upgrade).await;
    let (hub_addr, _hub) =
        test_hub::hub(dir.path(), upstream, "kubelet", FilterSettings::default()).await;

    let mut conn = tokio::net::TcpStream::connect(hub_addr).await.unwrap();
    conn.write_all(
        b"POST /api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: hub\r\n\
          Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nUser-Agent: kubectl/v1.30.0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: spdy/3.1"), "{head}");
    for msg in [&b"hello through the hub"[..], b"and back again"] {
        conn.write_all(msg).await.unwrap();
        let mut echoed = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
}
