//! End to end: TLS with SNI certificates and HTTP/2 by ALPN, WebSocket upgrades, gRPC over
//! h2c to an HTTP/2 upstream, and graceful drain on SIGTERM.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::upstream::Upstream;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn self_signed(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Connects with TLS to `addr` asking for `sni`, trusting `trusted` PEM certificates, offering
/// h2 and http/1.1; returns the stream and the certificate the server presented.
async fn tls_connect(
    addr: &str,
    sni: &str,
    trusted: &[&str],
) -> Option<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    tls_connect_offering(addr, sni, trusted, &[b"h2", b"http/1.1"]).await
}

/// [`tls_connect`] offering the ALPN protocols `alpn`.
async fn tls_connect_offering(
    addr: &str,
    sni: &str,
    trusted: &[&str],
    alpn: &[&[u8]],
) -> Option<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted {
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    // Fails until the node has built a snapshot with the certificate.
    let stream = connector.connect(name, tcp).await.ok()?;
    let presented = stream.get_ref().1.peer_certificates()?[0].to_vec();
    Some((stream, presented))
}

/// One node with a TLS listener, routing everything to `up`, with a Certificate per
/// `(sni, cert_pem, key_pem)`; returns the node and the TLS listener's address.
async fn tls_gateway(up: &Upstream, certs: &[(&str, &str, &str)]) -> (Cluster, String) {
    let tls_addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let cluster = Cluster::start_initialised(1, &["--proxy-tls-addr", &tls_addr]).await;
    let mut resources = vec![
        resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
        resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
    ];
    for (sni, cert, key) in certs {
        let name = sni.split('.').next().unwrap_or(sni);
        resources.push(resource(
            "Certificate",
            name,
            json!({"cert_pem": cert, "key_pem": key, "snis": [sni]}),
        ));
    }
    cluster.client_of(1).apply(resources, vec![]).await.unwrap();
    (cluster, tls_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_each_sni_name_its_certificate_and_speaks_h2_by_alpn() {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    let up = Upstream::start("u").await;
    let (cert_a, key_a) = self_signed("a.example.com");
    let (cert_b, key_b) = self_signed("b.example.com");
    let (cluster, tls_addr) = tls_gateway(
        &up,
        &[
            ("a.example.com", &cert_a, &key_a),
            ("b.example.com", &cert_b, &key_b),
        ],
    )
    .await;

    // The key never comes back from the admin API.
    let stored = cluster
        .client_of(1)
        .get("Certificate", "a", false)
        .await
        .unwrap();
    let spec = konnect_proto::json::struct_to_json(&stored.spec.unwrap());
    assert_eq!(spec["key_pem"], "<redacted>");
    assert_eq!(spec["cert_pem"], cert_a);

    let der = |pem: &str| {
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let (stream, presented) = wait_for(
        "the certificates to be served",
        Duration::from_secs(10),
        || async { tls_connect(&tls_addr, "a.example.com", &[&cert_a, &cert_b]).await },
    )
    .await;
    assert_eq!(presented, der(&cert_a));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // An HTTP/2 request over that connection reaches the upstream, marked as https.
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://a.example.com/hello")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let (_, presented_b) = tls_connect(&tls_addr, "b.example.com", &[&cert_a, &cert_b])
        .await
        .expect("TLS handshake for b.example.com");
    assert_eq!(presented_b, der(&cert_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_over_tls_and_http_1_1_arrive_event_by_event() {
    let up = Upstream::start("u").await;
    let (cert, key) = self_signed("sse.example.com");
    let (_cluster, tls_addr) = tls_gateway(&up, &[("sse.example.com", &cert, &key)]).await;
    let (stream, _) = wait_for(
        "the certificate to be served",
        Duration::from_secs(10),
        || async {
            tls_connect_offering(&tls_addr, "sse.example.com", &[&cert], &[b"http/1.1"]).await
        },
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    up.check_sse_through(stream, "sse.example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_spliced_only_where_allowed() {
    let up = Upstream::start("u").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
                resource(
                    "Route",
                    "ws",
                    json!({"paths": ["/ws"], "service": "web", "websocket": true}),
                ),
                resource(
                    "Route",
                    "plain",
                    json!({"paths": ["/plain"], "service": "web"}),
                ),
            ],
            vec![],
        )
        .await
        .unwrap();
    let proxy = cluster.proxy_addr(1).await;
    wait_for("routes", Duration::from_secs(10), || async {
        (http("GET", &proxy, "/plain", &[], "").await.status == 200).then_some(())
    })
    .await;

    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    s.write_all(upgrade).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }

    let refused = raw(&proxy, &upgrade.to_vec().replace_path("/plain")).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("upgrade_not_allowed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_and_quiet_upgraded_connections_are_closed() {
    let up = Upstream::start("u").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    let timeouts = json!({"idle": "1s", "upgraded_idle": "1s"});
    cluster
        .client_of(1)
        .apply(
            vec![
                resource(
                    "Service",
                    "web",
                    json!({"targets": [{"url": up.url()}], "timeouts": timeouts}),
                ),
                resource(
                    "Route",
                    "ws",
                    json!({"paths": ["/ws"], "service": "web", "websocket": true}),
                ),
                // A body limit makes the proxy read the body before forwarding it.
                resource(
                    "Route",
                    "limited",
                    json!({"paths": ["/limited"], "service": "web", "max_body_bytes": 1000}),
                ),
                resource(
                    "Route",
                    "plain",
                    json!({"paths": ["/plain"], "service": "web"}),
                ),
            ],
            vec![],
        )
        .await
        .unwrap();
    let proxy = cluster.proxy_addr(1).await;
    wait_for("routes", Duration::from_secs(10), || async {
        (http("GET", &proxy, "/plain", &[], "").await.status == 200).then_some(())
    })
    .await;

    // 10 of 100 announced bytes, then nothing: streamed to the upstream (/plain) or read by
    // the proxy first (/limited), the client gets a 408 about a second later.
    for path in ["/plain", "/limited"] {
        let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
        s.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("request_body_timeout"), "{path}: {answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{path}: too early"
        );
    }
    // A body that keeps coming, slower than the idle timeout in all but no pause longer, goes
    // through.
    let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    s.write_all(b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b).await.unwrap();
    }
    let mut answer = vec![0u8; 2048];
    let n = s.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_len\":4"), "{answer}");

    // An upgraded connection in use stays open; left quiet for a second, it is closed.
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    s.write_all(upgrade).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echoed while in use")
            .unwrap();
    }
    let quiet = std::time::Instant::now();
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut rest))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the proxy closes a quiet upgraded connection");
    assert!(quiet.elapsed() >= Duration::from_millis(900));
}

trait ReplacePath {
    fn replace_path(&self, path: &str) -> Vec<u8>;
}

impl ReplacePath for Vec<u8> {
    fn replace_path(&self, path: &str) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replacen("/ws", path, 1)
            .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_to_an_http2_upstream() {
    // A real gRPC server (the standard health service) stands in for the upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "grpc", json!({"targets": [{"url": format!("http://{grpc_addr}")}], "protocol": "http2"})),
                resource("Route", "grpc", json!({"paths": ["/grpc.health.v1.Health"], "service": "grpc"})),
            ],
            vec![],
        )
        .await
        .unwrap();
    let proxy = cluster.proxy_addr(1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = wait_for("the gRPC route", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "orders".into(),
                })
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A gRPC error status (carried in trailers) comes through intact.
    let err = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::start("u").await;
    let mut cluster = Cluster::start_initialised(1, &["--drain-timeout-ms", "10000"]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "web", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "web", json!({"paths": ["/"], "service": "web"})),
            ],
            vec![],
        )
        .await
        .unwrap();
    let proxy = cluster.proxy_addr(1).await;
    wait_for("the route", Duration::from_secs(10), || async {
        (http("GET", &proxy, "/", &[], "").await.status == 200).then_some(())
    })
    .await;
    let hits = up.hits();
    let p = proxy.clone();
    let in_flight = tokio::spawn(async move { http("GET", &p, "/slow/1500", &[], "").await });
    wait_for(
        "the slow request to reach the upstream",
        Duration::from_secs(5),
        || async { (up.hits() > hits).then_some(()) },
    )
    .await;
    cluster.nodes[0].terminate();
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status, 200, "the in-flight request must complete");
    assert!(
        cluster.nodes[0].wait_exit(),
        "the node exits cleanly after draining"
    );
    assert!(
        tokio::net::TcpStream::connect(&proxy).await.is_err(),
        "no new connections after shutdown"
    );
}

/// A CA and a server certificate for `name` signed by it: (ca_pem, cert_pem, key_pem).
fn ca_and_server(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// An HTTPS upstream answering 200 with `served-over-tls` to every request.
async fn tls_upstream(cert_pem: &str, key_pem: &str) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"served-over-tls")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_are_verified_against_the_configured_ca_and_sni() {
    let (ca, cert, key) = ca_and_server("upstream.test");
    let up = tls_upstream(&cert, &key).await;
    let (_, client_cert, client_key) = ca_and_server("konnect.client");
    let cluster = Cluster::start_initialised(1, &[]).await;
    let url = format!("https://{up}");
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "trusted", json!({"targets": [{"url": url}],
                    "tls": {"ca_pem": ca, "sni": "upstream.test", "client_cert_pem": client_cert, "client_key_pem": client_key}})),
                resource("Service", "untrusted", json!({"targets": [{"url": url}], "tls": {"sni": "upstream.test"}})),
                resource("Service", "unverified", json!({"targets": [{"url": url}], "tls": {"verify": false}})),
                resource("Route", "trusted", json!({"paths": ["/trusted"], "service": "trusted"})),
                resource("Route", "untrusted", json!({"paths": ["/untrusted"], "service": "untrusted"})),
                resource("Route", "unverified", json!({"paths": ["/unverified"], "service": "unverified"})),
            ],
            vec![],
        )
        .await
        .unwrap();
    let proxy = cluster.proxy_addr(1).await;
    let ok = wait_for("the https route", Duration::from_secs(10), || async {
        let r = http("GET", &proxy, "/trusted", &[], "").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(ok.body, "served-over-tls");
    // Signed by a CA the Service does not trust (the system store): refused, 502.
    assert_eq!(http("GET", &proxy, "/untrusted", &[], "").await.status, 502);
    assert_eq!(
        http("GET", &proxy, "/unverified", &[], "").await.status,
        200
    );

    // The client key is a secret.
    let stored = cluster
        .client_of(1)
        .get("Service", "trusted", false)
        .await
        .unwrap();
    let spec = konnect_proto::json::struct_to_json(&stored.spec.unwrap());
    assert_eq!(spec["tls"]["client_key_pem"], "<redacted>");

    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "Service",
                "bad",
                json!({"targets": [{"url": url}], "tls": {"ca_pem": "nope"}}),
            )],
            vec![],
        )
        .await
        .unwrap_err();
    assert!(err.message().starts_with("spec.tls.ca_pem"), "{err}");
}
