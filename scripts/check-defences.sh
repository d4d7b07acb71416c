#!/usr/bin/env bash
# Removes one security defence at a time and checks that its named test then fails
# ("every defence has a test that fails when the defence is removed"). Restores each
# file afterwards, also on interrupt. Slow (a rebuild per defence): run by hand.
#
#   scripts/check-defences.sh            # all
#   scripts/check-defences.sh j04_       # those whose test filter contains j04_
#   scripts/check-defences.sh --patterns # only check that every pattern still exists
#                                        # (seconds, no build: run after a refactoring)
set -uo pipefail
cd "$(dirname "$0")/.."
only=${1:-}
patterns_only=false
if [ "$only" = "--patterns" ]; then patterns_only=true; only=""; fi
S=crates/portcullis/src
backup=$(mktemp)
current=""
restore() { [ -n "$current" ] && cp "$backup" "$current"; current=""; }
trap 'restore; exit 130' INT TERM
survivors=0

# FILE OLD NEW TEST_BINARY(lib|name) TEST_FILTER
mutate() {
  local file=$1 old=$2 new=$3 bin=$4 filter=$5
  [ -n "$only" ] && [[ "$filter" != *"$only"* ]] && return
  if $patterns_only; then
    if ! python3 -c 'import sys; sys.exit(0 if sys.argv[2] in open(sys.argv[1]).read() else 1)' "$file" "$old"; then
      echo "MISSING  $filter: pattern not found in $file (update this script)"; survivors=$((survivors+1))
    fi
    return
  fi
  cp "$file" "$backup"; current=$file
  if ! python3 - "$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if old not in text:
    sys.exit(1)
open(path, "w").write(text.replace(old, new, 1))
PY
  then
    echo "MISSING  $filter: pattern not found in $file (update this script)"; restore; survivors=$((survivors+1)); return
  fi
  case "$bin" in
    lib) set -- -p portcullis --lib "$filter" ;;
    idp:*) set -- -p portcullis-idp --test "${bin#idp:}" "$filter" ;;
    idplib) set -- -p portcullis-idp --lib "$filter" ;;
    cli:*) set -- -p portcullis-cli --test "${bin#cli:}" "$filter" ;;
    clibin) set -- -p portcullis-cli --bin portcullis "$filter" ;;
    *) set -- -p portcullis --test "$bin" "$filter" ;;
  esac
  local out
  out=$(RUST_BACKTRACE=0 cargo test "$@" 2>&1)
  if grep -q "test result: FAILED" <<<"$out"; then
    echo "caught   $filter"
  else
    echo "SURVIVED $filter  ($file)"; survivors=$((survivors+1))
  fi
  restore
}

H=hostile_provider
mutate $S/session/login.rs 'if !secrets_equal(binding_hash.as_bytes(), tx.binding_hash.as_bytes()) {' 'if false {' $H l03_
mutate $S/session/login.rs 'if self.now() >= tx.expires_at {' 'if false {' $H l01_stale
mutate $S/session/login.rs 'return Err(SessionError::StateMissing);' 'return Err(SessionError::CodeMissing);' $H l01_callback_without
mutate $S/provider/authorize.rs 'Some(found) if settings.accepts_issuer(found) => Ok(()),' 'Some(_) => Ok(()),' $H l06_mix_up
mutate $S/session/return_to.rs 'raw.and_then(validated).map(Self).unwrap_or_else(Self::root)' 'raw.map(|r| Self(r.to_owned())).unwrap_or_else(Self::root)' $H l07_
mutate $S/http/pages.rs "'<' => out.push_str(\"&lt;\")," "'<' => out.push('<')," $H l09_
mutate $S/provider/discovery.rs 'if m.issuer != issuer {' 'if false {' $H l10_
mutate $S/provider/verify.rs '.filter(|a| !a.is_hmac())' '' $H j02_hs256
mutate $S/provider/id_token.rs 'if header.contains_key(member) {' 'if false {' $H j03_
mutate $S/provider/id_token.rs 'if !k.is_empty() && k.len() <= MAX_KID_LEN && k.chars().all(|c| !c.is_control()) =>' 'if !k.is_empty() =>' $H j04_
mutate $S/provider/id_token.rs 'if header.contains_key("crit") {' 'if false {' $H j05_
mutate $S/provider/id_token.rs '            .any(|a| *a != expect.client_id && !expect.trusted_audiences.iter().any(|t| t == a))' '            .any(|_| false)' $H j07_
mutate $S/provider/id_token.rs 'if !crate::random::secrets_equal(found.as_bytes(), expected.as_bytes()) {' 'if false {' $H j09_
mutate $S/provider/userinfo.rs 'Some(sub) if sub == expected_sub => Ok(claims),' 'Some(_) => Ok(claims),' $H j10_subject
mutate $S/provider/jwks.rs '&& at.elapsed() < self.min_refetch_interval' '&& false' $H j12_random
mutate $S/provider/id_token.rs '&& !typ.eq_ignore_ascii_case("JWT")' '&& false' $H j13_
mutate $S/provider/id_token.rs 'if out.contains_key(&key) {' 'if false {' $H j14_
mutate $S/session/lookup.rs 'if now >= record.expires_at() {' 'if false {' $H s07_
mutate $S/session/access.rs 'if rules.require_email_verified && !is_true(claims.get("email_verified")) {' 'if false {' $H ar1_users
mutate $S/session/access.rs '|| rules.allowed_email_domains.contains(&domain)' '|| rules.allowed_email_domains.iter().any(|d| domain.ends_with(d.as_str()))' $H ar2_
mutate $S/provider/id_token.rs 'if token.len() > MAX_JWT_BYTES {' 'if false {' $H r03_
mutate $S/provider/http.rs 'let call = async {' 'let cap = usize::MAX; let call = async {' $H r03_
mutate $S/http/cookies.rs 'Some(_) => return CookieValue::Ambiguous,' 'Some(_) => {}' lib differing_duplicates
mutate $S/http/routes/mod.rs 'return Err(SessionError::DuplicateParameter(key));' '' lib r02_

G=guard_proxy
mutate $S/http/proxy/idle.rs 'if this.drop_trailers && frame.is_trailers() {' 'if false {' $G request_trailers
mutate $S/http/headers.rs '.filter(|n| !n.is_empty() && !is_protected_from_connection(n)),' '.filter(|n| !n.is_empty()),' $G p01_connection
mutate $S/http/decision.rs '            && self.is_foreign_origin(view.headers)
        {' '            && false
        {' $G s06_foreign_cors_preflights
mutate $S/http/decision.rs '        let Some(active) = active else {
            return verdict(Decision::SignIn, note);' '        let Some(active) = active else {
            return verdict(Decision::Public, note);' $G s06_preflights
mutate $S/http/proxy/websocket.rs '.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))' '.is_some()' $G other_upgrades
mutate $S/http/serve.rs '.header_read_timeout(keepalive_timeout)' '.header_read_timeout(None)' $G slow_header
mutate $S/http/serve.rs '.header_read_timeout(keepalive_timeout)' '.header_read_timeout(None)' $G d02_idle_keepalive
mutate $S/http/routes/mod.rs 'match tokio::time::timeout(deadline, read_at_most(body, MAX_OWN_BODY)).await' 'match Ok::<_, ()>(read_at_most(body, MAX_OWN_BODY).await)' $G d02_slow_or_large
mutate $S/http/routes/mod.rs '            if read.len() + data.len() > limit {' '            if false {' $G d02_slow_or_large
mutate $S/http/decision.rs '        if self.sessions.has_routes()
            && let Err' '        if false
            && let Err' authorization routes_admit_the_group
mutate $S/session/routes.rs '.find(|r| r.pattern.matches_ignoring_case(path))' '.find(|r| r.pattern.matches(path))' authorization routes_cannot_be_reached
mutate $S/session/routes.rs '    if m == Method::HEAD {' '    if false {' authorization routes_refuse_methods
mutate $S/session/routes.rs 'if !overrides.iter().all(|o| o.as_ref().is_some_and(allowed)) {' 'if false {' authorization routes_refuse_methods
mutate $S/session/routes.rs 'if !overrides.iter().all(|o| o.as_ref().is_some_and(allowed)) {' 'if false {' one_decision g11_the_table_at_the_in_process
mutate $S/path.rs '                && p.strip_suffix' '                && false && p.strip_suffix' authorization routes_cannot_be_reached
mutate $S/config/routes.rs '        if pattern.overlaps_ignoring_case(public) {' '        if false {' lib bad_routes_are_configuration_errors
mutate $S/config/routes.rs '        .find(|(_, e)| e.covers_ignoring_case(pattern))' '        .find(|_| false)' lib bad_routes_are_configuration_errors
mutate $S/http/guard.rs '.insert(HeaderName::from_static(headers::JWT_ASSERTION), assertion);' '.remove(HeaderName::from_static(headers::JWT_ASSERTION));' authorization the_assertion_verifies
mutate $S/session/assertion.rs '        .filter(|&i| i + 1 == records.len() || now < activation(records[i + 1]) + LIFETIME + 60)' '        .filter(|&i| i + 1 == records.len() || now < activation(records[i + 1]) + LIFETIME * 100)' authorization after_a_rotation
mutate $S/session/assertion.rs '        record.created_at + ACTIVATION' '        record.created_at' authorization after_a_rotation
mutate $S/session/assertion.rs '        .filter(|&i| i + 1 == records.len() || now < activation(records[i + 1]) + LIFETIME + 60)' '        .filter(|_| true)' lib retired_keys_are_out_of_use
mutate $S/session/assertion.rs '            && (now + RESIGN_BEFORE < s.expires_at || s.expires_at >= expires_at)' '' authorization assertions_are_signed_again
mutate $S/session/service.rs '        if self.assertions.too_old(now) {' '        if false {' authorization an_instance_idle_through
mutate $S/session/assertion.rs '            .min(now + idle)' '' authorization assertions_end_with_the_idle
mutate $S/session/assertion.rs '            if token.len() <= MAX_ASSERTION {' '            if true {' authorization assertions_end_with_the_idle
mutate $S/http/decision.rs 'Target::Path { path, .. } if self.own.covers(path) =>' 'Target::Path { path, .. } if false =>' forward_auth d03_unknown_paths
mutate $S/http/forward_auth.rs '        (Some(v), None) => Ok(v),' '        (Some(v), _) => Ok(v),' forward_auth p05_original_request_headers
mutate $S/http/forward_auth.rs '.is_ok_and(|h| h.eq_ignore_ascii_case(decider.public_host()))' '.is_ok()' forward_auth p05_original_request_headers
mutate $S/http/decision.rs '            && (self.sessions.has_routes() || !self.token_relay.is_empty())' '            && false' forward_auth p05_untrusted_peers
mutate $S/http/decision.rs '            Target::Untrusted { named: true } => Some(self.untrusted_forwarder(view)),' '' forward_auth p05_untrusted_peers
mutate $S/http/forward_auth.rs '            .any(|o| headers::canonical_is(name.as_str(), o))' '            .any(|o| name.as_str() == *o)' forward_auth p05_untrusted_peers
mutate $S/http/decision.rs '        if view.is_write()
            && !is_same_origin_write(' '        if false
            && !is_same_origin_write(' forward_auth cross_site_writes
mutate $S/http/decision.rs '        if view.is_write()
            && !is_same_origin_write(' '        if false
            && !is_same_origin_write(' $G s06_
mutate $S/http/decision.rs 'if view.websocket && self.is_foreign_origin(view.headers) {' 'if false {' forward_auth cross_site_writes
mutate $S/http/forward_auth.rs '        h.insert(HeaderName::from_static(name), value);' '        if !value.is_empty() { h.insert(HeaderName::from_static(name), value); }' forward_auth p05_public_paths
mutate $S/session/refresh/commit.rs '                fresh.lost.is_some(),' '                false,' forward_auth a_browser_that_never_receives
mutate $S/store/sqlite/mod.rs 'AND (NOT ?12 OR (current_seen = 0 AND previous_id_hash IS NOT NULL))' '' lib sqlite_in_memory_passes_the_conformance
mutate $S/http/forward_auth.rs '        h.insert(HeaderName::from_static(name), value);' '        if !value.is_empty() { h.insert(HeaderName::from_static(name), value); }' front_proxies caddy::missing_values
mutate docs/forward-auth.md '	request_header -*_*' '' front_proxies caddy::a_sign_in_through
# Two layers keep browsers from asking /auth/verify through nginx (the original-request
# names cleared on /auth/, and a 404 for /auth/verify): removing both must be caught.
mutate docs/forward-auth.md '        proxy_set_header X-Original-URI "";
        proxy_set_header X-Original-URL "";
        proxy_set_header X-Original-Method "";
        proxy_set_header X-Forwarded-Uri "";
        proxy_set_header X-Forwarded-Method "";
    }
    # Browsers never reach the verification endpoint.
    location = /auth/verify {
        return 404;
    }' '    }' front_proxies nginx::browsers_never_use_verify
mutate crates/portcullis-idp/src/authorize.rs '        Err(refused) => Err(refused),
    };' '        Err(_) => idp.throttle.turn().await,
    };' idp:provider password_attempts_are_throttled
mutate crates/portcullis-idp/src/authorize.rs '        idp.throttle.failed(name, peer, now());' '' idp:provider password_attempts_are_throttled
mutate crates/portcullis-idp/src/throttle.rs '            if counts.len() >= self.max_keys {
                slot = None;' '            if false {
                slot = None;' idplib the_table_of_addresses_is_bounded
mutate crates/portcullis-idp/src/throttle.rs '            .try_acquire_owned()
            .map_err(|_| Refused::Busy)?;' '            .acquire_owned()
            .await
            .map_err(|_| Refused::Busy)?;' idplib the_queue_of_password_checks
mutate $S/http/proxy/mod.rs 'let _ = body_sent.await;' 'drop(body_sent);' $G uploads_may_outlast
mutate $S/http/decision.rs 'if matches!(view.method, Method::TRACE | Method::CONNECT) {' 'if false {' $G trace_and_connect
mutate $S/path.rs '            Found::Escape(b'"'"'%'"'"') => return Err(PathError::DoubleEncoded),' '' lib p03_
mutate $S/path.rs '            Found::BadEscape => return Err(PathError::BadEscape),' '            Found::BadEscape => {}' lib p03_
mutate $S/http/proxy/mod.rs '.filter(|c| c.forwarded_path == req.uri().path())' '.filter(|_| true)' $G p03_a_path_rewritten
mutate $S/http/proxy/mod.rs '                &normalized
' '                uri.path()
' $G p03_a_path_rewritten
mutate $S/http/proxy/mod.rs '        headers::remove_hop_by_hop(&mut parts.headers, false);
        headers::remove_gateway_set_cookies(&mut parts.headers);' '        headers::remove_hop_by_hop(&mut parts.headers, false);' $G c01_
mutate $S/http/headers.rs '        || canonical_starts_with(name, "x-auth-request-")' '' lib client_headers_in_the_gateway
mutate $S/session/refresh/mod.rs 'let provider_wide = opens_breaker(&e);' 'let provider_wide = true;' sessions f05_one_session
mutate $S/session/refresh/mod.rs 'if let Some(seconds) = self.refreshes.session_pause(family, now) {' 'if let Some(seconds) = None::<u64> {' sessions f05_one_session
mutate $S/provider/mod.rs '.is_none_or(|s| s.iter().any(|s| s == "offline_access"));' '.is_none_or(|_| true);' $H scopes_follow
mutate $S/http/guard.rs '            req.extensions_mut().insert(end);' '            drop(end);' $G w02_
mutate $S/session/ends.rs '                for family in sessions.watched_families() {' '                for family in Vec::<Uuid>::new() {' $G w02_a_websocket_closes_when
mutate $S/store/sqlite/mod.rs '            if live >= i64::from(limits.total) {' '            if false {' $H d01_
mutate $S/http/limits.rs '        Ok(()) => next.run(req).await,
        Err(retry_after) => {' '        Ok(()) | Err(_) => next.run(req).await,
        #[allow(unreachable_patterns)]
        Err(retry_after) => {' $H d01_a_login_flood
mutate $S/http/limits.rs '            Some(ip) if is_trusted(ip.to_canonical()) => continue,' '' lib the_client_is_the_rightmost
mutate $S/http/serve.rs '        if *count >= options.connections_per_peer {' '        if false {' lib d02_one_address
mutate $S/session/login.rs '.filter(|_| super::claims::email_verified(claims))' '.filter(|_| true)' $G e01_an_unverified
mutate $S/session/claims.rs 'let unsaid = claims.contains_key("email") && !claims.contains_key("email_verified");' 'let unsaid = claims.contains_key("email");' $G e01_assume
mutate $S/http/decision.rs 'if view.websocket && self.is_foreign_origin(view.headers) {' 'if false {' $G w01_
mutate $S/http/proxy/websocket.rs '!= expected_accept.as_ref().map(String::as_bytes)' '!= accepted.map(HeaderValue::as_bytes)' $G w03_
mutate $S/http/headers.rs '    canonical_starts_with(name, "x-user-")' '    name.starts_with("x-user-")' $G p01_spoofed
mutate $S/http/guard.rs 'headers::remove_client_claims(req.headers_mut(), trusted);' '' $G p02_
mutate $S/http/headers.rs 'for pair in cookie_pairs(text).filter(|pair| !is_ours(pair)) {' 'for pair in cookie_pairs(text) {' $G p08_
mutate $S/http/headers.rs '.map_or(true, |text| cookie_pairs(text).any(is_ours))' '.map_or(false, |text| cookie_pairs(text).any(is_ours))' lib p08_gateway_cookies
mutate $S/http/request.rs 'Some(origin) => origin.as_bytes() == public_origin.as_bytes(),' 'Some(_) => true,' $G s06_cross_site
mutate $S/http/routes/mod.rs '        if is_same_origin_write(' '        if true || is_same_origin_write(' $G o02_
mutate $S/session/logout.rs 'self.store.delete_session(record.family_id).await?;' '' $G o01_
mutate $S/http/mod.rs '(size > MAX_HEADER_BYTES).then(|| {' '(size > usize::MAX).then(|| {' $G r01_many

SS=sessions
mutate $S/session/lookup.rs 'let past_grace = record.previous_valid_until.is_none_or(|until| now >= until);' 'let past_grace = false;' $SS f06_
mutate $S/session/lookup.rs 'record.matched == IdMatch::Previous && record.current_seen && past_grace' 'record.matched == IdMatch::Previous && past_grace' $SS f06_rotation
mutate $S/session/lookup.rs 'let seen = (presented_current && !rotated).then(|| record.id_hash.clone());' 'let seen = Some(current.hash());' $SS f06_rotation
mutate $S/session/refresh/mod.rs 'let key = format!("refresh:{}", fresh.record.family_id);' 'let key = format!("refresh:{}", random_token());' $SS f03_two_instances
mutate $S/session/refresh/mod.rs 'Err(e) if !keeps_session(&e) => {' 'Err(e) if false && !keeps_session(&e) => {' $SS f02_invalid_grant
mutate $S/session/refresh/commit.rs 'if verified.subject != record.user.subject {' 'if false {' $SS f04_
mutate $S/session/refresh/flight.rs 'b.open_until = now + backoff(b.failures);' 'b.open_until = now;' $SS f05_
mutate $S/session/refresh/mod.rs '.is_some_and(|e| self.now() < e);' '.is_some();' $SS f05_
mutate $S/session/refresh/commit.rs 'let refusals = self.provider_access_refusals(provider.id(), &claims);' 'let refusals: Vec<AccessDenied> = Vec::new();' $SS access_rules_are_applied_again
mutate $S/http/guard.rs '    headers.insert(header::AUTHORIZATION, relay.authorization);' '    headers.append(header::AUTHORIZATION, relay.authorization);' $SS token_relay_
mutate $S/store/mod.rs 'if let Some(r) = self.tokens.refresh_expires_at {' 'if let Some(r) = None::<i64> {' $SS s07_the_session_ends

mutate $S/session/refresh/commit.rs '.find(|d| complete || conclusive(d, &claims));' '.find(|_| true);' $SS without_userinfo
mutate $S/provider/token.rs 'if answer.status.is_server_error() || matches!(answer.status.as_u16(), 408 | 429) {' 'if answer.status.is_server_error() {' $SS f05_

mutate $S/session/refresh/flight.rs 'code.starts_with("http_")' 'false' $SS f05_
mutate $S/session/refresh/flight.rs '                        | "invalid_client"' '' $SS f05_
mutate $S/session/logout.rs '            .filter(|_| !stolen);' ';' $SS f06_signing_out

LO=logout
mutate $S/provider/logout_token.rs '    verify_signature(jwt, keys, hmac_secret)?;' '' $LO o04_
mutate $S/provider/logout_token.rs 'if t != "logout+jwt" && t != "jwt" {' 'if false {' $LO o04_
mutate $S/provider/logout_token.rs 'if claims.contains_key("nonce") {' 'if false {' $LO o04_
mutate $S/provider/logout_token.rs 'if iat > now + LEEWAY_SECONDS || iat < now - MAX_AGE_SECONDS {' 'if false {' $LO o04_
mutate $S/provider/logout_token.rs '.is_some_and(Value::is_object);' '.is_some_and(|_| true) || true;' $LO o04_
mutate $S/session/logout.rs 'if !self.store.remember_once(&key, now, until).await? {' 'if false {' $LO o04_
mutate $S/session/logout.rs '(None, Some(sub)) => self.store.delete_sessions_by_subject(issuer, sub).await,' '(None, Some(_)) => Ok(0),' $LO o05_
mutate $S/http/routes/browser.rs '(Some(s), Some(e)) => secrets_equal(s.as_bytes(), e.as_bytes()),' '(Some(_), _) => true,' $LO o03_
mutate $S/http/routes/posted.rs 'verifier.filter(|v| is_verifier(v)),' 'verifier,' $LO the_spa_exchange

# Shared stores: need PORTCULLIS_TEST_POSTGRES_URL / PORTCULLIS_TEST_REDIS_URL (as in .ci/run).
PG=$S/store/postgres/schema.rs
mutate $PG 'WHERE {p}_refresh_leases.expires_at <= $3 OR {p}_refresh_leases.holder = excluded.holder' 'WHERE TRUE' lib two_postgres_pools
mutate $PG 'WHERE family_id = $1 AND token_version = $2' 'WHERE family_id = $1' lib postgres_passes
mutate $PG ' AND NOT current_seen' '' lib postgres_passes
mutate $S/store/postgres/notify.rs '                    feed.connection_lost();
                }
                Err(e) => {' '                }
                Err(e) => {' lib a_killed_feed_connection
mutate $S/store/sqlite/feed.rs 'if gap || foreign > 0 {' 'if gap {' lib sqlite_file_passes
mutate $S/store/sqlite/feed.rs 'UPDATE feed_log SET origin = ?1 WHERE seq > ?2' 'UPDATE feed_log SET origin = ?1 WHERE 0' lib own_writes_are_claimed
mutate $S/store/sqlite/mod.rs ' OR refresh_leases.holder = excluded.holder' '' lib sqlite_in_memory
mutate $S/session/refresh/mod.rs '.renewing_lease(&key, &holder, self.refresh_with_lease(fresh, version))' '.renewing_lease(&key, "", self.refresh_with_lease(fresh, version))' cli:instances postgres::m03_a_slow
mutate $S/store/copy.rs 'Some(there) if there.issuer == user.issuer && there.subject == user.subject => {' 'Some(_) | None => {' lib a_user_known_under_another_id

# The session cache.
C=$S/session/cache.rs
mutate $C 'if self.epoch.load(Ordering::Acquire) != epoch || !self.live() {' 'if !self.live() {' lib a_read_that_straddles
mutate $C '        if !self.live() {
            self.stats.bypass();' '        if false {
            self.stats.bypass();' lib a_silent_feed
mutate $C 'FeedEvent::Reset => cache.drop_cached(None, &[]),' 'FeedEvent::Reset => {}' lib a_reset_empties
mutate $C 'if self.revivals.load(Ordering::Acquire) != revivals {' 'if false {' lib a_silent_feed
mutate $C '.is_some_and(|r| r.id_hash == *seen && r.current_seen)' '.is_some()' lib a_sighting_the_cache_cannot_vouch
mutate $C 'Ok(false) => self.drop_cached(Some(family), &[]),' 'Ok(false) => {}' lib a_session_purged_elsewhere
mutate $C '        let result = self.inner.delete_session(family_id).await;
        self.drop_cached(Some(family_id), &[]);' '        let result = self.inner.delete_session(family_id).await;' lib the_second_read_is_a_hit
mutate $S/session/lookup.rs 'if ends_here(&record, now) {' 'if false {' lib an_expiry_seen_in_the_cache
mutate $S/session/lookup.rs '    now >= record.expires_at() || record.matched == IdMatch::Previous' '    now >= record.expires_at()' lib a_rotated_away_id_is_judged

# J07 with trusted audiences: each other audience listed, azp required.
mutate $S/provider/id_token.rs '        None if others > 0 => return Err(IdTokenError::WrongAuthorizedParty),' '' hostile_provider j07_a_trusted_extra_audience
mutate $S/provider/id_token.rs '            .any(|a| *a != expect.client_id && !expect.trusted_audiences.iter().any(|t| t == a))' '            .any(|a| *a != expect.client_id && expect.trusted_audiences.is_empty())' hostile_provider j07_a_trusted_extra_audience
mutate $S/provider/id_token.rs '    if others == audiences.len()' '    if audiences.is_empty()' hostile_provider j07_a_trusted_extra_audience

mutate $S/session/login.rs '            self.end_session_by_id(old).await;' '' hostile_provider s03_logging_in_again

# Day two: metrics off the public listener, reloads that keep sessions, the drain.
mutate $S/config/server.rs '            if a.port() == listen.port()' '            if false && a.port() == listen.port()' lib metrics_never_share_the_public_listener
mutate $S/config/store.rs '            errors.push(
                "`secret` and `secret_file` are both set' '            std::mem::drop::<String>(
                "`secret` and `secret_file` are both set' lib secret_file_holds_the_key_ring
mutate $S/session/reload.rs '            if !ring.opens_what_is_sealed_by(&running) {' '            if false {' sessions a_reload_puts_a_new_key
mutate $S/session/reload.rs '            self.keys.store(keys);' '' sessions a_reload_puts_a_new_key
mutate $S/session/assertion.rs '        .find(|r| ring.open(&r.sealed_key, &seal_context(&r.kid)).is_err())' '        .find(|_| false)' sessions a_reload_puts_a_new_key
mutate $S/session/reload.rs '        self.routes.store(RouteRules::new(&new.routes));' '' sessions a_reload_puts_a_new_key
mutate $S/http/serve.rs '                tunnels.close_all();' '' guard_proxy a_shutdown_lets_open_websockets
mutate $S/http/serve.rs '        let open = tunnels.open();' '        let open = 0;' guard_proxy a_shutdown_lets_open_websockets
mutate $S/doctor/client.rs '(_, None) if tried.iter().all(|t| t.outcome == ProbeOutcome::Refused) => report.problem(' '(_, None) if false => report.problem(' cli:doctor a_wrong_client_secret

# One decision for every door (G01–G05, G11): the table of one_decision.rs at the
# in-process doors and behind nginx and Caddy.
O=one_decision
OT=g11_the_table_at_the_in_process
mutate $S/http/decision.rs '            Target::Path { normal: false, .. } if forward_auth =>' '            Target::Path { normal: false, .. } if false =>' $O $OT
mutate $S/http/decision.rs '            Target::Path { normal: false, .. } if forward_auth =>' '            Target::Path { normal: false, .. } if false =>' $O g11_the_table_behind_nginx
mutate $S/path.rs "Some(b'/' | b'\\\\' | b';' | b'.' | b'%') | None => return false," "None => return false," $O $OT
mutate $S/path.rs "Some(b'/' | b'\\\\' | b';' | b'.' | b'%') | None => return false," "None => return false," lib g01_normal_form
mutate $S/path.rs 'if matches!(segment, "." | "..") || (segment.is_empty() && !last) {' 'if false {' $O $OT
mutate $S/path.rs "            b';' | b'\\\\' => return false," "            b'\\\\' => return false," $O $OT
mutate $S/http/request.rs '        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)' '' $O $OT
mutate $S/http/request.rs '        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)' '' front_proxies nginx::websockets_pass
mutate $S/http/request.rs '            .any(|o| super::headers::canonical_is(name.as_str(), o))' '            .any(|o| name.as_str() == *o)' $O $OT
mutate $S/http/request.rs '            if is_method_key(&key) {' '            if false {' $O $OT
mutate $S/http/decision.rs '            Target::Path { normal: false, .. } if view.door == Door::Layer => {' '            Target::Path { normal: false, .. } if false => {' $O $OT
mutate $S/http/decision.rs '        changes_state(&self.method)
            || self' '        changes_state(&self.method)
            || false && self' $O $OT
mutate $S/http/headers.rs '                || is_routing_header(n)
' '' $G p04_g05
mutate $S/http/headers.rs '(!peer_trusted || odd_spelling(n))' '!peer_trusted' $G p04_g05
mutate $S/http/headers.rs '(!peer_trusted || odd_spelling(n))' '!peer_trusted' lib g05_forwarding_headers_in_odd
mutate $S/http/proxy/mod.rs '            h.remove(name);' '            let _ = name;' $G p04_g05
mutate $S/http/request.rs '                        !k.is_ascii_alphanumeric()' "                        k == '_'" lib g04_overrides
mutate $S/http/proxy/mod.rs '                Some(v) => h.insert(name, v.clone()),' '                Some(v) if !h.contains_key(&name) => h.insert(name, v.clone()),
                Some(_) => None,' $G p04_g05
mutate docs/forward-auth.md '        proxy_set_header X-Rewrite-URL "";
' '' front_proxies nginx::routing_and_identity
mutate docs/forward-auth.md '        proxy_set_header X-User-Provider $portcullis_provider;
' '' front_proxies nginx::missing_values_reach_the_app_empty
mutate docs/forward-auth.md '	request_header -X-Original-*
' '' front_proxies caddy::routing_and_identity
mutate docs/forward-auth.md '	request_header -X-User-*
' '' front_proxies caddy::routing_and_identity

# Third-round hardening (G06–G10).
mutate $S/http/limits.rs '    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }' '' lib g07_
mutate $S/http/limits.rs '    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }' '' hostile_provider g07_
mutate $S/http/limits.rs '            _ => return Some(ClientKey::of_forwarded(entry)),' '            _ => return Some(ClientKey::of(peer)),' hostile_provider g07_
mutate $S/http/headers.rs "b != b'%' && b != b','" "b != b'%'" lib g10_
mutate $S/http/headers.rs "b != b'%' && b != b','" "b != b'%'" forward_auth g10_
mutate $S/session/assertion.rs '        self.loaded_at.store(now, Ordering::Relaxed);' '' lib keys_read_just_now
mutate $S/http/access.rs '            path: printable(path),' '            path,' logging no_token_code
mutate $S/session/lookup.rs '        if !self.ring_holds_keys_of(&record) {' '        if false {' sessions g08_
mutate $S/session/assertion.rs '        if !records.iter().any(|r| ring.holds_key_of(&r.sealed_key)) {' '        if records.is_empty() {' sessions g08_
mutate $S/session/assertion.rs '        if !records.iter().any(|r| ring.holds_key_of(&r.sealed_key)) {' '        if records.is_empty() {' lib g08_
mutate $S/session/assertion.rs '        key.created_at = now - ACTIVATION;' '' lib g08_
mutate $S/session/assertion.rs '    newest.is_some() && newest_opened < newest' '    false' sessions g08_
mutate $S/session/assertion.rs '        .filter(|r| !ring.holds_key_of(&r.sealed_key))' '        .filter(|_| true)' sessions g08_
mutate $S/session/login.rs '        if !self.keys().holds_key_of(&tx.verifier) {' '        if false {' sessions g08_
mutate $S/session/service.rs '        if let Err(e) = self.prepare_assertion_keys().await {' '        if let Err(e) = Ok::<(), super::assertion::AssertionError>(()) {' sessions g08_
mutate $S/session/seal.rs '            (Some("v1"), Some(kid)) => self.keys.iter().any(|k| k.id == kid),' '            (Some("v1"), Some(_)) => true,' lib g08_
mutate $S/session/cache.rs '                        FeedEvent::UserChanged(user) => cache.drop_user(user),' '                        FeedEvent::UserChanged(_) => {}' lib g09_
mutate $S/store/sqlite/mod.rs '                self.feed.publish(FeedEvent::UserChanged(user.id));' '' lib sqlite_in_memory_passes_the_conformance
# With PORTCULLIS_TEST_POSTGRES_URL / PORTCULLIS_TEST_REDIS_URL set (as .ci/run sets them):
mutate $S/store/postgres/mod.rs '            if before.is_some_and(|(email, name)| email != user.email || name != user.name) {' '            if before.is_some_and(|_| false) {' lib postgres_passes_the_conformance
mutate $S/store/redis/upsert_user.lua "  announce('u ' .. id)" "" lib redis_passes_the_conformance
mutate $S/session/service.rs '        if super::assertion::stale_ring(&records, &ring) {
            return Ok(None);' '        if false {
            return Ok(None);' sessions g08_
mutate $S/session/assertion.rs '        match store.feed().another_ring_is_running() {' '        match Some(false) {' cli:instances g08_
mutate $S/store/feed.rs '                        self.heard_ring(ring);' '                        let _ = ring;' cli:instances g08_
mutate $S/provider/id_token.rs '    if segments.len() != 3 || segments[..2].iter().any(|s| s.is_empty()) {' '    if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {' lib j02_an_unsigned
mutate $S/doctor/provider.rs '    if lists("email") && !lists("email_verified") && !entry.settings.assume_email_verified {' '    if false {' lib emails_without_email_verified
C=crates/portcullis-cli/src
mutate $C/log_output.rs "            '=' if !quoted => out.write_str(\"\\\\u{3d}\")?," '' clibin g06_no_value
mutate $C/log_output.rs '            name if plain => write!(self.writer, "{name}={value}"),' '            name => write!(self.writer, "{name}={value}"),' clibin g06_no_value
mutate $C/log_output.rs 'escape_invisible(&buf, self.json) {' 'escape_invisible(&buf, self.json).filter(|_| false) {' clibin g06_json

# Client authentication (issue 24).
CA=client_auth
mutate $S/jose/client_key.rs '"jti": crate::random::random_token(),' '"jti": "one",' lib every_kind_signs_assertions
mutate $S/jose/client_key.rs 'pub const ASSERTION_LIFETIME_SECS: i64 = 60;' 'pub const ASSERTION_LIFETIME_SECS: i64 = 3600;' lib every_kind_signs_assertions
mutate $S/jose/client_key.rs 'if parsed.subject_public_key_info().as_ref() != key.spki.as_slice() {' 'if false {' lib a_certificate_must_hold
mutate $S/provider/client_auth.rs 'if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {' 'if false {' $CA a_wrong_secret_costs_one_probe
mutate $S/provider/client_auth.rs '            memory.remember(&key, method.name()).await;' '' $CA the_probe_picks_post
mutate $S/provider/client_auth.rs '        _ => return ProbeOutcome::Inconclusive,' '        _ => return ProbeOutcome::Works,' $CA an_inconclusive_probe
mutate $S/provider/mod.rs '&& (e == "invalid_client" || e == "http_401")' '&& false' $CA a_real_invalid_client_forgets
mutate crates/portcullis-idp/src/token.rs '        .first_use(&client.id, jti, exp + ASSERTION_LEEWAY)' '        .first_use(&client.id, jti, exp + ASSERTION_LEEWAY) && false' $CA dev_provider_signs_in_a_private_key_jwt
mutate crates/portcullis-idp/src/token.rs '        && format!("{registered:?}") != format!("{:?}", header.alg)' '        && false' $CA dev_provider_verifies_a_key_only_for
mutate crates/portcullis-idp/src/token.rs '(None, None) if client.jwks.is_none() => Ok(client),' '(None, None) => Ok(client),' $CA dev_provider_signs_in_a_private_key_jwt

I=crates/portcullis-idp/src
P=idp:provider
mutate $I/authorize.rs 'if p.get("code_challenge_method").map(String::as_str) != Some("S256") {' 'if false {' $P a01_
mutate $I/token.rs 'if !secrets_equal(s256(verifier).as_bytes(), row.challenge.as_bytes()) {' 'if false {' $P a02_
mutate $I/authorize.rs 'if !client.redirect_uris.iter().any(|r| r == redirect_uri) {' 'if !client.redirect_uris.iter().any(|r| redirect_uri.starts_with(r.as_str())) {' $P a03_
mutate $I/token.rs 'if f.get("redirect_uri") != Some(&row.redirect_uri) {' 'if false {' $P a03_
mutate $I/token.rs '    if row.uses > 1 {' '    if false {' $P a04_
mutate $I/token.rs 'if now() >= row.expires_at {' 'if false {' $P a04_
mutate $I/logout.rs '        hinted: fresh_hint,' '        hinted: hint.is_some(),' $P an_expired_id_token_hint
mutate $I/store.rs 'WHERE code_hash = ?1 AND client_id = ?3' 'WHERE code_hash = ?1 AND ?3 IS NOT NULL' $P a04_
mutate $I/token.rs '    if uses > 1 {' '    if false {' $P a05_
mutate $I/token.rs 'if grant.client_id != client.id {' 'if false {' $P a06_
mutate $I/token.rs 'if requested.split_whitespace().any(|s| !allowed.contains(&s)) {' 'if false {' $P a06_
mutate $I/token.rs '                idp.store.revoke_grant(&grant_id).await?;' '' $P a07_
mutate $I/authorize.rs 'q.append_pair("iss", &idp.config.issuer);' '' $P a08_
mutate $I/authorize.rs 'if expected.is_empty() || !secrets_equal(sent.as_bytes(), expected.as_bytes()) {' 'if false {' $P a09_
mutate $I/lib.rs 'h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));' '' $P a09_

# Pushed authorization requests (RFC 9126).
mutate $S/provider/par.rs '.filter(|u| !u.is_empty() && u.len() <= MAX_REQUEST_URI && !u.chars().any(char::is_control))' '.or(Some("urn:forged"))' par a_par_answer_without_request_uri
mutate $S/provider/mod.rs 'url: authorize::pushed_url(&metadata, &self.settings.client_id, &pushed.request_uri)?,' 'url: authorize::authorize_url(&metadata, &request)?,' par the_pushed_request_carries_everything
mutate $S/session/login.rs '.map_or(LOGIN_TTL_SECONDS, |s| s.min(LOGIN_TTL_SECONDS)),' '.map_or(LOGIN_TTL_SECONDS, |_| LOGIN_TTL_SECONDS),' par the_login_transaction_ends_with_its_request_uri
mutate $S/provider/mod.rs '(ParSetting::Never, _) if required => Err(' '(ParSetting::Never, _) if false => Err(' par interop_par_never
mutate $S/provider/par.rs 'if !form.iter().any(|(present, _)| *present == name) {' 'if true {' par interop_par_over_client_secret_post

# A shared value created once (add_setting: the first of racing instances wins).
mutate $S/store/sqlite/mod.rs '"INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING";' '"INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";' lib sqlite_in_memory_passes_the_conformance
mutate $S/store/redis/mod.rs 'redis::cmd("HSETNX")' 'redis::cmd("HSET")' lib redis_passes_the_conformance

# DPoP (provider.dpop): bound tokens only, bounded nonce retries, one key per ring
# (G08), the code bound to the key, the gateway's proof replaces the client's.
mutate $S/provider/token.rs '    if !token_type.eq_ignore_ascii_case(expected) {' '    if false {' dpop a_bearer_token_when_dpop_is_on_is_refused
mutate $S/provider/dpop.rs 'if retries == NONCE_RETRIES || !asks(&answer) {' 'if retries == 5 || !asks(&answer) {' dpop a_provider_that_asks_for_a_nonce_forever
mutate $S/session/dpop.rs '    if !ring.holds_key_of(&sealed) {' '    if false {' lib a_new_secret_leaves_the_old_key
mutate $S/provider/mod.rs 'dpop_jkt: dpop_key.map(DpopKey::jkt),' 'dpop_jkt: None,' dpop the_code_is_bound_and_redeemed
mutate $S/http/guard.rs '            headers.remove(dpop);' '' sessions token_relay_sends_a_fresh
mutate $S/http/guard.rs '            headers.insert(dpop, proof);' '            headers.append(dpop, proof);' dpop relay_sends_the_bound_token
mutate $S/http/forward_auth.rs '            h.insert(dpop, relay.dpop.unwrap_or(HeaderValue::from_static("")));' '' forward_auth p05_

mutate $S/session/lookup.rs '                .is_ok_and(|p| p.settings().dpop)' '                .is_ok_and(|_| false)' dpop an_unbound_token_is_not_relayed
mutate $S/http/decision.rs '        (Door::ForwardAuth, Some(raw)) => raw.split' '        (Door::ForwardAuth, Some(raw)) if false => raw.split' dpop forward_auth_answers_carry_the_bound_token
mutate $S/session/dpop.rs '    if !ring.sealed_with_sealing_key(&sealed) {' '    if false {' lib a_rotated_ring_keeps_the_key
mutate $S/config/proxy.rs '                    if pattern.overlaps_ignoring_case(public) {' '                    if false {' lib a_relay_path_may_not_overlap

# provider.profile = "fapi2": metadata checked at every load, short-lived request_uri,
# the profile's settings forced or refused.
mutate $S/provider/mod.rs '        let problems = self.profile_problems(&metadata);' '        let problems: Vec<String> = Vec::new();' fapi fapi2_against_a_provider_without_dpop
mutate $S/provider/mod.rs '        if self.settings.fapi2 && pushed.expires_in >= 600 {' '        if false {' fapi under_fapi2_a_par_answer_living_600
mutate $S/config/profile.rs '        None => settings.allowed_algorithms = Some(FAPI2_ALGORITHMS.to_vec()),' '        None => {}' lib fapi2_requires_the_whole_profile
mutate $S/config/mod.rs '    if spa.code_exchange
        && providers' '    if false
        && providers' lib fapi2_requires_the_whole_profile

# Several providers (G12): the callback and `iss` of the sign-in's provider only, a
# logout token judged by the provider it names, nOAuth, routes limited to providers,
# tenants of a multi-tenant issuer, a removed provider's sessions, the configuration.
P=several_providers
mutate $S/session/login.rs '            if tx.provider_id != callback_provider {' '            if false {' $P g12_a_code_and_state_from_corp
mutate $S/provider/authorize.rs 'Some(found) if settings.accepts_issuer(found) => Ok(()),' 'Some(_) => Ok(()),' $P g12_partners_iss_at_corps_callback
mutate $S/provider/set.rs '        Some((self.by_issuer(&iss)?, iss))' '        Some((self.list.first()?, iss))' $P g12_a_logout_token_signed_by_partner
mutate $S/session/providers.rs '            claims.insert("email_verified".to_owned(), Value::Bool(false));' '' $P g12_noauth
mutate $S/session/routes.rs '            && !ids.iter().any(|id| id == caller.provider_id)' '            && ids.is_empty()' $P the_same_address_at_two_providers
mutate $S/provider/mod.rs '            .any(|t| t == tid)' '            .any(|_| true)' $P g12_a_tenant_outside_allowed_tenants
mutate $S/provider/mod.rs '            .any(|t| self.issuer.replace(crate::config::TENANT_PLACEHOLDER, t) == iss)' '            .any(|_| true)' $P g12_a_tenant_outside_allowed_tenants
mutate $S/session/lookup.rs '        if self.providers.get(&record.provider_id).is_none() {' '        if false {' $P a_session_of_a_removed_provider
mutate $S/session/providers.rs '            refusals.extend(access_refusals(own, claims));' '' $P a_providers_own_rules_apply
mutate $S/config/providers.rs '            if let Some(other) = issuers.insert(iss.clone(), &p.id) {' '            if let Some(other) = issuers.insert(iss.clone(), &p.id).filter(|_| false) {' lib entries_are_checked_alone_and_together
mutate $S/config/spa.rs '                if code_exchange {' '                if false {' lib routes_and_the_spa_exchange_name_providers
mutate $S/config/providers.rs '        Some(_) if top_level => {' '        Some(_) if false => {' lib never_both_forms_environment_included

# G13: machine clients' access tokens (docs/machine-clients.md).
M=machine_clients
mutate $S/session/bearer.rs '                return Err(refused("dpop_bound_token_as_bearer"));' '                let _ = refused("dpop_bound_token_as_bearer");' $M g13_dpop_bound_tokens
mutate $S/session/bearer/proof.rs '            Ok(false) => Err(proof_error(ProofError::Replayed)),' '            Ok(false) => Ok(()),' $M g13_dpop_bound_tokens
mutate $S/session/bearer.rs '                    .await?;' '                    .await.ok();' $M g13_dpop_bound_tokens
mutate $S/store/redis/fields.rs '        IdentityKind::Client => format!("client\n{user}"),' '        IdentityKind::Client => user,' lib redis_passes_the_conformance_suite
mutate $S/session/bearer.rs '                (IdentityKind::Client, c)' '                (IdentityKind::User, c)' $M g13_a_client_named_like_a_user
mutate $S/provider/access_token.rs '        .any(|a| expect.audiences.iter().any(|want| want == a))' '        .any(|a| !a.is_empty() || expect.audiences.is_empty())' access_tokens g13_a_valid_access_token
mutate $S/session/routes.rs '        if let Some(scope) = caller.missing_scope(&route.required_scopes) {' '        if let Some(scope) = caller.missing_scope(&[]) {' $M g13_email_rules_refuse_clients
mutate $S/session/bearer.rs '        if entry.access' '        if false' $M g13_email_rules_refuse_clients
mutate $S/session/bearer/proof.rs '            if !fresh(window) && !fresh(window - 1) {' '            if false {' $M g13_dpop_nonces
mutate $S/provider/access_token.rs '    if answer.get("active") != Some(&Value::Bool(true)) {' '    if answer.get("active").is_none() {' $M g13_introspection
mutate $S/session/bearer.rs '            .position(|e| e.introspection && e.covers(request.path))' '            .position(|e| e.introspection)' $M g13_introspection
mutate $S/session/bearer.rs "    token.split('.').count() == 3" '    token.is_empty()' $M g13_introspection
mutate $S/provider/access_token.rs '    if expect.now >= exp {' '    if expect.now >= exp + 86_400 {' $M g13_introspection
mutate $S/session/bearer/proof.rs '            (Err(ProofError::WrongUri), Some(as_sent)) => verify(as_sent),' '            (Err(ProofError::WrongUri), Some(_)) => verify(request.htu),' $M g13_dpop_bound_tokens
mutate $S/session/reload.rs '        self.bearer.forget_validated();' '' $M g13_email_rules_refuse_clients
mutate $S/session/service.rs '        if let Some(granted) = &record.tokens.granted_scope {' '        if let Some(granted) = record.tokens.granted_scope.as_ref().filter(|_| false) {' $M g13_email_rules_refuse_clients

echo
if $patterns_only; then
  if [ "$survivors" -eq 0 ]; then echo "every pattern is in place"; else echo "$survivors pattern(s) missing"; exit 1; fi
  exit 0
fi
if [ "$survivors" -eq 0 ]; then echo "every defence is caught by its test"; else echo "$survivors defence(s) not caught"; exit 1; fi
