// Verifies a Portcullis identity assertion with an independent JWT library (npm
// `jose`), as an app would: signature by the gateway's published keys, ES256 only,
// `iss`, `aud`, `exp`. Test use.
//
//   node verify-assertion.mjs JWKS_URL ISSUER AUDIENCE NOW_SECONDS TOKEN
//
// Prints {"header": …, "payload": …} and exits 0, or prints the error and exits 1.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, audience, now, token] = process.argv.slice(2);
try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['ES256'],
    // The gateway under test may run on a hand-set clock.
    currentDate: new Date(Number(now) * 1000),
    maxTokenAge: '5m',
    requiredClaims: ['sub', 'iat', 'exp'],
  });
  console.log(JSON.stringify({ header: protectedHeader, payload }));
} catch (err) {
  console.log(`${err.code ?? 'error'}: ${err.message}`);
  process.exit(1);
}
