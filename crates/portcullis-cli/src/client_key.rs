//! `portcullis keys client-new`: a new private key for `private_key_jwt` client
//! authentication (and, with `--self-signed`, a certificate for providers that register
//! certificates, such as Entra ID), written to files the gateway reads with
//! `provider.client_key_file` and `provider.client_cert_file`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use portcullis::provider::client_key::{ClientKey, KeyKind, generate_pem, pem_block, to_pem};

/// `--type`: the kind of key.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyType {
    /// EC P-256, signs ES256 (the default: small and accepted everywhere).
    Ec,
    /// Ed25519, signs EdDSA.
    Ed25519,
    /// RSA 2048, signs RS256 (PS256 under the FAPI 2.0 profile).
    Rsa,
}

impl KeyType {
    fn kind(self) -> KeyKind {
        match self {
            Self::Ec => KeyKind::EcP256,
            Self::Ed25519 => KeyKind::Ed25519,
            Self::Rsa => KeyKind::Rsa,
        }
    }
}

/// What `client-new` was asked to make.
pub struct ClientNew<'a> {
    pub key_type: KeyType,
    pub key_out: &'a Path,
    /// `Some((file, subject, days))` with `--self-signed`.
    pub self_signed: Option<(&'a Path, &'a str, u32)>,
}

pub fn client_new(args: &ClientNew<'_>) -> ExitCode {
    match make(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis keys client-new: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(args: &ClientNew<'_>) -> Result<(), String> {
    let key_pem = generate_pem(args.key_type.kind()).map_err(|e| e.to_string())?;
    let cert_pem = match args.self_signed {
        Some((_, subject, days)) => Some(self_signed(&key_pem, subject, days)?),
        None => None,
    };
    // Checked as the gateway will read them, and both files claimed, before anything
    // is written: a failed run leaves nothing behind.
    let key = ClientKey::from_pem(key_pem.as_bytes(), cert_pem.as_deref().map(str::as_bytes))
        .map_err(|e| e.to_string())?;
    let mut key_file = create_new(args.key_out, true)?;
    let cert_file = match args.self_signed {
        Some((cert_out, _, _)) => match create_new(cert_out, false) {
            Ok(f) => Some((cert_out, f)),
            Err(e) => {
                drop(key_file);
                let _ = std::fs::remove_file(args.key_out);
                return Err(e);
            }
        },
        None => None,
    };
    write_all(&mut key_file, args.key_out, &key_pem)?;
    let mut config = format!(
        "[provider]\ntoken_endpoint_auth_method = \"private_key_jwt\"\nclient_key_file = {}\n",
        toml_string(args.key_out)
    );
    if let (Some((cert_out, mut file)), Some(cert_pem)) = (cert_file, &cert_pem) {
        write_all(&mut file, cert_out, cert_pem)?;
        config.push_str(&format!("client_cert_file = {}\n", toml_string(cert_out)));
        println!(
            "wrote {} (private, mode 0600) and {} (upload it to the provider)",
            args.key_out.display(),
            cert_out.display()
        );
    } else {
        println!("wrote {} (private, mode 0600)", args.key_out.display());
    }
    println!("key id (RFC 7638 thumbprint): {}", key.kid());
    println!();
    println!(
        "Register this public key set with the provider (or the URL the gateway serves it at: public_url + prefix + /client-jwks.json):"
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&key.public_jwks(false)).unwrap_or_default()
    );
    println!();
    println!("Then configure the gateway:");
    print!("{config}");
    Ok(())
}

/// A self-signed certificate for the key, made by rcgen on aws-lc-rs.
fn self_signed(key_pem: &str, subject: &str, days: u32) -> Result<String, String> {
    let der =
        pem_block(key_pem.as_bytes(), "PRIVATE KEY").ok_or("the new key could not be read back")?;
    let pair = rcgen::KeyPair::try_from(der.as_slice())
        .map_err(|e| format!("the new key cannot sign a certificate: {e}"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("certificate parameters: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    #[allow(clippy::disallowed_methods)] // a certificate's dates are calendar dates
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let date = |days: i64| {
        let (y, m, d) = civil_from_days(days);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + i64::from(days));
    let cert = params
        .self_signed(&pair)
        .map_err(|e| format!("the certificate could not be made: {e}"))?;
    Ok(to_pem("CERTIFICATE", cert.der()))
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

/// A path as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// Creates a file that must not exist yet (a key is never overwritten).
fn create_new(path: &Path, private: bool) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let _ = private;
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists; a key is never overwritten (choose another --out, or move it away)",
                path.display()
            )
        } else {
            format!("cannot write {}: {e}", path.display())
        }
    })
}

fn write_all(file: &mut std::fs::File, path: &Path, text: &str) -> Result<(), String> {
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn days_become_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }
}
