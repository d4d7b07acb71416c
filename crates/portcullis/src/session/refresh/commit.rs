//! Committing a refresh: the refreshed ID token checked against the session's user,
//! the tokens stored under a new session id, the access rules applied again.

use serde_json::{Map, Value};

use super::Fresh;
use crate::clock::UnixTime;
use crate::provider::{IdTokenError, ProviderError, TokenResponse};
use crate::session::SessionError;
use crate::session::access::AccessDenied;
use crate::session::handover;
use crate::session::id::SessionId;
use crate::session::login::{MAX_PROVIDER_LIFETIME, token_context};
use crate::session::lookup::OpenTokens;
use crate::session::service::Sessions;
use crate::store::{IdHash, SessionRecord, TokenSet, UserProfile};

/// Why a refreshed ID token was not accepted.
enum Refused {
    /// It names another user or client, or fails validation: the session ends.
    Identity(&'static str),
    /// It could not be checked right now (keys unreachable or unknown): keep the
    /// previous ID token and do not trust the new one.
    Unverifiable(ProviderError),
}

/// Whether a refusal stands on claims that are present (as opposed to claims that only
/// the unavailable UserInfo would have supplied).
fn conclusive(denied: &AccessDenied, claims: &Map<String, Value>) -> bool {
    match denied {
        AccessDenied::NoEmail => false,
        AccessDenied::EmailNotVerified => claims.contains_key("email_verified"),
        AccessDenied::EmailNotAllowed | AccessDenied::ProviderNotAllowed => true,
        AccessDenied::MissingClaim(claim) => claims.contains_key(claim),
    }
}

impl Sessions {
    /// Checks a refreshed ID token against the session's user and client (F04).
    async fn check_refreshed_id_token(
        &self,
        token: &str,
        record: &SessionRecord,
        now: UnixTime,
    ) -> Result<Map<String, Value>, Refused> {
        let Ok(provider) = self.session_provider(record) else {
            return Err(Refused::Identity("provider"));
        };
        let verified = match provider.validate_id_token(token, None, now).await {
            Ok(v) => v,
            Err(ProviderError::IdToken(IdTokenError::UnknownKey)) => {
                return Err(Refused::Unverifiable(IdTokenError::UnknownKey.into()));
            }
            Err(ProviderError::IdToken(_)) => return Err(Refused::Identity("invalid")),
            Err(e) => return Err(Refused::Unverifiable(e)),
        };
        if verified.subject != record.user.subject {
            return Err(Refused::Identity("sub"));
        }
        if record.user.issuer != verified.issuer {
            return Err(Refused::Identity("iss"));
        }
        // `aud` needs no comparison with the first ID token: validation accepts only
        // this client's id plus audiences it trusts, issued to it (`azp`) (J07).
        Ok(verified.claims)
    }

    /// Stores what the provider answered under a new session id, then applies the
    /// access rules to the user as the provider now describes them.
    pub(super) async fn commit_refresh(
        &self,
        fresh: Fresh,
        old: &OpenTokens,
        answer: TokenResponse,
    ) -> Result<Option<Fresh>, SessionError> {
        let now = self.now();
        let record = &fresh.record;
        let Some(new_claims) = self.refreshed_claims(record, old, &answer, now).await? else {
            return Ok(None);
        };

        let new_id = SessionId::generate();
        let hash = new_id.hash();
        let new_id_token = answer
            .id_token
            .as_deref()
            .map(|t| t.as_str())
            .filter(|_| new_claims.is_some());
        let tokens = self.refreshed_tokens(&hash, old, &answer, new_id_token, record, now);
        let grace = now.saturating_add(self.config.session.rotation_grace.as_secs() as i64);
        let swapped = self
            .store
            .rotate_session_id(
                record.family_id,
                record.token_version,
                &hash,
                grace,
                // A lost rotation: the handover is for the id the browser holds.
                &handover::seal(fresh.lost.as_ref().unwrap_or(&fresh.current), &new_id),
                &tokens,
                fresh.lost.is_some(),
            )
            .await;
        match swapped {
            Ok(true) => {}
            Ok(false) => return self.lost_race(fresh, &answer).await,
            Err(e) => {
                crate::metrics::refresh(&record.provider_id, "outage");
                tracing::error!(
                    session = record.id_hash.short(),
                    error = %e,
                    "refreshed tokens could not be stored; the session will need a new sign-in"
                );
                return Err(e.into());
            }
        }
        tracing::info!(
            session = record.id_hash.short(),
            new_session = hash.short(),
            user = %record.user.id,
            "tokens refreshed; session id rotated"
        );
        let Some(committed) = self.store.get_session_fresh(&hash).await? else {
            // Committed, then ended meanwhile (sign-out, revocation).
            crate::metrics::refresh(&record.provider_id, "success");
            return Ok(None);
        };
        let fresh = Fresh {
            record: committed,
            current: new_id,
            rotated: true,
            lost: fresh.lost,
        };
        self.recheck_access(fresh, new_claims, &answer).await
    }

    /// The claims of the refreshed ID token, if it came and could be checked now
    /// (`Some(None)`: none came, or it could not be checked; the previous one stays).
    /// `None`: it names another user, and the session has ended.
    async fn refreshed_claims(
        &self,
        record: &SessionRecord,
        old: &OpenTokens,
        answer: &TokenResponse,
        now: UnixTime,
    ) -> Result<Option<Option<Map<String, Value>>>, SessionError> {
        Ok(Some(match answer.id_token.as_deref() {
            None => None,
            Some(token) => match self.check_refreshed_id_token(token, record, now).await {
                Ok(claims) => Some(claims),
                Err(Refused::Identity(what)) => {
                    crate::metrics::refresh(&record.provider_id, "identity_changed");
                    self.security_event(
                        "refresh_identity_changed",
                        record,
                        match what {
                            "sub" => "the refreshed ID token names another subject",
                            "iss" => "the refreshed ID token comes from another issuer",
                            "aud" => "the refreshed ID token is for another audience",
                            _ => "the refreshed ID token is not valid",
                        },
                    );
                    let refresh = answer
                        .refresh_token
                        .as_deref()
                        .or(old.refresh_token.as_deref())
                        .map(|s| s.as_str());
                    self.end_session_and_revoke(record, refresh).await?;
                    return Ok(None);
                }
                Err(Refused::Unverifiable(e)) => {
                    tracing::warn!(error = %e, code = e.code(), "a refreshed ID token could not be checked now; the previous one is kept");
                    None
                }
            },
        }))
    }

    /// The session's tokens after a refresh, sealed for the new session id. A rotated
    /// refresh token replaces the old one and none keeps it (F01); an ID token that was
    /// not accepted keeps the previous one.
    fn refreshed_tokens(
        &self,
        hash: &IdHash,
        old: &OpenTokens,
        answer: &TokenResponse,
        new_id_token: Option<&str>,
        record: &SessionRecord,
        now: UnixTime,
    ) -> TokenSet {
        let seal = |field: &str, value: &str| {
            Some(self.keys().seal_str(value, &token_context(hash, field)))
        };
        let refresh_token = answer
            .refresh_token
            .as_deref()
            .or(old.refresh_token.as_deref())
            .and_then(|t| seal("refresh", t));
        let id_token = match new_id_token {
            Some(t) => seal("id", t),
            None => old.id_token.as_deref().and_then(|t| seal("id", t)),
        };
        let refresh_expires_at = match (answer.refresh_expires_in, &answer.refresh_token) {
            (Some(s), _) => Some(now.saturating_add(s.min(MAX_PROVIDER_LIFETIME))),
            (None, Some(_)) => None,
            (None, None) => record.tokens.refresh_expires_at,
        };
        TokenSet {
            refresh_token,
            access_token: seal(
                "access",
                &crate::session::dpop::stored_access_token(&answer.access_token, answer.dpop_bound),
            ),
            id_token,
            access_expires_at: answer
                .expires_in
                .map(|s| now.saturating_add(s.min(MAX_PROVIDER_LIFETIME))),
            refresh_expires_at,
            access_issued_at: Some(now),
            // A refresh that says nothing keeps what was granted before.
            granted_scope: answer
                .scope
                .clone()
                .or_else(|| record.tokens.granted_scope.clone()),
        }
    }

    /// Another refresh of this session was committed first: this one's tokens are
    /// dropped and the session is read again.
    async fn lost_race(
        &self,
        fresh: Fresh,
        answer: &TokenResponse,
    ) -> Result<Option<Fresh>, SessionError> {
        crate::metrics::refresh(&fresh.record.provider_id, "success");
        tracing::warn!(
            session = fresh.record.id_hash.short(),
            "another refresh of this session was committed first; this one's tokens are dropped"
        );
        let provider_id = fresh.record.provider_id.clone();
        let latest = self.reload(fresh).await?;
        if latest.is_none()
            && let Some(rotated) = answer.refresh_token.as_deref()
        {
            // Ended meanwhile (sign-out, back-channel, admin): the grant this refresh
            // extended must not stay alive at the provider.
            let provider = self.provider(&provider_id)?;
            if let Err(e) = provider.revoke_refresh_token(rotated).await {
                tracing::warn!(error = %e, code = e.code(), "could not revoke the refresh token of a session ended mid-refresh");
            }
        }
        Ok(latest)
    }

    /// Access rules at refresh, on the ID token's claims and UserInfo as at sign-in.
    /// Refused: the session ends and the caller answers 403.
    async fn recheck_access(
        &self,
        mut fresh: Fresh,
        new_claims: Option<Map<String, Value>>,
        answer: &TokenResponse,
    ) -> Result<Option<Fresh>, SessionError> {
        let record = &fresh.record;
        let provider = self.session_provider(record)?;
        let Some((mut claims, complete)) = self
            .claims_after_refresh(record, new_claims, answer)
            .await?
        else {
            return Ok(None);
        };
        self.email_trust(provider, &mut claims);
        let refusals = self.provider_access_refusals(provider.id(), &claims);
        let undecided = !complete && !refusals.is_empty();
        // Without UserInfo, refusing for a claim only UserInfo would have told us is a
        // guess: only refusals on claims at hand count (any one of them).
        let denied = refusals
            .into_iter()
            .find(|d| complete || conclusive(d, &claims));
        if denied.is_none() && undecided {
            tracing::warn!(
                session = record.id_hash.short(),
                "the access rules could not be decided without UserInfo; applied again at the next refresh"
            );
        }
        if let Some(denied) = denied {
            crate::metrics::refresh(&record.provider_id, "denied");
            tracing::info!(
                session = record.id_hash.short(),
                user = %record.user.id,
                reason = denied.code(),
                "the access rules refuse this user now; the session ended"
            );
            let tokens = self.session_tokens(record).ok();
            let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
            self.end_session_and_revoke(record, refresh.map(|s| s.as_str()))
                .await?;
            return Err(denied.into());
        }
        crate::metrics::refresh(&record.provider_id, "success");
        self.follow_profile(&mut fresh, &claims, complete).await;
        Ok(Some(fresh))
    }

    /// The user's claims after a refresh: the new ID token's (else the stored one's)
    /// merged with UserInfo's, and whether UserInfo answered. `None`: UserInfo spoke of
    /// another subject, and the session has ended.
    async fn claims_after_refresh(
        &self,
        record: &SessionRecord,
        new_claims: Option<Map<String, Value>>,
        answer: &TokenResponse,
    ) -> Result<Option<(Map<String, Value>, bool)>, SessionError> {
        let provider = self.session_provider(record)?;
        let mut claims = new_claims
            .or_else(|| {
                self.session_tokens(record)
                    .ok()
                    .and_then(|t| t.id_token)
                    .and_then(|t| provider.stored_id_token_claims(&t))
            })
            .unwrap_or_default();
        let mut complete = true;
        let dpop = self.dpop_key_if(answer.dpop_bound).await?;
        match provider
            .userinfo(&answer.access_token, &record.user.subject, dpop.as_deref())
            .await
        {
            Ok(Some(info)) => crate::session::login::merge_userinfo(&mut claims, info),
            Ok(None) => {}
            Err(ProviderError::UserinfoSubjectMismatch) => {
                crate::metrics::refresh(&record.provider_id, "identity_changed");
                self.security_event(
                    "refresh_identity_changed",
                    record,
                    "UserInfo answered for another subject after a refresh",
                );
                let tokens = self.session_tokens(record).ok();
                let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
                self.end_session_and_revoke(record, refresh.map(|s| s.as_str()))
                    .await?;
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "UserInfo failed after a refresh; the access rules see the ID token's claims only");
                complete = false;
            }
        }
        Ok(Some((claims, complete)))
    }

    /// The kept claims and the profile follow the provider after a refresh. The rotation
    /// is committed: a failure here is logged and never turns the answer into an error
    /// that would lose the new cookie.
    async fn follow_profile(&self, fresh: &mut Fresh, claims: &Map<String, Value>, complete: bool) {
        let record = &fresh.record;
        // The kept claims follow the provider too, when UserInfo answered (otherwise
        // claims only UserInfo sends, such as `groups` at some providers, would be lost).
        let mut kept = None;
        if complete {
            let (text, verified) = crate::session::claims::kept_claims(claims);
            match self
                .store
                .update_claims(record.family_id, &text, verified)
                .await
            {
                Ok(_) => kept = Some((text, verified)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the user's claims after a refresh")
                }
            }
        }
        // The profile follows the provider; a claim it no longer sends keeps its value
        // (an email address it sends unverified is dropped: E01).
        let told = crate::session::login::profile_from_claims(claims);
        let profile = UserProfile {
            email: if claims.contains_key("email") {
                told.email
            } else {
                record.user.email.clone()
            },
            name: told.name.or_else(|| record.user.name.clone()),
        };
        if profile.email != record.user.email || profile.name != record.user.name {
            // The rotation is committed: a failed profile update must not turn this
            // answer into an error that would lose the new cookie.
            match self
                .store
                .upsert_user(
                    &record.user.issuer,
                    &record.user.subject,
                    &profile,
                    self.now(),
                )
                .await
            {
                Ok(user) => fresh.record.user = user,
                Err(e) => {
                    tracing::warn!(error = %e, "could not update the user's profile after a refresh")
                }
            }
        }
        if let Some((text, verified)) = kept {
            fresh.record.claims = text;
            fresh.record.email_verified = verified;
        }
    }
}
