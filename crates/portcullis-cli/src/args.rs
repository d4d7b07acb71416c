//! The command line: every subcommand and option, parsed by clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Sign-in gateway for web apps: OpenID Connect with PKCE, tokens kept on the server,
/// an opaque session cookie in the browser, a verified user handed to your app.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway, two dev providers and a sample app together: sign in at
    /// Example Corp as alice/alice or bob/bob, or at Partner as carol/carol, with no
    /// account anywhere.
    Demo {
        /// Base port: gateway on N, Example Corp's provider on N+1, sample app on N+2,
        /// Partner's provider on N+3.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Keep the demo's data in this folder (default: a temporary folder).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Run the development OpenID provider (users and clients from a TOML file).
    Idp {
        /// The provider's TOML configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Allow listening on a non-loopback address.
        #[arg(long)]
        allow_remote: bool,
        /// Retire the current signing keys and make new ones, then exit. Retired keys stay
        /// in the JWKS until every token they signed has expired.
        #[arg(long)]
        rotate_keys: bool,
    },
    /// See and end sessions in the configured store (the same settings as `serve`).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Work on the store as a whole.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The keys that sign the identity assertion (X-Portcullis-Jwt-Assertion), and the
    /// client's own key for private_key_jwt.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate the configuration, print every problem, exit non-zero if there is one.
    CheckConfig {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the configuration against the live provider, store and upstream: one line
    /// per finding with its fix, then the URIs to register. Exit 0 (all well), 1
    /// (warnings) or 2 (errors).
    Doctor {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCommand {
    /// List live sessions: handle, user id, email, created, last seen, expires, user agent.
    List {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Only this user's sessions.
        #[arg(long, value_name = "USER_ID")]
        user: Option<uuid::Uuid>,
    },
    /// End sessions now, for every running instance; their refresh tokens are revoked at
    /// the provider (except with --all).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["handle", "user", "all"])))]
    Revoke {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// The session's handle, as `sessions list` shows it.
        handle: Option<String>,
        /// Every session of this user.
        #[arg(long, value_name = "USER_ID")]
        user: Option<uuid::Uuid>,
        /// Every session.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Add a new signing key to the configured store. Every running instance publishes
    /// it at {prefix}/jwks.json within 10 s and signs with it 2 minutes from now; the old key
    /// stays published until the assertions it signed have expired.
    Rotate {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the signing keys in the store that no key of the configured key ring
    /// (PORTCULLIS_SECRET) opens — left by a secret that was replaced — and, with --yes,
    /// remove them. Keys the ring opens are never touched.
    Prune {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Remove them (without it: only list them).
        #[arg(long)]
        yes: bool,
    },
    /// Make a private key for `private_key_jwt` client authentication (and, with
    /// --self-signed, a certificate for it), print its public JWK set and the settings.
    /// Never overwrites a file.
    ClientNew {
        /// The kind of key.
        #[arg(long = "type", value_enum, default_value = "ec")]
        key_type: crate::client_key::KeyType,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE", default_value = "client-key.pem")]
        out: PathBuf,
        /// Also make a self-signed certificate (for providers that register
        /// certificates, such as Entra ID).
        #[arg(long)]
        self_signed: bool,
        /// Where to write the certificate (with --self-signed).
        #[arg(long, value_name = "FILE", default_value = "client-cert.pem")]
        cert_out: PathBuf,
        /// The certificate's subject common name (with --self-signed).
        #[arg(long, value_name = "NAME", default_value = "portcullis client")]
        subject: String,
        /// Days the certificate is valid (with --self-signed), 1 to 3650.
        #[arg(long, value_name = "DAYS", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy users (with their ids) and live sessions to another store, e.g. from SQLite
    /// to PostgreSQL: no X-User-Id changes and nobody is signed out. The gateways on
    /// the new store need the same PORTCULLIS_SECRET. Safe to run again.
    Copy {
        /// The store to read: sqlite:PATH, postgres://… or redis://…
        #[arg(long, value_name = "URL")]
        from: String,
        /// The store to write (created and migrated if needed).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Table or key prefix on PostgreSQL and Redis, on both sides.
        #[arg(
            long,
            value_name = "PREFIX",
            env = "PORTCULLIS_STORE_PREFIX",
            default_value = "portcullis"
        )]
        prefix: String,
    },
}
