-- What the gateway learnt and shares between instances, by name: for example the
-- client authentication method a probe found (provider.token_endpoint_auth_method =
-- "auto"). Never expires on its own; names carry what they depend on.
CREATE TABLE {p}_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
