//! End to end: consumers, API keys, ACLs, client certificates, admin roles and the audit log,
//! against real konnect processes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use konnect_client::Client;
use serde_json::json;
use support::upstream::Upstream;
use support::*;

async fn until_status(
    proxy: &str,
    path: &str,
    headers: &[(&str, &str)],
    want: u16,
) -> HttpResponse {
    wait_for(
        &format!("{path} to answer {want}"),
        Duration::from_secs(10),
        || async {
            let r = http("GET", proxy, path, headers, "").await;
            (r.status == want).then_some(r)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_consumers_and_the_acl_decides() {
    let up = Upstream::start("echo").await;
    let cluster = Cluster::start_initialised(1, &["--key-usage-report-ms", "200"]).await;
    let client = cluster.client_of(1);
    client
        .apply(
            vec![
                resource("Team", "research", json!({})),
                resource(
                    "Consumer",
                    "alice",
                    json!({"team": "research", "groups": ["beta"]}),
                ),
                resource("Consumer", "bob", json!({})),
                resource("Service", "echo", json!({"targets": [{"url": up.url()}]})),
                resource(
                    "Route",
                    "private",
                    json!({"paths": ["/private"], "service": "echo",
                           "auth": {"key": true, "key_query": "apikey"},
                           "acl": {"teams": ["research"]}}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    let alice = client
        .create_key("alice", None, "laptop")
        .await
        .expect("key");
    assert!(alice.key.starts_with("knk_") && alice.key.len() == 68);
    let bob = client.create_key("bob", None, "").await.expect("key");

    // No credentials: 401 with a challenge, nothing about keys in the answer.
    let r = until_status(&proxy, "/private/x", &[], 401).await;
    assert_eq!(r.headers["www-authenticate"], r#"Bearer realm="konnect""#);
    assert_eq!(r.json()["error"]["code"], "unauthorized");

    // Alice's key, from the header and from the query: through, identified, key stripped.
    let r = until_status(&proxy, "/private/x", &[("x-api-key", &alice.key)], 200).await;
    let seen = r.json();
    assert_eq!(seen["headers"]["x-consumer-name"], "alice");
    assert_eq!(seen["headers"]["x-consumer-team"], "research");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    let r = http(
        "GET",
        &proxy,
        &format!("/private/x?a=1&apikey={}", alice.key),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "a=1");
    let bearer = format!("Bearer {}", alice.key);
    let r = http(
        "GET",
        &proxy,
        "/private/x",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("authorization").is_none());
    // A client cannot claim to be someone by sending the identity headers itself.
    let r = http(
        "GET",
        &proxy,
        "/private/x",
        &[("x-api-key", &bob.key), ("x-consumer-name", "alice")],
        "",
    )
    .await;
    assert_eq!(r.status, 403, "bob is not in the research team");
    assert_eq!(r.json()["error"]["code"], "forbidden");

    // A wrong key is a 401 that says the token is invalid, and echoes nothing back.
    // The same key with its last digit changed (one in 16 keys already ends in 0).
    let last = if alice.key.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &alice.key[..67]);
    let r = http("GET", &proxy, "/private/x", &[("x-api-key", &wrong)], "").await;
    assert_eq!(r.status, 401);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    assert!(!String::from_utf8_lossy(&r.body).contains(&wrong[4..20]));

    // Last use is reported in batches and shows up in the listing.
    let id = alice.info.as_ref().unwrap().id.clone();
    wait_for(
        "alice's key to show a last use",
        Duration::from_secs(10),
        || async {
            let keys = client.list_keys("alice").await.ok()?.keys;
            keys.iter()
                .find(|k| k.id == id)
                .and_then(|k| k.last_used_unix_ms)
        },
    )
    .await;

    // The stored key holds its hash and prefix, never the key.
    let stored = client.get("ApiKey", &id, false).await.expect("get");
    let spec = konnect_proto::json::struct_to_json(stored.spec.as_ref().unwrap());
    assert!(!spec.to_string().contains(&alice.key[16..]), "{spec}");
    assert_eq!(spec["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(spec["prefix"], format!("knk_{id}"));
    // And keys are made by the node only.
    let err = client
        .apply(vec![resource("ApiKey", "abc", spec.clone())], vec![])
        .await
        .expect_err("hand-written keys are refused");
    assert!(err.to_string().contains("keys create"), "{err}");

    // Rotation with overlap: both keys work until the old one's time is up.
    let rotated = client.rotate_key(&id, 3600, None).await.expect("rotate");
    until_status(&proxy, "/private/x", &[("x-api-key", &rotated.key)], 200).await;
    assert_eq!(
        http(
            "GET",
            &proxy,
            "/private/x",
            &[("x-api-key", &alice.key)],
            ""
        )
        .await
        .status,
        200
    );
    // Revocation: refused on the node as soon as it applied the change.
    client
        .revoke_key(&alice.key)
        .await
        .expect("revoke by the key itself");
    until_status(&proxy, "/private/x", &[("x-api-key", &alice.key)], 401).await;
    assert_eq!(
        http(
            "GET",
            &proxy,
            "/private/x",
            &[("x-api-key", &rotated.key)],
            ""
        )
        .await
        .status,
        200
    );
    // Rotation without overlap ends the old key at once; an expiring key stops by itself.
    let bob_id = bob.info.as_ref().unwrap().id.clone();
    client.rotate_key(&bob_id, 0, None).await.expect("rotate");
    until_status(&proxy, "/private/x", &[("x-api-key", &bob.key)], 401).await;
    let short = client.create_key("alice", Some(1), "").await.expect("key");
    let r = wait_for(
        "the short-lived key to expire",
        Duration::from_secs(10),
        || async {
            let r = http(
                "GET",
                &proxy,
                "/private/x",
                &[("x-api-key", &short.key)],
                "",
            )
            .await;
            (r.status == 401).then_some(r)
        },
    )
    .await;
    assert_eq!(r.status, 401);

    // A consumer with keys cannot vanish under them.
    let err = client
        .delete("Consumer", "bob", None)
        .await
        .expect_err("in use");
    assert!(err.to_string().contains("ApiKey"), "{err}");
}

/// What each admin RPC needs: (service, method) -> lowest role allowed.
const RPC_ROLES: &[(&str, &str, &str)] = &[
    ("Cluster", "Status", "viewer"),
    ("Cluster", "AddNode", "admin"),
    ("Cluster", "RemoveNode", "admin"),
    ("Resources", "Apply", "editor"),
    ("Resources", "Create", "editor"),
    ("Resources", "Update", "editor"),
    ("Resources", "Delete", "editor"),
    ("Resources", "Get", "viewer"),
    ("Resources", "List", "viewer"),
    ("Resources", "Watch", "viewer"),
    ("Keys", "Create", "editor"),
    ("Keys", "List", "viewer"),
    ("Keys", "Revoke", "editor"),
    ("Keys", "Rotate", "editor"),
    ("Tokens", "Create", "admin"),
    ("Tokens", "List", "admin"),
    ("Tokens", "Revoke", "admin"),
    ("Audit", "List", "admin"),
    ("Secrets", "Rekey", "admin"),
    ("Limits", "Usage", "viewer"),
    ("Usage", "QuerySpend", "viewer"),
    ("Usage", "Budgets", "viewer"),
];

/// Calls one RPC with harmless arguments (nothing it could change) and returns the code.
async fn call(
    channel: tonic::transport::Channel,
    token: &str,
    service: &str,
    method: &str,
) -> tonic::Code {
    use konnect_proto::admin::v1 as api;
    let auth = format!("Bearer {token}");
    use api::audit_client::AuditClient;
    use api::cluster_client::ClusterClient;
    use api::keys_client::KeysClient;
    use api::limits_client::LimitsClient;
    use api::resources_client::ResourcesClient;
    use api::secrets_client::SecretsClient;
    use api::tokens_client::TokensClient;
    use api::usage_client::UsageClient;
    macro_rules! c {
        ($client:ident, $call:ident, $msg:expr) => {{
            let mut r = tonic::Request::new($msg);
            r.metadata_mut()
                .insert("authorization", auth.parse().unwrap());
            match $client::new(channel.clone()).$call(r).await {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            }
        }};
    }
    match (service, method) {
        ("Cluster", "Status") => c!(ClusterClient, status, api::StatusRequest {}),
        ("Cluster", "AddNode") => c!(ClusterClient, add_node, api::AddNodeRequest::default()),
        ("Cluster", "RemoveNode") => c!(
            ClusterClient,
            remove_node,
            api::RemoveNodeRequest { node_id: 0 }
        ),
        ("Resources", "Apply") => c!(ResourcesClient, apply, api::ApplyRequest::default()),
        ("Resources", "Create") => c!(ResourcesClient, create, api::CreateRequest::default()),
        ("Resources", "Update") => c!(ResourcesClient, update, api::UpdateRequest::default()),
        ("Resources", "Delete") => c!(
            ResourcesClient,
            delete,
            api::DeleteRequest {
                kind: "Nope".into(),
                ..Default::default()
            }
        ),
        ("Resources", "Get") => c!(
            ResourcesClient,
            get,
            api::GetRequest {
                kind: "Service".into(),
                name: "none".into(),
                consistent: false
            }
        ),
        ("Resources", "List") => c!(ResourcesClient, list, api::ListRequest::default()),
        ("Resources", "Watch") => c!(ResourcesClient, watch, api::WatchRequest::default()),
        ("Keys", "Create") => c!(KeysClient, create, api::CreateKeyRequest::default()),
        ("Keys", "List") => c!(KeysClient, list, api::ListKeysRequest::default()),
        ("Keys", "Revoke") => c!(KeysClient, revoke, api::RevokeKeyRequest { id: "x".into() }),
        ("Keys", "Rotate") => c!(
            KeysClient,
            rotate,
            api::RotateKeyRequest {
                id: "x".into(),
                ..Default::default()
            }
        ),
        ("Tokens", "Create") => c!(
            TokensClient,
            create,
            api::CreateTokenRequest {
                name: "x".into(),
                role: "nope".into()
            }
        ),
        ("Tokens", "List") => c!(TokensClient, list, api::ListTokensRequest {}),
        ("Tokens", "Revoke") => c!(
            TokensClient,
            revoke,
            api::RevokeTokenRequest {
                id: "no-such-token".into()
            }
        ),
        ("Audit", "List") => c!(AuditClient, list, api::ListAuditRequest::default()),
        ("Secrets", "Rekey") => c!(SecretsClient, rekey, api::RekeyRequest {}),
        ("Limits", "Usage") => c!(
            LimitsClient,
            usage,
            api::LimitUsageRequest {
                limit: "none".into(),
                ..Default::default()
            }
        ),
        ("Usage", "QuerySpend") => c!(UsageClient, query_spend, api::QuerySpendRequest::default()),
        ("Usage", "Budgets") => c!(UsageClient, budgets, api::BudgetsRequest::default()),
        other => panic!("no call written for {other:?}: add it to RPC_ROLES and call()"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_rpc_enforces_its_role_and_changes_are_audited() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let admin = cluster.client_of(1);
    let editor = admin
        .create_token("ci-editor", "editor")
        .await
        .expect("token");
    let viewer = admin
        .create_token("dashboard", "viewer")
        .await
        .expect("token");
    assert!(editor.token.starts_with("kadm_"));

    // Every RPC of the admin API is in the table (a new one must say who may call it).
    let fds: prost_types::FileDescriptorSet =
        prost::Message::decode(konnect_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in fds
        .file
        .iter()
        .filter(|f| f.package() == "konnect.admin.v1")
    {
        for s in &file.service {
            for m in &s.method {
                rpcs.push((s.name().to_string(), m.name().to_string()));
            }
        }
    }
    rpcs.retain(|(s, m)| !(s == "Cluster" && m == "Init"));
    for (s, m) in &rpcs {
        assert!(
            RPC_ROLES.iter().any(|(ts, tm, _)| ts == s && tm == m),
            "{s}.{m} is missing from RPC_ROLES"
        );
    }
    assert_eq!(rpcs.len(), RPC_ROLES.len());

    let channel = tonic::transport::Endpoint::from_shared(cluster.nodes[0].admin_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let rank = |r: &str| {
        ["viewer", "editor", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let tokens = [
        ("viewer", viewer.token.clone()),
        ("editor", editor.token.clone()),
        ("admin", cluster.token.clone().unwrap()),
    ];
    for (service, method, needs) in RPC_ROLES {
        for (role, token) in &tokens {
            let got = call(channel.clone(), token, service, method).await;
            let allowed = rank(role) >= rank(needs);
            if allowed {
                assert!(
                    !matches!(
                        got,
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    ),
                    "{service}.{method} refused the {role} role ({got:?})"
                );
            } else {
                assert_eq!(
                    got,
                    tonic::Code::PermissionDenied,
                    "{service}.{method} with the {role} role"
                );
            }
        }
        let got = call(channel.clone(), "kadm_wrong", service, method).await;
        assert_eq!(
            got,
            tonic::Code::Unauthenticated,
            "{service}.{method} with a wrong token"
        );
    }

    // An editor changes configuration but may not set secrets; the admin may.
    let as_editor = Client::new(
        vec![cluster.nodes[0].admin_url()],
        Some(editor.token.clone()),
    )
    .unwrap();
    as_editor
        .apply(vec![resource("Consumer", "carol", json!({}))], vec![])
        .await
        .expect("editor writes config");
    let (cert, key) = {
        let c = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let cert_res = resource(
        "Certificate",
        "a",
        json!({"cert_pem": cert, "key_pem": key, "snis": ["a.test"]}),
    );
    let err = as_editor
        .apply(vec![cert_res.clone()], vec![])
        .await
        .expect_err("no secrets for editors");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.to_string().contains("key_pem") && !err.to_string().contains("PRIVATE KEY"),
        "{err}"
    );
    admin
        .apply(vec![cert_res], vec![])
        .await
        .expect("admin sets secrets");

    // The last admin token cannot be revoked; others can, and stop working at once.
    let tokens = admin.list_tokens().await.unwrap().tokens;
    let first = tokens.iter().find(|t| t.role == "admin").unwrap();
    let err = admin.revoke_token(&first.id).await.expect_err("last admin");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    admin
        .revoke_token(&viewer.info.as_ref().unwrap().id)
        .await
        .expect("revoke viewer");
    let as_viewer = Client::new(
        vec![cluster.nodes[0].admin_url()],
        Some(viewer.token.clone()),
    )
    .unwrap();
    assert_eq!(
        as_viewer.status().await.expect_err("revoked").code(),
        tonic::Code::Unauthenticated
    );

    // The audit log names who did what, in order.
    let audit = admin
        .list_audit(konnect_proto::admin::v1::ListAuditRequest::default())
        .await
        .unwrap()
        .entries;
    let lines: Vec<String> = audit
        .iter()
        .map(|e| {
            let what: Vec<String> = e
                .changes
                .iter()
                .map(|c| format!("{}/{}", c.kind, c.name))
                .collect();
            format!(
                "{} {} {}{}",
                e.actor_name,
                e.action,
                what.join(","),
                e.detail
            )
        })
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in {lines:#?}"))
    };
    let created = find("initial-admin token.create token");
    let carol = find("ci-editor resources.apply Consumer/carol");
    let cert = find("initial-admin resources.apply Certificate/a");
    let revoked = find("initial-admin token.revoke");
    assert!(
        created < carol && carol < cert && cert < revoked,
        "{lines:#?}"
    );
    assert!(audit.windows(2).all(|w| w[0].revision <= w[1].revision));
    assert!(audit.iter().all(|e| e.leader_time_unix_ms > 0));
}

fn ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cn: &str,
    sans: Vec<String>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// One HTTP/1.1 GET over TLS, optionally with a client certificate; `None` if the handshake
/// or the request fails.
async fn tls_get(
    addr: &str,
    ca_pem: &str,
    client: Option<&(String, String)>,
    path: &str,
) -> Option<(u16, String)> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("gateway.test").unwrap();
    let mut s = connector.connect(name, tcp).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    // TLS 1.3 reports a refused client certificate only on the first read.
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_the_ca_name_consumers() {
    let up = Upstream::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let client_ca = ca();
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, client_ca.pem()).unwrap();
    let server_ca = ca();
    let (server_cert, server_key) = leaf(&server_ca, "gateway", vec!["gateway.test".into()]);
    let tls_port = free_ports(1)[0].to_string();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let cluster = Cluster::start_initialised(
        1,
        &[
            "--proxy-tls-addr",
            &tls_addr,
            "--proxy-client-ca",
            ca_file.to_str().unwrap(),
        ],
    )
    .await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Consumer", "alice", json!({"mtls_subjects": ["spiffe://corp/alice"]})),
                resource("Service", "echo", json!({"targets": [{"url": up.url()}]})),
                resource("Certificate", "gw", json!({"cert_pem": server_cert, "key_pem": server_key, "snis": ["gateway.test"]})),
                resource("Route", "m", json!({"paths": ["/m"], "service": "echo", "auth": {"mtls": true}})),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let server_ca_pem = server_ca.pem();
    // Known by a URI SAN listed in mtls_subjects.
    let alice = leaf(&client_ca, "laptop-17", vec!["spiffe://corp/alice".into()]);
    let (status, text) = wait_for(
        "the mTLS route to serve alice",
        Duration::from_secs(10),
        || async {
            tls_get(&tls_addr, &server_ca_pem, Some(&alice), "/m")
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains(r#""x-consumer-name":"alice""#), "{text}");
    assert!(text.contains(r#""x-credential":"mtls""#), "{text}");
    // A certificate from the CA that names nobody, and no certificate at all: 401.
    let stranger = leaf(&client_ca, "mallory", vec![]);
    assert_eq!(
        tls_get(&tls_addr, &server_ca_pem, Some(&stranger), "/m")
            .await
            .map(|r| r.0),
        Some(401)
    );
    assert_eq!(
        tls_get(&tls_addr, &server_ca_pem, None, "/m")
            .await
            .map(|r| r.0),
        Some(401)
    );
    // A certificate from another CA does not get past the handshake.
    let other = leaf(&ca(), "alice", vec!["spiffe://corp/alice".into()]);
    assert_eq!(
        tls_get(&tls_addr, &server_ca_pem, Some(&other), "/m").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_and_body_schemas_guard_routes() {
    let up = Upstream::start("echo").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("Service", "echo", json!({"targets": [{"url": up.url()}]})),
                resource(
                    "Route",
                    "blocked",
                    json!({"paths": ["/blocked"], "service": "echo",
                    "ip_restriction": {"deny": ["127.0.0.0/8"]}}),
                ),
                resource(
                    "Route",
                    "orders",
                    json!({"paths": ["/orders"], "service": "echo",
                    "validate": {"content_types": ["application/json"], "json_schema": {
                        "type": "object", "required": ["qty"],
                        "properties": {"qty": {"type": "integer", "minimum": 1}}}}}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    let r = until_status(&proxy, "/blocked", &[], 403).await;
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let json_ct = [("content-type", "application/json")];
    let ok = wait_for("the orders route", Duration::from_secs(10), || async {
        let r = http("POST", &proxy, "/orders", &json_ct, r#"{"qty": 3}"#).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(ok.json()["body_len"], 10);
    let r = http("POST", &proxy, "/orders", &json_ct, r#"{"qty": 0}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "schema_violation");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/qty"));
    let r = http(
        "POST",
        &proxy,
        "/orders",
        &[("content-type", "text/plain")],
        "qty=3",
    )
    .await;
    assert_eq!(r.status, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_from_a_provider_name_consumers_by_claim() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let up = Upstream::start("echo").await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    let secret = "an-hmac-secret-of-at-least-32-bytes!!";
    cluster
        .client_of(1)
        .apply(
            vec![
                resource("JwtProvider", "idp", json!({"issuer": "https://idp.test", "audiences": ["api"], "hmac_secret": secret})),
                resource("Consumer", "alice", json!({"jwt_subjects": ["user-42"]})),
                resource("Service", "echo", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "j", json!({"paths": ["/j"], "service": "echo", "auth": {"jwt": ["idp"]}})),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |claims: serde_json::Value, key: &str| {
        let t = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}")
    };
    let good = token(
        json!({"iss": "https://idp.test", "aud": "api", "sub": "user-42", "exp": now + 600}),
        secret,
    );
    let r = until_status(&proxy, "/j", &[("authorization", &good)], 200).await;
    assert_eq!(r.json()["headers"]["x-consumer-name"], "alice");
    assert_eq!(r.json()["headers"]["x-credential"], "jwt:idp");
    assert!(r.json()["headers"].get("authorization").is_none());
    let refused = [
        token(
            json!({"iss": "https://idp.test", "aud": "api", "sub": "user-42", "exp": now - 600}),
            secret,
        ),
        token(
            json!({"iss": "https://other.test", "aud": "api", "sub": "user-42", "exp": now + 600}),
            secret,
        ),
        token(
            json!({"iss": "https://idp.test", "aud": "web", "sub": "user-42", "exp": now + 600}),
            secret,
        ),
        token(
            json!({"iss": "https://idp.test", "aud": "api", "sub": "user-42", "exp": now + 600}),
            "a-different-secret-also-32-bytes-long",
        ),
        token(
            json!({"iss": "https://idp.test", "aud": "api", "sub": "nobody", "exp": now + 600}),
            secret,
        ),
        // alg none: header {"alg":"none"}, no signature.
        format!("Bearer eyJhbGciOiJub25lIn0.{}.", {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"iss": "https://idp.test", "aud": "api", "sub": "user-42", "exp": now + 600}).to_string())
        }),
    ];
    for t in &refused {
        let r = http("GET", &proxy, "/j", &[("authorization", t)], "").await;
        assert_eq!(r.status, 401, "{t}");
        assert!(r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
    // The provider's secret is never shown.
    let stored = cluster
        .client_of(1)
        .get("JwtProvider", "idp", false)
        .await
        .unwrap();
    assert_eq!(
        konnect_proto::json::struct_to_json(stored.spec.as_ref().unwrap())["hmac_secret"],
        "<redacted>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_mask_keys_and_configured_patterns() {
    let up = Upstream::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cluster = Cluster::start_initialised(1, &["--access-log", log.to_str().unwrap()]).await;
    let client = cluster.client_of(1);
    client
        .apply(
            vec![
                resource("LogRedaction", "pci", json!({"patterns": [r"\b\d(?:[ -]?\d){12,15}\b"], "query_params": ["ssn"]})),
                resource("Consumer", "alice", json!({})),
                resource("Service", "echo", json!({"targets": [{"url": up.url()}]})),
                resource("Route", "pay", json!({"paths": ["/pay"], "service": "echo", "auth": {"key": true, "key_query": "k"}})),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let proxy = cluster.proxy_addr(1).await;
    let key = client.create_key("alice", None, "").await.unwrap().key;
    // Once the configuration (and with it the redaction rules) is live...
    until_status(&proxy, "/pay/x", &[("x-api-key", &key)], 200).await;
    let path = format!("/pay/4111-1111-1111-1111?k={key}&ssn=078-05-1120&page=2");
    assert_eq!(http("GET", &proxy, &path, &[], "").await.status, 200);
    let text = wait_for("the access log line", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("page=2").then_some(text)
    })
    .await;
    assert!(!text.contains(&key[4..]), "key in the access log: {text}");
    assert!(
        !text.contains("4111-1111"),
        "card number in the access log: {text}"
    );
    assert!(!text.contains("078-05"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("page=2"))
        .expect("the line");
    assert!(
        line.contains("k=[redacted]") && line.contains("page=2"),
        "{line}"
    );
    assert!(line.contains("/pay/[redacted]"), "{line}");
    assert!(line.contains("\"consumer\":\"alice\""), "{line}");
}
