"""Verifies a Portcullis identity assertion with PyJWT, exactly as docs/authorization.md
shows an app doing it (the tests run this file, so the snippet stays right).

    python3 verify_assertion.py JWKS_URL ISSUER AUDIENCE TOKEN

Prints the verified claims as JSON and exits 0, or prints the error and exits 1.
"""

import json
import sys

import jwt  # pip install "pyjwt[crypto]"


def verify(token, jwks_url, issuer, audience):
    """The claims of a valid assertion; raises jwt.PyJWTError otherwise."""
    jwks = jwt.PyJWKClient(jwks_url)  # in an app: create once, it caches the keys
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )


if __name__ == "__main__":
    jwks_url, issuer, audience, token = sys.argv[1:5]
    try:
        print(json.dumps(verify(token, jwks_url, issuer, audience)))
    except jwt.PyJWTError as e:
        print(f"{type(e).__name__}: {e}")
        sys.exit(1)
