use tokio::time::Instant;

use zeroize::Zeroizing;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion};
use tokio::sync::mpsc::unbounded_channel;

use super::connection::describe;
use super::*;
use crate::config::SecretKeys;
use crate::session::seal::KeyRing;
use crate::store::FeedEvent;
use crate::store::IdMatch;
use crate::store::conformance::{self, CrossHandle};
use crate::store::feed::changed_text;
use crate::store::id::SessionId;

const NOW: UnixTime = 1_900_000_000;

/// The Redis to test against, or `None` (saying so once) when none is set.
fn test_url() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: set PORTCULLIS_TEST_REDIS_URL to run the Redis store tests");
            None
        }
    }
}

/// A key prefix of a test's own, so that tests run in parallel on one Redis. Its
/// keys are removed when it drops, after a failed assertion too.
struct TestPrefix {
    url: String,
    prefix: String,
}

impl TestPrefix {
    fn new(url: &str) -> Self {
        let random = crate::random::hex(&crate::random::random_bytes::<6>());
        Self {
            url: url.to_owned(),
            prefix: format!("t{random}"),
        }
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.url, &self.prefix).await.unwrap()
    }

    async fn admin(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// Every key under the prefix.
    async fn keys(&self, admin: &mut MultiplexedConnection) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(admin)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.pattern())
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(&keys).exec(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// Polls `condition` until it holds, for at most 10 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn new_session(user: &User, id: &SessionId, tokens: TokenSet) -> NewSession {
    NewSession {
        family_id: crate::random::new_uuid(),
        id_hash: id.hash(),
        user_id: user.id,
        provider_sid: Some("provider-sid".into()),
        created_at: NOW,
        idle_expires_at: NOW + 3600,
        absolute_expires_at: NOW + 86_400,
        tokens,
        user_agent: Some("redis tests".into()),
        claims: r#"{"sub":"s"}"#.into(),
        email_verified: true,
        provider_id: "default".into(),
    }
}

async fn new_user(store: &RedisStore) -> User {
    store
        .upsert_user(
            "https://issuer.example",
            &format!("sub-{}", crate::random::random_token()),
            &UserProfile::default(),
            NOW,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_passes_the_conformance_suite() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn two_redis_handles_pass_the_shared_suite() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let (a, b) = (t.store().await, t.store().await);
    conformance::run_shared(&a, &b, CrossHandle::Precise).await;
}

#[tokio::test]
async fn a_dropped_feed_connection_resets_and_recovers() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let mut sub = store.feed().subscribe();
    wait_until("the feed is live", || store.feed().is_live()).await;

    // Only this store's feed connection: it is named after the prefix.
    let mut admin = t.admin().await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let name = format!("name={}:feed:", t.prefix);
    let ours: Vec<&str> = clients
        .lines()
        .filter(|line| line.split(' ').any(|field| field.starts_with(&name)))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(ours.len(), 1, "one feed connection named {name}: {clients}");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ours[0])
        .exec_async(&mut admin)
        .await
        .unwrap();

    assert_eq!(conformance::next_event(&mut sub).await, FeedEvent::Reset);
    wait_until("the feed is live again", || store.feed().is_live()).await;

    let user = new_user(&store).await;
    let id = SessionId::generate();
    let session = new_session(&user, &id, TokenSet::default());
    store.create_session(&session).await.unwrap();
    assert!(store.delete_session(session.family_id).await.unwrap());
    loop {
        match conformance::next_event(&mut sub).await {
            // The reconnection announces a reset of its own.
            FeedEvent::Reset | FeedEvent::Heartbeat { .. } | FeedEvent::UserChanged(_) => {
                continue;
            }
            FeedEvent::Changed(c) => {
                assert_eq!(c.family_id, session.family_id);
                assert_eq!(c.id_hashes, vec![id.hash()]);
                break;
            }
        }
    }
    assert!(store.feed().is_live());
}

/// The scripts publish exactly what `feed::changed_text` writes.
#[tokio::test]
async fn scripts_publish_the_feed_wire_format() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let (sender, mut pushes) = unbounded_channel();
    let info = url.as_str().into_connection_info().unwrap();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(resp3);
    let mut listener = redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_push_sender(sender),
        )
        .await
        .unwrap();
    listener
        .subscribe(format!("{}:feed", t.prefix))
        .await
        .unwrap();
    let mut next_change = async || loop {
        let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(m) = redis::Msg::from_push_info(push) {
            let text: String = m.get_payload().unwrap();
            if !text.starts_with("h ") {
                return text;
            }
        }
    };

    let user = new_user(&store).await;
    let old = SessionId::generate();
    let s = new_session(&user, &old, TokenSet::default());
    store.create_session(&s).await.unwrap();
    assert!(
        store
            .update_tokens(s.family_id, 0, &s.tokens)
            .await
            .unwrap()
    );
    assert_eq!(
        next_change().await,
        changed_text(s.family_id, &[&old.hash()])
    );
    let new = SessionId::generate();
    let rotated = store
        .rotate_session_id(s.family_id, 1, &new.hash(), NOW + 30, "h", &s.tokens, false)
        .await
        .unwrap();
    assert!(rotated);
    assert_eq!(
        next_change().await,
        changed_text(s.family_id, &[&new.hash(), &old.hash()])
    );
    assert!(store.delete_session(s.family_id).await.unwrap());
    assert_eq!(
        next_change().await,
        changed_text(s.family_id, &[&new.hash(), &old.hash()])
    );
}

/// What a dump of the store shows: every key with its type and contents.
async fn dump(t: &TestPrefix) -> Vec<(String, String, String)> {
    let mut admin = t.admin().await;
    let mut out = Vec::new();
    for key in t.keys(&mut admin).await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let contents: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut admin)
                    .await
                    .unwrap(),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut admin)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut admin)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut admin)
                .await
                .unwrap(),
            other => panic!("{key}: unexpected type {other}"),
        };
        out.push((key, kind, contents.join("\n")));
    }
    out
}

/// Writes of every kind, with a real key ring: returns the session ids and the
/// plaintexts that must never reach Redis, and the sealed values that must.
async fn write_everything(store: &RedisStore) -> (Vec<SessionId>, Vec<String>, Vec<String>) {
    let ring = KeyRing::new(&SecretKeys(vec![Zeroizing::new([7u8; 32])])).unwrap();
    let secret = |label: &str| format!("{label}-{}", crate::random::random_token());
    let sealed_set = |plain: &[String; 3]| TokenSet {
        refresh_token: Some(ring.seal_str(&plain[0], b"refresh")),
        access_token: Some(ring.seal_str(&plain[1], b"access")),
        id_token: Some(ring.seal_str(&plain[2], b"id")),
        access_expires_at: Some(NOW + 300),
        refresh_expires_at: Some(NOW + 7200),
        access_issued_at: Some(NOW),
        granted_scope: None,
    };
    let first = [secret("refresh"), secret("access"), secret("idtoken")];
    let second = [secret("refresh"), secret("access"), secret("idtoken")];
    let third = [secret("refresh"), secret("access"), secret("idtoken")];

    let user = new_user(store).await;
    let old = SessionId::generate();
    let s = new_session(&user, &old, sealed_set(&first));
    store.create_session(&s).await.unwrap();
    store
        .touch_session(s.family_id, NOW + 5, NOW + 3605, Some(&old.hash()))
        .await
        .unwrap();
    assert!(
        store
            .update_tokens(s.family_id, 0, &sealed_set(&second))
            .await
            .unwrap()
    );
    let new = SessionId::generate();
    let handover = crate::session::handover::seal(&old, &new);
    let last = sealed_set(&third);
    assert!(
        store
            .rotate_session_id(
                s.family_id,
                1,
                &new.hash(),
                NOW + 30,
                &handover,
                &last,
                false
            )
            .await
            .unwrap()
    );
    store
        .touch_session(s.family_id, NOW + 6, NOW + 3606, Some(&new.hash()))
        .await
        .unwrap();

    let verifier = secret("pkce-verifier");
    let tx = LoginTransaction {
        state_hash: crate::random::sha256_hex(b"state"),
        binding_hash: crate::random::sha256_hex(b"binding"),
        nonce: "nonce".into(),
        verifier: ring.seal_str(&verifier, b"verifier"),
        return_to: "/".into(),
        created_at: NOW,
        expires_at: NOW + 600,
        provider_id: "default".into(),
    };
    store
        .put_transaction(&tx, TransactionLimits::default())
        .await
        .unwrap();
    assert!(
        store
            .acquire_lease("refresh-lease", "me", NOW, NOW + 6)
            .await
            .unwrap()
    );
    assert!(store.remember_once("jti-1", NOW, NOW + 60).await.unwrap());

    let mut plaintexts: Vec<String> = [first, second, third].concat();
    plaintexts.push(verifier);
    let mut stored = vec![
        old.hash().as_str().to_owned(),
        new.hash().as_str().to_owned(),
    ];
    stored.extend(
        [&last.refresh_token, &last.access_token, &last.id_token]
            .into_iter()
            .flatten()
            .map(|s| s.as_stored().to_owned()),
    );
    stored.push(tx.verifier.as_stored().to_owned());
    let key = SigningKeyRecord {
        generation: 1,
        kid: "k1".into(),
        sealed_key: ring.seal(b"private key", b"signing-key:k1"),
        created_at: NOW,
    };
    assert!(store.add_signing_key(&key).await.unwrap());
    stored.push(key.sealed_key.as_stored().to_owned());
    (vec![old, new], plaintexts, stored)
}

#[tokio::test]
async fn nothing_in_clear() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let (ids, plaintexts, stored) = write_everything(&store).await;
    let everything: String = dump(&t)
        .await
        .into_iter()
        .map(|(key, kind, contents)| format!("{key} {kind}\n{contents}\n"))
        .collect();
    for id in &ids {
        assert!(
            !everything.contains(id.expose()),
            "a session id is in the store"
        );
    }
    for plain in &plaintexts {
        assert!(
            !everything.contains(plain.as_str()),
            "{plain} is in the store"
        );
    }
    // The dump is not empty by accident: what the store was given is there.
    for value in &stored {
        assert!(everything.contains(value.as_str()), "{value} is missing");
    }
}

#[tokio::test]
async fn every_key_but_users_and_signing_keys_expires() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    write_everything(&store).await;
    let mut admin = t.admin().await;
    let keys = t.keys(&mut admin).await;
    let p = &t.prefix;
    for kind in [
        "user:",
        "user_by_sub:",
        "users",
        "session:",
        "sid:",
        "user_sessions:",
        "psid:",
        "sessions",
        "tx:",
        "tx_by_binding:",
        "tx_all",
        "tx_expiry",
        "lease:",
        "replay:",
        "signing_keys",
    ] {
        let stem = format!("{p}:{kind}");
        assert!(
            keys.iter().any(|k| k.starts_with(&stem)),
            "no {stem} key in {keys:?}"
        );
    }
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let is_user = key.starts_with(&format!("{p}:user:"))
            || key.starts_with(&format!("{p}:user_by_sub:"))
            || *key == format!("{p}:users");
        if is_user || *key == format!("{p}:signing_keys") {
            assert_eq!(ttl, -1, "{key}: users and signing keys never expire");
        } else {
            assert!(ttl > 0, "{key} has no TTL ({ttl})");
        }
        // A TTL never collects what is still valid at the caller's clock: at least
        // the time left to the deadline, counted from the last write.
        let at_least_seconds = [
            ("session:", 3600),
            ("sid:", 3600),
            ("tx:", 600),
            ("lease:", 6),
            ("replay:", 60),
        ];
        for (stem, seconds) in at_least_seconds {
            if key.starts_with(&format!("{p}:{stem}")) {
                assert!(ttl > seconds * 1000, "{key}: TTL {ttl} ms is too short");
            }
        }
    }
}

/// Only the current and the previous id find a session: not the id two rotations
/// back, and not an index entry that names the session by a hash it does not hold.
#[tokio::test]
async fn only_current_and_previous_ids_find_a_session() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let user = new_user(&store).await;
    let first = SessionId::generate();
    let s = new_session(&user, &first, TokenSet::default());
    store.create_session(&s).await.unwrap();
    let (second, third) = (SessionId::generate(), SessionId::generate());
    for (version, id) in [(0, &second), (1, &third)] {
        assert!(
            store
                .rotate_session_id(
                    s.family_id,
                    version,
                    &id.hash(),
                    NOW + 30,
                    "h",
                    &s.tokens,
                    false
                )
                .await
                .unwrap()
        );
    }
    assert!(store.get_session(&first.hash()).await.unwrap().is_none());
    let by_second = store.get_session(&second.hash()).await.unwrap().unwrap();
    assert_eq!(by_second.matched, IdMatch::Previous);

    let stray = SessionId::generate();
    let mut admin = t.admin().await;
    redis::cmd("SET")
        .arg(format!("{}:sid:{}", t.prefix, stray.hash()))
        .arg(s.family_id.to_string())
        .exec_async(&mut admin)
        .await
        .unwrap();
    assert!(store.get_session(&stray.hash()).await.unwrap().is_none());
}

/// Values that do not parse are reported as corrupt, never trusted or panicked on.
#[tokio::test]
async fn corrupt_records_are_reported() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let user = new_user(&store).await;
    let id = SessionId::generate();
    let s = new_session(&user, &id, TokenSet::default());
    store.create_session(&s).await.unwrap();
    let mut admin = t.admin().await;
    let key = format!("{}:session:{}", t.prefix, s.family_id);
    for (field, value) in [("current_seen", "yes"), ("idle_expires_at", "soon")] {
        redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .exec_async(&mut admin)
            .await
            .unwrap();
        assert!(
            matches!(
                store.get_session(&id.hash()).await,
                Err(StoreError::Corrupt(_))
            ),
            "{field} = {value}"
        );
    }
    // Decided in Lua: a deadline that is not a number stops the write.
    assert!(matches!(
        store.touch_session(s.family_id, NOW, NOW + 10, None).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn debug_shows_no_password() {
    let info = "redis://user:hunter2@cache.internal:6380/3"
        .into_connection_info()
        .unwrap();
    assert_eq!(describe(&info), "redis://cache.internal:6380/3");
    let tls = "rediss://:hunter2@cache.internal/0"
        .into_connection_info()
        .unwrap();
    assert_eq!(describe(&tls), "rediss://cache.internal:6379/0");
}

/// A session written before several providers has no `provider_id` field: it is the
/// `default` provider's.
#[tokio::test]
async fn a_session_from_before_several_providers_is_defaults() {
    let Some(url) = test_url() else { return };
    let t = TestPrefix::new(&url);
    let store = t.store().await;
    let user = new_user(&store).await;
    let id = SessionId::generate();
    let mut s = new_session(&user, &id, TokenSet::default());
    s.provider_id = "partner".into();
    store.create_session(&s).await.unwrap();
    let got = store.get_session_fresh(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.provider_id, "partner");
    let mut admin = t.admin().await;
    let key = format!("{}:session:{}", t.prefix, s.family_id);
    let removed: i64 = redis::cmd("HDEL")
        .arg(&key)
        .arg("provider_id")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the field is where the store keeps it ({key})");
    let got = store.get_session_fresh(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.provider_id, "default");
    // An identity from before kinds were kept (no `kind` field) is a user, found by the
    // key it was made under, and a client of the same subject is another identity.
    let user_key = format!("{}:user:{}", t.prefix, user.id);
    let _: i64 = redis::cmd("HDEL")
        .arg(&user_key)
        .arg("kind")
        .query_async(&mut admin)
        .await
        .unwrap();
    let again = store
        .upsert_identity(&user.issuer, IdentityKind::User, &user.subject, None, 9)
        .await
        .unwrap();
    assert_eq!((again.id, again.kind), (user.id, IdentityKind::User));
    let client = store
        .upsert_identity(&user.issuer, IdentityKind::Client, &user.subject, None, 9)
        .await
        .unwrap();
    assert_ne!(client.id, user.id);
}
