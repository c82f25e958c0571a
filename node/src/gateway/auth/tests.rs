//! Unit tests of the access phases on hand-built identities (no network).

use super::*;
use crate::resources::access::AuthSpec;

fn identities(now: u64) -> (Identities, String, String) {
    let mut ids = Identities::default();
    let alice = Arc::new(ConsumerEntry::new(
        "alice".into(),
        Some("research".into()),
        vec!["beta".into()],
    ));
    ids.consumers.insert("alice".into(), alice.clone());
    ids.by_mtls_subject
        .insert("alice.example".into(), alice.clone());
    let live = api_key::generate();
    let expired = api_key::generate();
    for (k, exp) in [(&live, None), (&expired, Some(now - 1))] {
        ids.keys.insert(
            api_key::hash_key(&k.key),
            KeyEntry {
                id: k.id.clone(),
                consumer: alice.clone(),
                credential: Credential::api_key(&k.id),
                expires_unix_ms: exp,
                last_used: Arc::new(AtomicU64::new(0)),
            },
        );
    }
    (ids, live.key, expired.key)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn key_auth() -> AuthSpec {
    AuthSpec {
        key: true,
        key_header: Some("x-token".into()),
        key_query: Some("apikey".into()),
        ..Default::default()
    }
}

fn reason(r: Result<Option<Caller>, GatewayError>) -> &'static str {
    match r {
        Err(GatewayError::Unauthorized { reason, .. }) => reason,
        Err(e) => panic!("unexpected error {e}"),
        Ok(c) => panic!("accepted as {c:?}"),
    }
}

#[tokio::test]
async fn keys_are_accepted_from_every_documented_place() {
    let now = 1_800_000_000_000;
    let (ids, key, _) = identities(now);
    let auth = key_auth();
    let bearer = format!("Bearer {key}");
    for (h, q) in [
        (headers(&[("authorization", &bearer)]), None),
        (headers(&[("x-api-key", &key)]), None),
        (headers(&[("x-token", &key)]), None),
        (HeaderMap::new(), Some(format!("a=1&apikey={key}"))),
    ] {
        let caller = authenticate(&auth, &ids, &h, q.as_deref(), None, now)
            .await
            .unwrap()
            .expect("identified");
        assert_eq!(caller.consumer.name, "alice");
        assert!(caller.credential.label.starts_with("key:"));
    }
    // The key's last use is recorded locally for the batched report.
    let entry = ids
        .keys
        .values()
        .find(|k| k.expires_unix_ms.is_none())
        .unwrap();
    assert_eq!(entry.last_used.load(Ordering::Relaxed), now);
}

#[tokio::test]
async fn every_way_of_being_wrong_is_a_401() {
    let now = 1_800_000_000_000;
    let (ids, key, expired) = identities(now);
    let auth = key_auth();
    let none = authenticate(&auth, &ids, &HeaderMap::new(), None, None, now).await;
    assert!(matches!(
        none,
        Err(GatewayError::Unauthorized { invalid: false, .. })
    ));
    assert_eq!(
        reason(
            authenticate(
                &auth,
                &ids,
                &headers(&[("x-api-key", &expired)]),
                None,
                None,
                now
            )
            .await
        ),
        "expired_key"
    );
    let mut other = key.clone();
    other.replace_range(10..11, if &key[10..11] == "0" { "1" } else { "0" });
    assert_eq!(
        reason(
            authenticate(
                &auth,
                &ids,
                &headers(&[("x-api-key", &other)]),
                None,
                None,
                now
            )
            .await
        ),
        "unknown_key"
    );
    assert_eq!(
        reason(
            authenticate(
                &auth,
                &ids,
                &headers(&[("x-api-key", "hunter2")]),
                None,
                None,
                now
            )
            .await
        ),
        "malformed_key"
    );
    let huge = "k".repeat(64 * 1024);
    assert_eq!(
        reason(
            authenticate(
                &auth,
                &ids,
                &headers(&[("x-api-key", &huge)]),
                None,
                None,
                now
            )
            .await
        ),
        "malformed_key"
    );
}

#[tokio::test]
async fn optional_auth_lets_anonymous_through_but_not_a_bad_key() {
    let now = 1_800_000_000_000;
    let (ids, _, expired) = identities(now);
    let auth = AuthSpec {
        optional: true,
        ..key_auth()
    };
    assert!(
        authenticate(&auth, &ids, &HeaderMap::new(), None, None, now)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        reason(
            authenticate(
                &auth,
                &ids,
                &headers(&[("x-api-key", &expired)]),
                None,
                None,
                now
            )
            .await
        ),
        "expired_key"
    );
}

#[tokio::test]
async fn client_certificates_name_consumers_by_subject() {
    let now = 1_800_000_000_000;
    let (ids, _, _) = identities(now);
    let auth = AuthSpec {
        mtls: true,
        ..Default::default()
    };
    let known = ClientCert {
        subjects: vec!["CN-less".into(), "alice.example".into()],
    };
    let caller = authenticate(&auth, &ids, &HeaderMap::new(), None, Some(&known), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.consumer.name, "alice");
    let stranger = ClientCert {
        subjects: vec!["mallory".into()],
    };
    assert_eq!(
        reason(authenticate(&auth, &ids, &HeaderMap::new(), None, Some(&stranger), now).await),
        "unknown_certificate_subject"
    );
    assert_eq!(
        reason(authenticate(&auth, &ids, &HeaderMap::new(), None, None, now).await),
        "no_credentials"
    );
}

fn access(
    acl: Option<AclSpec>,
    ip: Option<IpRestriction>,
    v: Option<RequestValidation>,
) -> RouteAccess {
    RouteAccess::compile(Some(&key_auth()), acl.as_ref(), ip.as_ref(), v.as_ref())
        .unwrap()
        .unwrap()
}

#[test]
fn acl_refuses_anonymous_with_401_and_strangers_with_403() {
    let a = access(
        Some(AclSpec {
            groups: vec!["admins".into()],
            ..Default::default()
        }),
        None,
        None,
    );
    assert!(matches!(
        authorize(&a, None),
        Err(GatewayError::Unauthorized { .. })
    ));
    let caller = Caller {
        consumer: Arc::new(ConsumerEntry::new("bob".into(), None, vec!["beta".into()])),
        credential: Credential::client_cert(),
    };
    assert!(matches!(
        authorize(&a, Some(&caller)),
        Err(GatewayError::Forbidden { .. })
    ));
}

#[test]
fn ip_lists_deny_first_then_allow() {
    let a = access(
        None,
        Some(IpRestriction {
            allow: vec!["10.0.0.0/8".into()],
            deny: vec!["10.1.0.0/16".into()],
        }),
        None,
    );
    assert!(restrict_ip(&a, "10.2.3.4".parse().unwrap()).is_ok());
    assert!(restrict_ip(&a, "10.1.3.4".parse().unwrap()).is_err());
    assert!(restrict_ip(&a, "192.168.1.1".parse().unwrap()).is_err());
}

#[test]
fn credentials_and_spoofed_identity_headers_never_reach_the_upstream() {
    let a = access(None, None, None);
    let mut h = headers(&[
        ("authorization", "Bearer knk_x"),
        ("x-api-key", "knk_x"),
        ("x-token", "knk_x"),
        ("x-consumer-name", "admin"),
        ("accept", "text/plain"),
    ]);
    let caller = Caller {
        consumer: Arc::new(ConsumerEntry::new(
            "alice".into(),
            Some("research".into()),
            vec!["a".into(), "b".into()],
        )),
        credential: Credential::api_key("abc"),
    };
    let q = prepare_identity_headers(&a, Some(&caller), &mut h, Some("x=1&apikey=knk_x&y=2"));
    assert_eq!(q, Some(Some("x=1&y=2".into())));
    assert!(h.get("authorization").is_none() && h.get("x-api-key").is_none());
    assert!(h.get("x-token").is_none());
    assert_eq!(h["x-consumer-name"], "alice");
    assert_eq!(h["x-consumer-team"], "research");
    assert_eq!(h["x-consumer-groups"], "a,b");
    assert_eq!(h["x-credential"], "key:abc");
    assert_eq!(h["accept"], "text/plain");
    let mut anon = headers(&[("x-consumer-name", "admin")]);
    prepare_identity_headers(&a, None, &mut anon, None);
    assert!(anon.get("x-consumer-name").is_none());
}

#[test]
fn bodies_are_checked_for_type_and_schema() {
    let a = access(
        None,
        None,
        Some(RequestValidation {
            content_types: vec!["application/json".into()],
            json_schema: Some(serde_json::json!({
                "type": "object",
                "required": ["qty"],
                "properties": {"qty": {"type": "integer", "minimum": 1}}
            })),
        }),
    );
    let json = headers(&[("content-type", "application/json; charset=utf-8")]);
    assert!(check_content_type(&a, &json, true).is_ok());
    let xml = headers(&[("content-type", "application/xml")]);
    assert!(matches!(
        check_content_type(&a, &xml, true),
        Err(GatewayError::UnsupportedMediaType { .. })
    ));
    assert!(check_content_type(&a, &xml, false).is_ok());
    assert!(check_schema(&a, br#"{"qty": 2}"#).is_ok());
    match check_schema(&a, br#"{"qty": 0}"#) {
        Err(GatewayError::SchemaViolation { location, .. }) => assert_eq!(location, "/qty"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        check_schema(&a, b"{not json"),
        Err(GatewayError::BadRequest(_))
    ));
}
