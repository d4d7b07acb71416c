//! Sessions: the round trip, compare-and-swap, rotation and its lost case, ending.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

pub(super) async fn sessions_round_trip(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, Some("psid")).await;
    let got = store
        .get_session(&id.hash())
        .await
        .unwrap()
        .expect("session");
    assert_eq!(got.family_id, s.family_id);
    assert_eq!(got.matched, IdMatch::Current);
    assert_eq!(got.user.id, user.id);
    assert_eq!(got.tokens, s.tokens);
    assert_eq!(got.provider_sid.as_deref(), Some("psid"));
    assert_eq!(got.token_version, 0);
    assert!(got.current_seen);
    assert_eq!(got.expires_at(), NOW + 3600);
    assert!(
        store
            .get_session(&SessionId::generate().hash())
            .await
            .unwrap()
            .is_none()
    );

    store
        .touch_session(s.family_id, NOW + 60, NOW + 3660, Some(&id.hash()))
        .await
        .unwrap();
    let touched = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(touched.last_seen_at, NOW + 60);
    assert_eq!(touched.idle_expires_at, NOW + 3660);
    // An older touch never moves the deadline back.
    store
        .touch_session(s.family_id, NOW + 10, NOW + 3610, Some(&id.hash()))
        .await
        .unwrap();
    let still = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(still.idle_expires_at, NOW + 3660);

    let listed = store.list_sessions(Some(user.id), NOW).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].family_id, s.family_id);
    assert!(
        store
            .list_sessions(Some(user.id), NOW + 4000)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn token_updates_compare_and_swap(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, None).await;
    let next = TokenSet {
        refresh_token: sealed("r2"),
        access_token: sealed("a2"),
        id_token: None,
        access_expires_at: Some(NOW + 600),
        refresh_expires_at: Some(NOW + 7200),
        access_issued_at: Some(NOW + 300),
        // A refresh may grant another scope: kept with the tokens.
        granted_scope: Some("openid orders:admin".into()),
    };
    assert!(store.update_tokens(s.family_id, 0, &next).await.unwrap());
    assert!(
        !store.update_tokens(s.family_id, 0, &next).await.unwrap(),
        "a stale version must not win"
    );
    let got = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.tokens, next);
    assert_eq!(got.token_version, 1);
    assert_eq!(got.expires_at(), NOW + 3600);
}

/// Lost rotations (docs/sessions.md): the browser holds the previous id and never received
/// the current one; the next rotation keeps the browser's id as the previous one.
pub(super) async fn a_lost_rotation_keeps_the_id_the_browser_holds(store: &dyn Store) {
    let user = new_user(store).await;
    let (held, s) = new_session(store, &user, None).await;
    let unseen = SessionId::generate();
    let t = TokenSet::default();
    // Keeping needs a previous id: none yet.
    assert!(
        !store
            .rotate_session_id(s.family_id, 0, &unseen.hash(), NOW + 30, "h1", &t, true)
            .await
            .unwrap()
    );
    assert!(
        store
            .rotate_session_id(s.family_id, 0, &unseen.hash(), NOW + 30, "h1", &t, false)
            .await
            .unwrap()
    );
    // The next rotation while `unseen` was never seen keeps `held`.
    let next = SessionId::generate();
    assert!(
        store
            .rotate_session_id(s.family_id, 1, &next.hash(), NOW + 60, "h2", &t, true)
            .await
            .unwrap()
    );
    let by_held = store.get_session(&held.hash()).await.unwrap().unwrap();
    assert_eq!(by_held.matched, IdMatch::Previous);
    assert_eq!(by_held.id_hash, next.hash());
    assert_eq!(by_held.previous_handover.as_deref(), Some("h2"));
    assert_eq!(by_held.previous_valid_until, Some(NOW + 60));
    assert!(
        store.get_session(&unseen.hash()).await.unwrap().is_none(),
        "the id that never reached the browser finds nothing"
    );
    // Once the current id has been seen, keeping is refused: its holder must not lose it.
    store
        .touch_session(s.family_id, NOW + 1, NOW + 3601, Some(&next.hash()))
        .await
        .unwrap();
    let last = SessionId::generate();
    assert!(
        !store
            .rotate_session_id(s.family_id, 2, &last.hash(), NOW + 90, "h3", &t, true)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_session(&next.hash())
            .await
            .unwrap()
            .unwrap()
            .matched,
        IdMatch::Current
    );
}

pub(super) async fn rotation_keeps_the_previous_id_for_lookups(store: &dyn Store) {
    let user = new_user(store).await;
    let (old, s) = new_session(store, &user, None).await;
    let new = SessionId::generate();
    let tokens = TokenSet {
        refresh_token: sealed("r-rot"),
        ..Default::default()
    };
    assert!(
        store
            .rotate_session_id(
                s.family_id,
                0,
                &new.hash(),
                NOW + 30,
                "handover-1",
                &tokens,
                false
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_session_id(
                s.family_id,
                0,
                &SessionId::generate().hash(),
                NOW + 30,
                "handover-2",
                &tokens,
                false
            )
            .await
            .unwrap()
    );
    let by_new = store.get_session(&new.hash()).await.unwrap().unwrap();
    assert_eq!(by_new.matched, IdMatch::Current);
    assert!(!by_new.current_seen);
    assert_eq!(by_new.tokens, tokens);
    let by_old = store.get_session(&old.hash()).await.unwrap().unwrap();
    assert_eq!(by_old.matched, IdMatch::Previous);
    assert_eq!(by_old.family_id, s.family_id);
    assert_eq!(by_old.previous_valid_until, Some(NOW + 30));
    assert_eq!(by_old.previous_handover.as_deref(), Some("handover-1"));
    // Activity through the old id is not the new id being seen (the theft rule).
    for seen in [None, Some(old.hash())] {
        store
            .touch_session(s.family_id, NOW + 1, NOW + 3601, seen.as_ref())
            .await
            .unwrap();
    }
    assert!(
        !store
            .get_session(&new.hash())
            .await
            .unwrap()
            .unwrap()
            .current_seen
    );
    // The old id is still found after its grace window: the caller applies the rule.
    assert_eq!(
        store
            .get_session(&old.hash())
            .await
            .unwrap()
            .unwrap()
            .matched,
        IdMatch::Previous
    );
    store
        .touch_session(s.family_id, NOW + 1, NOW + 3601, Some(&new.hash()))
        .await
        .unwrap();
    assert!(
        store
            .get_session(&new.hash())
            .await
            .unwrap()
            .unwrap()
            .current_seen
    );
}

pub(super) async fn sessions_end_by_id_user_sid_and_all(store: &dyn Store) {
    let user = new_user(store).await;
    let (a, sa) = new_session(store, &user, None).await;
    assert!(store.delete_session(sa.family_id).await.unwrap());
    assert!(!store.delete_session(sa.family_id).await.unwrap());
    assert!(store.get_session(&a.hash()).await.unwrap().is_none());

    let (b, _) = new_session(store, &user, None).await;
    let (c, _) = new_session(store, &user, None).await;
    let other = new_user(store).await;
    let (d, _) = new_session(store, &other, Some("sid-d")).await;
    assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 2);
    assert!(store.get_session(&b.hash()).await.unwrap().is_none());
    assert!(store.get_session(&c.hash()).await.unwrap().is_none());
    assert!(store.get_session(&d.hash()).await.unwrap().is_some());

    assert_eq!(
        store
            .delete_sessions_by_provider_sid("https://not-the-issuer", "sid-d")
            .await
            .unwrap(),
        0,
        "a sid is scoped to its issuer"
    );
    assert_eq!(
        store
            .delete_sessions_by_provider_sid(&other.issuer, "sid-d")
            .await
            .unwrap(),
        1
    );
    assert!(store.get_session(&d.hash()).await.unwrap().is_none());

    // All sessions of one (issuer, subject): back-channel logout with only `sub`.
    let (f, _) = new_session(store, &other, None).await;
    let (g, _) = new_session(store, &other, Some("sid-g")).await;
    let (h, _) = new_session(store, &user, None).await;
    assert_eq!(
        store
            .delete_sessions_by_subject("https://not-the-issuer", &other.subject)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_sessions_by_subject(&other.issuer, &other.subject)
            .await
            .unwrap(),
        2
    );
    assert!(store.get_session(&f.hash()).await.unwrap().is_none());
    assert!(store.get_session(&g.hash()).await.unwrap().is_none());
    assert!(store.get_session(&h.hash()).await.unwrap().is_some());

    let (e, _) = new_session(store, &other, None).await;
    assert!(store.delete_all_sessions().await.unwrap() >= 1);
    assert!(store.get_session(&e.hash()).await.unwrap().is_none());
}
