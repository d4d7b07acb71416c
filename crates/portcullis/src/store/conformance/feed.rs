//! The change feed: every change announced once, profiles, settings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// Collects the events up to a sentinel write's, so that "exactly one" is checked
/// without waiting for silence.
async fn events_until_sentinel(store: &dyn Store, sub: &mut FeedSubscription) -> Vec<FeedEvent> {
    let user = new_user(store).await;
    let (_, sentinel) = new_session(store, &user, None).await;
    store.delete_session(sentinel.family_id).await.unwrap();
    let mut events = Vec::new();
    loop {
        let event = next_event(sub).await;
        if matches!(&event, FeedEvent::Changed(c) if c.family_id == sentinel.family_id) {
            return events;
        }
        events.push(event);
    }
}

fn changes_of(events: &[FeedEvent], family: Uuid) -> Vec<&SessionChange> {
    events
        .iter()
        .filter_map(|e| match e {
            FeedEvent::Changed(c) if c.family_id == family => Some(c),
            _ => None,
        })
        .collect()
}

/// G09: a sign-in (or refresh) that changes a user's email or name announces the user,
/// so that every cached session of theirs is dropped; the same profile again, or a new
/// user, announces nothing.
pub(super) async fn a_changed_profile_is_announced(store: &dyn Store) {
    let (issuer, subject) = (unique("https://issuer"), unique("sub"));
    let profile = |email: Option<&str>, name: &str| UserProfile {
        email: email.map(str::to_owned),
        name: Some(name.to_owned()),
    };
    let mut sub = store.feed().subscribe();
    let user = store
        .upsert_user(&issuer, &subject, &profile(Some("a@example.com"), "A"), NOW)
        .await
        .unwrap();
    store
        .upsert_user(
            &issuer,
            &subject,
            &profile(Some("a@example.com"), "A"),
            NOW + 1,
        )
        .await
        .unwrap();
    let users_announced = |events: &[FeedEvent]| -> Vec<Uuid> {
        events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::UserChanged(u) => Some(*u),
                _ => None,
            })
            .collect()
    };
    let events = events_until_sentinel(store, &mut sub).await;
    if !events.contains(&FeedEvent::Reset) {
        assert!(
            users_announced(&events).is_empty(),
            "nothing changed: {events:?}"
        );
    }
    for changed in [profile(None, "A"), profile(None, "B")] {
        store
            .upsert_user(&issuer, &subject, &changed, NOW + 2)
            .await
            .unwrap();
        let events = events_until_sentinel(store, &mut sub).await;
        assert!(
            users_announced(&events) == [user.id] || events.contains(&FeedEvent::Reset),
            "{events:?}"
        );
    }
}

/// Settings the instances share: read back as written, replaced, removed; they never
/// expire.
pub(super) async fn settings_are_kept_replaced_and_removed(store: &dyn Store) {
    let key = unique("client-auth");
    assert_eq!(store.get_setting(&key).await.unwrap(), None);
    store.put_setting(&key, "client_secret_post").await.unwrap();
    assert_eq!(
        store.get_setting(&key).await.unwrap().as_deref(),
        Some("client_secret_post")
    );
    store
        .put_setting(&key, "client_secret_basic")
        .await
        .unwrap();
    store.purge_expired(NOW + 100 * 365 * 86_400).await.unwrap();
    assert_eq!(
        store.get_setting(&key).await.unwrap().as_deref(),
        Some("client_secret_basic")
    );
    assert!(store.delete_setting(&key).await.unwrap());
    assert!(!store.delete_setting(&key).await.unwrap());
    assert_eq!(store.get_setting(&key).await.unwrap(), None);
    // add_setting keeps the first value: racing instances agree on one.
    assert!(store.add_setting(&key, "first").await.unwrap());
    assert!(!store.add_setting(&key, "second").await.unwrap());
    assert_eq!(
        store.get_setting(&key).await.unwrap().as_deref(),
        Some("first")
    );
    assert!(store.delete_setting(&key).await.unwrap());
}

/// Every write that ends or changes a session announces it once, with its id hashes.
pub(super) async fn every_change_is_announced_once(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, Some("sid-feed")).await;
    let mut sub = store.feed().subscribe();
    let family = s.family_id;
    let expect_one = |events: Vec<FeedEvent>, want: Vec<String>, what: &str| {
        assert_one_change(&events, family, want, what);
    };

    assert!(store.update_tokens(family, 0, &s.tokens).await.unwrap());
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        vec![id.hash().as_str().to_owned()],
        "update_tokens",
    );
    assert!(!store.update_tokens(family, 0, &s.tokens).await.unwrap());
    assert!(
        changes_of(&events_until_sentinel(store, &mut sub).await, family).is_empty(),
        "a lost compare-and-swap changes nothing and announces nothing"
    );

    let new = SessionId::generate();
    assert!(
        store
            .rotate_session_id(family, 1, &new.hash(), NOW + 30, "h", &s.tokens, false)
            .await
            .unwrap()
    );
    let both = vec![
        id.hash().as_str().to_owned(),
        new.hash().as_str().to_owned(),
    ];
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "rotate_session_id",
    );

    // The first sighting of the new id is announced; later touches are not.
    store
        .touch_session(family, NOW + 1, NOW + 3601, Some(&new.hash()))
        .await
        .unwrap();
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "first sighting",
    );
    store
        .touch_session(family, NOW + 2, NOW + 3602, Some(&new.hash()))
        .await
        .unwrap();
    assert!(
        changes_of(&events_until_sentinel(store, &mut sub).await, family).is_empty(),
        "an idle-deadline touch is not announced"
    );

    assert!(store.update_claims(family, "{}", false).await.unwrap());
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "update_claims",
    );

    assert_eq!(
        store
            .delete_sessions_by_provider_sid(&user.issuer, "sid-feed")
            .await
            .unwrap(),
        1
    );
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both,
        "delete_sessions_by_provider_sid",
    );

    ending_writes_are_announced(store, &user, &mut sub).await;
}

/// `events` hold exactly one message about `family`, naming every id hash in `want`.
fn assert_one_change(events: &[FeedEvent], family: Uuid, mut want: Vec<String>, what: &str) {
    let changes = changes_of(events, family);
    assert_eq!(
        changes.len(),
        1,
        "{what}: exactly one message, got {events:?}"
    );
    let mut hashes: Vec<String> = changes[0]
        .id_hashes
        .iter()
        .map(|h| h.as_str().to_owned())
        .collect();
    hashes.sort();
    want.sort();
    assert_eq!(hashes, want, "{what}: names every id hash");
}

/// Each ending write (by id, by user, by subject) announces the session it ends;
/// ending everything announces each session, or one reset.
async fn ending_writes_are_announced(store: &dyn Store, user: &User, sub: &mut FeedSubscription) {
    // Each ending write: by id, by user, by subject.
    for how in ["id", "user", "subject"] {
        let (id, s) = new_session(store, user, None).await;
        let family = s.family_id;
        match how {
            "id" => assert!(store.delete_session(family).await.unwrap()),
            "user" => assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 1),
            _ => assert_eq!(
                store
                    .delete_sessions_by_subject(&user.issuer, &user.subject)
                    .await
                    .unwrap(),
                1
            ),
        }
        let events = events_until_sentinel(store, sub).await;
        let changes = changes_of(&events, family);
        assert_eq!(changes.len(), 1, "delete by {how}: {events:?}");
        assert_eq!(changes[0].id_hashes, vec![id.hash()]);
    }

    // Everything at once: each session announced, or one reset.
    let (_, s) = new_session(store, user, None).await;
    store.delete_all_sessions().await.unwrap();
    let event = next_event(sub).await;
    let mut events = vec![event];
    if events[0] != FeedEvent::Reset {
        events.extend(events_until_sentinel(store, sub).await);
    }
    assert!(
        events.contains(&FeedEvent::Reset) || changes_of(&events, s.family_id).len() == 1,
        "delete_all_sessions: {events:?}"
    );
}
