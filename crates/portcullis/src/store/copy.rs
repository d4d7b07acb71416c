//! `portcullis store copy --from URL --to URL`: moves users (with their ids), the
//! assertion signing keys and live sessions (with their ids, tokens and rotation state)
//! from one store to another, so that moving from SQLite to PostgreSQL changes no
//! `X-User-Id`, no published key, and signs nobody out.
//!
//! Tokens travel sealed: the gateways on the new store need the same key ring
//! (`PORTCULLIS_SECRET`). Sessions are copied once, into a store that holds none: a
//! second copy would bring back sessions that ended on the target meanwhile (a
//! sign-out, a revocation, the theft rule), so it is refused. Users may be copied
//! again at any time: what is there is kept.

use super::{Store, StoreError};
use crate::clock::UnixTime;

/// Users read per page.
const PAGE: u32 = 1_000;

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub users_copied: u64,
    /// Already in the target with the same id (an earlier copy).
    pub users_present: u64,
    pub sessions_copied: u64,
    pub sessions_present: u64,
    pub signing_keys_copied: u64,
    /// Generations the target already had (its own key is kept).
    pub signing_keys_present: u64,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target knows this (issuer, subject) under another id: copying would change
    /// the user's `X-User-Id`.
    #[error(
        "the target already has the user {issuer} / {subject} under another id; nothing more was copied"
    )]
    UserConflict { issuer: String, subject: String },
    /// Copying sessions again could revive sessions that ended on the target.
    #[error(
        "the target already holds {0} live session(s): sessions are copied once, into a store without any (users were copied; no session was)"
    )]
    TargetHasSessions(usize),
}

/// Copies every user, then every session live at `now`.
pub async fn copy(
    from: &dyn Store,
    to: &dyn Store,
    now: UnixTime,
) -> Result<CopyReport, CopyError> {
    let mut report = CopyReport::default();
    let mut after = None;
    loop {
        let page = from.list_users(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for user in &page {
            if to.import_user(user).await? {
                report.users_copied += 1;
                continue;
            }
            match to.get_user(user.id).await? {
                Some(there) if there.issuer == user.issuer && there.subject == user.subject => {
                    report.users_present += 1;
                }
                _ => {
                    return Err(CopyError::UserConflict {
                        issuer: user.issuer.clone(),
                        subject: user.subject.clone(),
                    });
                }
            }
        }
    }
    for key in from.signing_keys().await? {
        if to.add_signing_key(&key).await? {
            report.signing_keys_copied += 1;
        } else {
            report.signing_keys_present += 1;
        }
    }
    let present = to.list_sessions(None, now).await?.len();
    if present > 0 {
        return Err(CopyError::TargetHasSessions(present));
    }
    for session in from.list_sessions(None, now).await? {
        if to.import_session(&session).await? {
            report.sessions_copied += 1;
        } else {
            report.sessions_present += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::random::new_uuid;
    use crate::store::id::SessionId;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewSession, UserProfile};

    const NOW: UnixTime = 1_900_000_000;

    #[tokio::test]
    async fn users_keep_their_ids_and_live_sessions_their_cookies() {
        let (from, to) = (
            SqliteStore::in_memory().await.unwrap(),
            SqliteStore::in_memory().await.unwrap(),
        );
        let alice = from
            .upsert_user("https://i", "alice", &UserProfile::default(), NOW)
            .await
            .unwrap();
        // A machine client named like alice: copied as a client, with its own id.
        let client = from
            .upsert_identity(
                "https://i",
                crate::store::IdentityKind::Client,
                "alice",
                None,
                NOW,
            )
            .await
            .unwrap();
        let id = SessionId::generate();
        let session = |family_id, id_hash, idle_expires_at| NewSession {
            family_id,
            provider_sid: Some("sid".into()),
            idle_expires_at,
            email_verified: true,
            provider_id: "partner".into(),
            ..NewSession::plain(alice.id, id_hash, NOW)
        };
        from.create_session(&session(new_uuid(), id.hash(), NOW + 3600))
            .await
            .unwrap();
        // An ended session is not copied.
        from.create_session(&session(new_uuid(), SessionId::generate().hash(), NOW - 1))
            .await
            .unwrap();

        let key = crate::store::SigningKeyRecord {
            generation: 1,
            kid: "k1".into(),
            sealed_key: crate::session::Sealed::from_stored("v1.k.sealed".into()),
            created_at: NOW,
        };
        from.add_signing_key(&key).await.unwrap();

        let report = copy(&from, &to, NOW).await.unwrap();
        assert_eq!(report.users_copied, 2);
        assert_eq!(to.get_user(client.id).await.unwrap(), Some(client));
        assert_eq!(report.sessions_copied, 1);
        assert_eq!(report.signing_keys_copied, 1);
        assert_eq!(to.signing_keys().await.unwrap(), [key]);
        let there = to.get_session(&id.hash()).await.unwrap().unwrap();
        assert_eq!(there.user.id, alice.id);
        assert_eq!(
            there.provider_id, "partner",
            "the session's provider is copied"
        );
        // Signing in again on the new store finds the same user.
        let again = to
            .upsert_user("https://i", "alice", &UserProfile::default(), NOW)
            .await
            .unwrap();
        assert_eq!(again.id, alice.id);

        // Again: the users are there already, and sessions are not copied twice: the
        // target may have ended some of them meanwhile.
        to.delete_session(there.family_id).await.unwrap();
        let (ended, other) = (there.family_id, SessionId::generate());
        to.create_session(&session(new_uuid(), other.hash(), NOW + 3600))
            .await
            .unwrap();
        assert!(matches!(
            copy(&from, &to, NOW).await,
            Err(CopyError::TargetHasSessions(1))
        ));
        assert!(
            to.get_session(&id.hash()).await.unwrap().is_none(),
            "{ended} stays ended"
        );
    }

    #[tokio::test]
    async fn a_user_known_under_another_id_stops_the_copy() {
        let (from, to) = (
            SqliteStore::in_memory().await.unwrap(),
            SqliteStore::in_memory().await.unwrap(),
        );
        from.upsert_user("https://i", "bob", &UserProfile::default(), NOW)
            .await
            .unwrap();
        to.upsert_user("https://i", "bob", &UserProfile::default(), NOW)
            .await
            .unwrap();
        assert!(matches!(
            copy(&from, &to, NOW).await,
            Err(CopyError::UserConflict { .. })
        ));
    }
}
