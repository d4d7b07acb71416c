// Test OpenID provider for Portcullis interop tests, built on the certified
// `oidc-provider` package. Test use only: in-memory storage, fixed cookie keys,
// throwaway signing keys generated at start-up. Configured by environment only.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';
import Provider, { errors } from 'oidc-provider';
import { EmbeddedJWK, calculateJwkThumbprint, jwtVerify } from 'jose';

// stdout carries only the READY line; oidc-provider NOTICEs (console.info) go to stderr.
console.info = (...args) => console.error(...args);
const env = process.env;
const int = (name, dflt) => (env[name] ? Number.parseInt(env[name], 10) : dflt);
const PORT = int('PORT', 0);
const HOST = '127.0.0.1';

const CLIENTS = env.OIDC_CLIENTS ? JSON.parse(env.OIDC_CLIENTS) : [{
  client_id: 'app',
  token_endpoint_auth_method: 'none',
  redirect_uris: ['http://127.0.0.1:8080/auth/callback'],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
}];

const USERS = {
  alice: { password: 'alice', email: 'alice@example.com', email_verified: true, name: 'Alice Example', groups: ['admins', 'staff'] },
  bob: { password: 'bob', email: 'bob@example.org', email_verified: true, name: 'Bob Builder', groups: ['staff'] },
  carol: { password: 'carol', email: 'carol@example.com', email_verified: false, name: 'Carol Unverified' },
};

const jwk = (type, opts, alg, kid) => ({
  ...generateKeyPairSync(type, opts).privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid,
});
const KEYS = [
  jwk('rsa', { modulusLength: 2048 }, 'RS256', 'rs256-test'), // first key = default for RS256
  jwk('ec', { namedCurve: 'P-256' }, 'ES256', 'es256-test'),
];

// Back-channel logout: oidc-provider passes an SSRF-guarded undici dispatcher that
// refuses special-use addresses. Drop it ONLY for literal loopback targets.
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
function loopbackFetch(url, options) {
  if (LOOPBACK.has(new URL(url).hostname)) delete options.dispatcher;
  return globalThis.fetch(url, options);
}

// Test hooks: event counters.
const COUNTED = ['grant.success', 'grant.error', 'grant.revoked',
  'backchannel.success', 'backchannel.error', 'end_session.success'];
const counts = Object.fromEntries([...COUNTED, 'revocation.success'].map((e) => [e, 0]));
const grants = { authorization_code: 0, refresh_token: 0 };

// Listen first: the issuer must contain the real port (PORT=0 picks a free one).
const server = http.createServer();
await new Promise((resolve) => { server.listen(PORT, HOST, resolve); });
const issuer = `http://${HOST}:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: CLIENTS,
  jwks: { keys: KEYS },
  cookies: { keys: ['portcullis-interop-test-key-1', 'portcullis-interop-test-key-2'] },
  responseTypes: ['code'],
  // SCOPES (space-separated) stands for providers without `offline_access` (Google).
  scopes: env.SCOPES ? env.SCOPES.split(' ') : ['openid', 'email', 'profile', 'offline_access'],
  // `groups` with the profile scope, as Keycloak's and Okta's group mappers can be set up.
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
  // Put scope-granted claims into the ID token too (default true = userinfo only).
  conformIdTokenClaims: env.CONFORM_ID_TOKEN_CLAIMS === '1',
  ttl: {
    AccessToken: int('ACCESS_TOKEN_TTL', 300),
    IdToken: int('ID_TOKEN_TTL', 300),
    RefreshToken: int('REFRESH_TOKEN_TTL', 86400),
    AuthorizationCode: 60,
    Interaction: 3600,
    Grant: Math.max(int('REFRESH_TOKEN_TTL', 86400), 86400),
    Session: Math.max(int('REFRESH_TOKEN_TTL', 86400), 86400),
  },
  pkce: { required: () => true }, // v9 only implements S256 (no `methods` option)
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    // v9 emits no revocation.success event: count here (clients may revoke only their own tokens).
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => {
        const ok = token.clientId === client.clientId;
        if (ok) counts['revocation.success'] += 1;
        return ok;
      },
    },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    // REQUIRE_PAR=1: the metadata says require_pushed_authorization_requests (RFC 9126).
    pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: env.REQUIRE_PAR === '1' || env.FAPI === '1' },
    // FAPI=1: the FAPI 2.0 Security Profile, PAR required, DPoP proofs with server
    // nonces at every token request (clients opt into bound tokens with
    // `dpop_bound_access_tokens`).
    ...(env.FAPI === '1' ? {
      fapi: { enabled: true, profile: '2.0' },
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    } : {}),
    // API_RESOURCE: machine clients. Client-credentials tokens for APIs named with RFC
    // 8707 `resource`: API_RESOURCE and https://other.example get RFC 9068 JWTs,
    // OPAQUE_RESOURCE opaque tokens (introspection, which any authenticated client may
    // ask); a DPoP proof at the token endpoint binds the token (RFC 9449).
    ...(env.API_RESOURCE ? {
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      dPoP: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: async (ctx, resource) => {
          const jwt = { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
          if (resource === env.API_RESOURCE) {
            return { scope: 'orders:read orders:admin', audience: resource, ...jwt };
          }
          if (resource === 'https://other.example') {
            return { scope: 'orders:read', audience: resource, ...jwt };
          }
          if (env.OPAQUE_RESOURCE && resource === env.OPAQUE_RESOURCE) {
            return { scope: 'orders:read', audience: resource, accessTokenFormat: 'opaque' };
          }
          throw new errors.InvalidTarget();
        },
      },
    } : {}),
  },
  fetch: loopbackFetch,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const u = USERS[id];
    if (!u) return undefined;
    return {
      accountId: id,
      claims: async () => ({
        sub: id, email: u.email, email_verified: u.email_verified, name: u.name,
        ...(u.groups ? { groups: u.groups } : {}),
      }),
    };
  },
});

for (const e of COUNTED) provider.on(e, () => { counts[e] += 1; });

// Test hook: a slow token endpoint (TOKEN_DELAY_MS), so that concurrent refreshes
// from several gateway instances really overlap unless they are coordinated. A token
// request whose client went away during the delay (a gateway killed mid-refresh) is
// dropped unanswered and unprocessed, as a real provider would never see it complete.
const TOKEN_DELAY_MS = int('TOKEN_DELAY_MS', 0);
const tokenRequests = { started: 0, dropped: 0 };
if (TOKEN_DELAY_MS > 0) {
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === '/token') {
      tokenRequests.started += 1;
      const socket = ctx.req.socket;
      let gone = false;
      const onClose = () => { gone = true; };
      socket.once('close', onClose);
      socket.once('end', onClose);
      await new Promise((resolve) => { setTimeout(resolve, TOKEN_DELAY_MS); });
      socket.off('close', onClose);
      socket.off('end', onClose);
      if (gone || socket.destroyed) {
        tokenRequests.dropped += 1;
        socket.destroy();
        return;
      }
    }
    await next();
  });
}
// Test hook: NO_ISS=1 stands for providers without RFC 9207 (Google, Entra ID): the
// metadata does not announce it and authorization responses carry no `iss`.
if (env.NO_ISS === '1') {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/.well-known/openid-configuration' && ctx.body) {
      delete ctx.body.authorization_response_iss_parameter_supported;
    }
    const location = ctx.response.get('location');
    if (location && location.includes('iss=')) {
      const url = new URL(location);
      url.searchParams.delete('iss');
      ctx.set('location', url.toString());
    }
  });
}
// Test hook: every client assertion the token and revocation endpoints saw (header and
// claims, decoded after oidc-provider has verified it), and how each request
// authenticated, so that tests can check `jti` uniqueness, `aud` and `typ`.
const clientAuth = { assertions: [], methods: {}, authorize_params: [], dpop: [] };
// Test hook: POST /test/dpop/challenge-next makes the next token request that carries a
// proof answer `use_dpop_nonce` with the provider's latest nonce, as when a nonce has
// expired between two requests; the client's retry is checked by oidc-provider itself.
const dpopHook = { challengeNext: false, lastNonce: null, challenged: 0 };
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token' && ctx.get('dpop') && dpopHook.challengeNext && dpopHook.lastNonce) {
    dpopHook.challengeNext = false;
    dpopHook.challenged += 1;
    ctx.status = 400;
    ctx.set('dpop-nonce', dpopHook.lastNonce);
    ctx.set('cache-control', 'no-store');
    ctx.body = { error: 'use_dpop_nonce', error_description: 'test hook: a fresh nonce is required' };
    return;
  }
  await next();
  const nonce = ctx.response.get('dpop-nonce');
  if (nonce) dpopHook.lastNonce = nonce;
  // Every token or UserInfo request with a proof: where, the answer, the proof's claims.
  const proof = ctx.get('dpop');
  if (proof && ['/token', '/me'].includes(ctx.path)) {
    const claims = JSON.parse(Buffer.from(proof.split('.')[1], 'base64url').toString());
    clientAuth.dpop.push({ path: ctx.path, status: ctx.status, scheme: ctx.get('authorization').split(' ')[0], claims });
  }
});
provider.use(async (ctx, next) => {
  // The parameter names each authorization request carried in its URL (with PAR:
  // client_id and request_uri only).
  if (ctx.method === 'GET' && ctx.path === '/auth') clientAuth.authorize_params.push(Object.keys(ctx.query).sort());
  await next();
  if (ctx.method !== 'POST' || !['/token', '/token/revocation', '/request'].includes(ctx.path)) return;
  // The form as posted (the PAR endpoint's params hold the pushed request, not the credentials).
  const form = ctx.oidc?.body ?? ctx.oidc?.params ?? {};
  const assertion = form.client_assertion;
  const method = assertion ? 'private_key_jwt'
    : ctx.get('authorization').toLowerCase().startsWith('basic ') ? 'client_secret_basic'
      : form.client_secret ? 'client_secret_post' : 'none';
  const key = `${ctx.path} ${method} ${ctx.status}`;
  clientAuth.methods[key] = (clientAuth.methods[key] ?? 0) + 1;
  if (assertion) {
    const part = (i) => JSON.parse(Buffer.from(assertion.split('.')[i], 'base64url').toString());
    clientAuth.assertions.push({ path: ctx.path, status: ctx.status, header: part(0), claims: part(1) });
  }
});
provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params.grant_type;
  grants[gt] = (grants[gt] ?? 0) + 1;
});
for (const e of ['server_error', 'backchannel.error', 'grant.error']) {
  provider.on(e, (ctx, err) => console.error(`[op] ${e}: ${err?.message ?? ''} ${err?.error_detail ?? ''}`));
}

// Track session ids (the Session adapter instance is cached per model) for /test/logout.
const sessionIds = new Set();
const sessionAdapter = provider.Session.adapter;
const upsert = sessionAdapter.upsert.bind(sessionAdapter);
sessionAdapter.upsert = (id, payload, expiresIn) => { sessionIds.add(id); return upsert(id, payload, expiresIn); };

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function loginPage(res, uid, message, status = 200) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!DOCTYPE html><html><head><title>Sign in</title></head><body>
${message ? `<p id="error">${esc(message)}</p>` : ''}<form method="post" action="/interaction/${esc(uid)}/login">
<input type="text" name="username" autofocus><input type="password" name="password">
<button type="submit">Sign in</button></form></body></html>`);
}
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function login(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction uid mismatch');
  const form = await readForm(req);
  const username = form.get('username') ?? '';
  const user = Object.hasOwn(USERS, username) ? USERS[username] : undefined;
  if (!user || user.password !== form.get('password')) {
    return loginPage(res, uid, 'Invalid username or password', 401);
  }
  // Auto-consent: grant everything that was requested (scopes / claims) to this client.
  const { params } = details;
  const grant = (details.grantId && await provider.Grant.find(details.grantId))
    || new provider.Grant({ accountId: username, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  if (params.claims) {
    const claims = typeof params.claims === 'string' ? JSON.parse(params.claims) : params.claims;
    for (const part of ['id_token', 'userinfo']) if (claims[part]) grant.addOIDCClaims(Object.keys(claims[part]));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, {
    login: { accountId: username, remember: true },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

// Test-only: end all provider sessions of an account, back-channel-logout its clients.
async function logoutAccount(accountId) {
  const result = { sessions: 0, backchannel: [] };
  for (const id of [...sessionIds]) {
    const session = await provider.Session.find(id);
    if (!session) { sessionIds.delete(id); continue; }
    if (session.accountId !== accountId) continue;
    for (const [clientId, { grantId }] of Object.entries(session.authorizations ?? {})) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        const sid = session.sidFor(clientId);
        try {
          await client.backchannelLogout(accountId, sid);
          counts['backchannel.success'] += 1;
          result.backchannel.push({ client_id: clientId, sid, ok: true });
        } catch (err) {
          counts['backchannel.error'] += 1;
          console.error(`[op] backchannel.error: ${err.message}`);
          result.backchannel.push({ client_id: clientId, sid, ok: false, error: err.message });
        }
      }
      if (grantId) {
        for (const M of [provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]) await M.revokeByGrantId(grantId);
        await provider.Grant.adapter.destroy(grantId);
      }
    }
    await session.destroy();
    sessionIds.delete(id);
    result.sessions += 1;
  }
  return result;
}

// A resource server for token relay (`/api/...`): it accepts this provider's access
// tokens and, for a DPoP-bound one, only the DPoP scheme with a proof that `jose`
// verifies: typ dpop+jwt, signed by the key in its header, the token's `jkt`, htm, htu
// (the gateway's public URL, from X-Forwarded-Proto/Host, and the path), ath, a recent
// iat (API_IAT_LEEWAY seconds, 60 by default), a jti never seen before, and on
// `/api/nonce/...` this server's own nonce (RFC 9449 §9: 401 use_dpop_nonce first).
// A bound token sent as Bearer is refused (RFC 9449 §7.2).
const api = { calls: [], nonce: randomBytes(16).toString('base64url'), jtis: new Set() };
const API_IAT_LEEWAY = int('API_IAT_LEEWAY', 60);
async function resource(req, res, pathname) {
  const call = { path: pathname, method: req.method };
  api.calls.push(call);
  const refuse = (error, description) => {
    call.status = 401;
    call.error = description;
    res.writeHead(401, {
      'content-type': 'application/json',
      'www-authenticate': `DPoP error="${error}", algs="ES256", Bearer error="${error}"`,
      ...(error === 'use_dpop_nonce' ? { 'dpop-nonce': api.nonce } : {}),
    });
    res.end(JSON.stringify({ error, error_description: description }));
  };
  const [scheme, token, ...rest] = (req.headers.authorization ?? '').split(' ');
  call.scheme = scheme;
  if (!token || rest.length) return refuse('invalid_token', 'no access token');
  const at = await provider.AccessToken.find(token);
  if (!at) return refuse('invalid_token', 'unknown access token');
  if (at.jkt && scheme.toLowerCase() !== 'dpop') return refuse('invalid_token', 'a DPoP-bound token was sent as Bearer');
  if (scheme.toLowerCase() === 'dpop') {
    const proof = req.headers.dpop;
    if (!proof) return refuse('invalid_dpop_proof', 'no DPoP proof');
    let verified;
    try {
      verified = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256', 'EdDSA', 'PS256'] });
    } catch (err) {
      return refuse('invalid_dpop_proof', `the proof does not verify: ${err.message}`);
    }
    const { payload, protectedHeader } = verified;
    const htu = `${req.headers['x-forwarded-proto'] ?? 'http'}://${req.headers['x-forwarded-host']}${pathname}`;
    const ath = createHash('sha256').update(token).digest('base64url');
    const thumbprint = await calculateJwkThumbprint(protectedHeader.jwk);
    call.checks = {
      jkt: thumbprint === at.jkt,
      htm: payload.htm === req.method,
      htu: payload.htu === htu,
      ath: payload.ath === ath,
      iat: Math.abs(Math.floor(Date.now() / 1000) - payload.iat) <= API_IAT_LEEWAY,
      jti: typeof payload.jti === 'string' && !api.jtis.has(payload.jti),
    };
    if (typeof payload.jti === 'string') api.jtis.add(payload.jti);
    const failed = Object.entries(call.checks).filter(([, ok]) => !ok).map(([name]) => name);
    if (failed.length) return refuse('invalid_dpop_proof', `failed: ${failed.join(', ')} (htu ${payload.htu}, expected ${htu})`);
    if (pathname.startsWith('/api/nonce/') && payload.nonce !== api.nonce) return refuse('use_dpop_nonce', 'this server wants its nonce');
  }
  call.status = 200;
  res.writeHead(200, { 'content-type': 'application/json', 'dpop-nonce': api.nonce });
  res.end(JSON.stringify({ sub: at.accountId, bound: Boolean(at.jkt), path: pathname }));
}

const oidc = provider.callback();
server.on('request', async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  let m;
  try {
    if (req.method === 'GET' && pathname === '/test/events') return json(res, 200, { counts, grants, token_requests: tokenRequests, client_auth: clientAuth, api: api.calls, dpop_hook: { challenged: dpopHook.challenged } });
    if (req.method === 'POST' && pathname === '/test/dpop/challenge-next') {
      dpopHook.challengeNext = true;
      return json(res, 200, { armed: true });
    }
    if (pathname.startsWith('/api/')) return await resource(req, res, pathname);
    // Test hook: replace a user's groups (a JSON array body), as an admin would.
    if (req.method === 'POST' && (m = pathname.match(/^\/test\/groups\/([^/]+)$/))) {
      const u = USERS[decodeURIComponent(m[1])];
      if (!u) return json(res, 404, { error: 'no_such_user' });
      let body = '';
      for await (const chunk of req) body += chunk;
      u.groups = JSON.parse(body);
      return json(res, 200, { groups: u.groups });
    }
    // Test hook: change a user's profile (a JSON object: email, email_verified, name).
    if (req.method === 'POST' && (m = pathname.match(/^\/test\/profile\/([^/]+)$/))) {
      const u = USERS[decodeURIComponent(m[1])];
      if (!u) return json(res, 404, { error: 'no_such_user' });
      let body = '';
      for await (const chunk of req) body += chunk;
      const change = JSON.parse(body);
      for (const key of ['email', 'email_verified', 'name']) {
        if (key in change) u[key] = change[key];
      }
      return json(res, 200, { email: u.email, email_verified: u.email_verified, name: u.name });
    }
    if (req.method === 'POST' && (m = pathname.match(/^\/test\/logout\/([^/]+)$/))) {
      return json(res, 200, await logoutAccount(decodeURIComponent(m[1])));
    }
    if (req.method === 'GET' && (m = pathname.match(/^\/interaction\/([^/]+)$/))) {
      const { uid } = await provider.interactionDetails(req, res);
      return loginPage(res, uid);
    }
    if (req.method === 'POST' && (m = pathname.match(/^\/interaction\/([^/]+)\/login$/))) return await login(req, res, m[1]);
  } catch (err) {
    console.error(`[op] ${req.method} ${pathname}: ${err.error_description ?? err.message}`);
    return json(res, 400, { error: err.error ?? 'invalid_request', error_description: err.error_description ?? err.message });
  }
  return oidc(req, res);
});

const shutdown = () => { server.close(); process.exit(0); };
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.resume();

console.log(`READY ${issuer}`);
