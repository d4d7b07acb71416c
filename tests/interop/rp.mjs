// A certified relying party (npm `openid-client`, panva) driving `portcullis idp`:
// discovery, authorization code + PKCE through the real sign-in form, token, userinfo,
// refresh with rotation, reuse detection, revocation and end_session. Prints one JSON
// object with what each step saw; the Rust test asserts on it.
//
// env: ISSUER, CLIENT_ID, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI, USERNAME, PASSWORD
import * as client from 'openid-client';

const env = process.env;
const out = {};
const options = { execute: [client.allowInsecureRequests] };

async function errorOf(promise) {
  try { await promise; return null; } catch (e) { return e.error ?? e.code ?? String(e.message ?? e); }
}

// The browser part: GET the authorization URL, fill in the form, follow redirects
// until the redirect URI is reached. Returns that URL.
async function signIn(url) {
  let cookies = [];
  const jar = () => cookies.map((c) => c.split(';')[0]).join('; ');
  let res = await fetch(url, { redirect: 'manual' });
  cookies.push(...res.headers.getSetCookie());
  const html = await res.text();
  const fields = new URLSearchParams();
  for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) {
    fields.append(m[1], m[2].replaceAll('&amp;', '&').replaceAll('&quot;', '"').replaceAll('&#x27;', "'").replaceAll('&lt;', '<').replaceAll('&gt;', '>'));
  }
  fields.append('username', env.USERNAME);
  fields.append('password', env.PASSWORD);
  res = await fetch(new URL('/authorize', url), {
    method: 'POST', redirect: 'manual', body: fields,
    headers: { cookie: jar(), 'content-type': 'application/x-www-form-urlencoded' },
  });
  out.form_status = res.status;
  cookies.push(...res.headers.getSetCookie());
  return { callback: new URL(res.headers.get('location')), cookies: jar() };
}

const config = await client.discovery(new URL(env.ISSUER), env.CLIENT_ID, undefined, client.None(), options);
out.issuer = config.serverMetadata().issuer;

const verifier = client.randomPKCECodeVerifier();
const challenge = await client.calculatePKCECodeChallenge(verifier);
const state = client.randomState();
const nonce = client.randomNonce();
const authUrl = client.buildAuthorizationUrl(config, {
  redirect_uri: env.REDIRECT_URI, scope: 'openid email profile', code_challenge: challenge,
  code_challenge_method: 'S256', state, nonce,
});
const { callback, cookies } = await signIn(authUrl);
out.callback_has_iss = callback.searchParams.get('iss') === env.ISSUER;

const tokens = await client.authorizationCodeGrant(config, callback, {
  pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true,
});
out.sub = tokens.claims().sub;
out.email = tokens.claims().email;
const info = await client.fetchUserInfo(config, tokens.access_token, tokens.claims().sub);
out.userinfo_name = info.name;

const r1 = await client.refreshTokenGrant(config, tokens.refresh_token);
out.rotated = r1.refresh_token !== tokens.refresh_token;
const r2 = await client.refreshTokenGrant(config, r1.refresh_token);
out.rotated_again = r2.refresh_token !== r1.refresh_token;
out.reuse_error = await errorOf(client.refreshTokenGrant(config, tokens.refresh_token));
out.family_error = await errorOf(client.refreshTokenGrant(config, r2.refresh_token));

// Revocation, on a fresh login (the provider session is still live: no form).
const v2 = client.randomPKCECodeVerifier();
const url2 = client.buildAuthorizationUrl(config, {
  redirect_uri: env.REDIRECT_URI, scope: 'openid email profile',
  code_challenge: await client.calculatePKCECodeChallenge(v2), code_challenge_method: 'S256', state,
});
const again = await fetch(url2, { redirect: 'manual', headers: { cookie: cookies } });
out.sso_status = again.status;
const t2 = await client.authorizationCodeGrant(config, new URL(again.headers.get('location')), {
  pkceCodeVerifier: v2, expectedState: state,
});
await client.tokenRevocation(config, t2.refresh_token);
out.revoked_error = await errorOf(client.refreshTokenGrant(config, t2.refresh_token));

const end = client.buildEndSessionUrl(config, {
  id_token_hint: t2.id_token, post_logout_redirect_uri: env.POST_LOGOUT_REDIRECT_URI, state: 'bye',
});
const endRes = await fetch(end, { redirect: 'manual', headers: { cookie: cookies } });
out.end_session_status = endRes.status;
out.end_session_location = endRes.headers.get('location');
const after = await fetch(url2, { redirect: 'manual', headers: { cookie: cookies } });
out.after_logout_status = after.status;

console.log(JSON.stringify(out));
