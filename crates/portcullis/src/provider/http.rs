//! The provider's HTTP client: rustls, no redirects followed, connect and total
//! timeouts on every call, and a size cap on every response body (R03, R04).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, Method, StatusCode};

use super::ProviderError;

/// Time to establish a connection to the provider.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Total time for one provider call, body included (R04: ≤10 s).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A provider answer: status, content type and a size-capped body. The body may hold
/// tokens, so `Debug` shows only its length.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
    /// The `Date` header, as sent (`portcullis doctor` compares clocks with it).
    pub date: Option<String>,
    /// The `Age` header: seconds the answer spent in a cache since `Date`.
    pub age: Option<u64>,
    /// The `DPoP-Nonce` header (RFC 9449 §8, §9), when it is a well-formed nonce.
    pub dpop_nonce: Option<String>,
    /// Every `WWW-Authenticate` challenge, joined (a resource server's
    /// `use_dpop_nonce`).
    pub www_authenticate: Option<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Answer {
    /// The body as a JSON object.
    pub fn json_object(
        &self,
        what: &'static str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(ProviderError::BadResponse(format!(
                "{what} is not a JSON object"
            ))),
        }
    }
}

/// HTTP client for provider calls.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    client: Client,
    total_timeout: Duration,
    /// The provider's id: the `provider` label of its calls' durations.
    provider: Arc<str>,
}

impl ProviderHttp {
    /// The same client, its calls labelled with provider `id`.
    pub(crate) fn named(mut self, id: &str) -> Self {
        self.provider = Arc::from(id);
        self
    }

    pub fn new() -> Result<Self, ProviderError> {
        Self::with_timeouts(CONNECT_TIMEOUT, TOTAL_TIMEOUT)
    }

    /// A client with other timeouts (tests use short ones).
    pub fn with_timeouts(connect: Duration, total: Duration) -> Result<Self, ProviderError> {
        crate::install_crypto_provider();
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect)
            .timeout(total)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        Ok(Self {
            client,
            total_timeout: total,
            provider: Arc::from(crate::config::DEFAULT_PROVIDER_ID),
        })
    }

    /// GET `url`, optionally with an access token. `endpoint` names the call in
    /// `portcullis_provider_request_duration_seconds`.
    pub async fn get(
        &self,
        endpoint: &'static str,
        url: &str,
        token: Option<TokenAuth<'_>>,
        cap: usize,
    ) -> Result<Answer, ProviderError> {
        let mut req = self
            .client
            .request(Method::GET, url)
            .header(ACCEPT, "application/json");
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("{} {}", token.scheme(), token.token))
                .map_err(|_| {
                ProviderError::BadResponse("access token is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
            if let Some(proof) = token.proof {
                req = req.header(DPOP, proof_header(proof)?);
            }
        }
        self.send(endpoint, req, cap).await
    }

    /// POST a form, with HTTP Basic client authentication when `basic` is set and a
    /// `DPoP` proof header when `dpop_proof` is.
    pub async fn post_form(
        &self,
        endpoint: &'static str,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        dpop_proof: Option<&str>,
        cap: usize,
    ) -> Result<Answer, ProviderError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = self
            .client
            .request(Method::POST, url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.header(AUTHORIZATION, basic_authorization(id, secret)?);
        }
        if let Some(proof) = dpop_proof {
            req = req.header(DPOP, proof_header(proof)?);
        }
        self.send(endpoint, req, cap).await
    }

    /// The total time one call may take.
    pub fn total_timeout(&self) -> Duration {
        self.total_timeout
    }

    async fn send(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
        cap: usize,
    ) -> Result<Answer, ProviderError> {
        let start = tokio::time::Instant::now();
        let call = async {
            let mut resp = req.send().await.map_err(classify)?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let age = resp
                .headers()
                .get(reqwest::header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let dpop_nonce = resp
                .headers()
                .get(DPOP_NONCE)
                .and_then(|v| v.to_str().ok())
                .filter(|n| is_nonce(n))
                .map(str::to_owned);
            // Every challenge, in one list (RFC 9110 §11.6.1 allows several headers).
            let challenges: Vec<&str> = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let www_authenticate = (!challenges.is_empty())
                .then(|| super::discovery::truncate(&challenges.join(", "), 1024));
            if resp.content_length().is_some_and(|n| n > cap as u64) {
                return Err(ProviderError::TooLarge(cap));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > cap {
                    return Err(ProviderError::TooLarge(cap));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                content_type,
                body,
                date,
                age,
                dpop_nonce,
                www_authenticate,
            })
        };
        // reqwest's own timeout covers the call; this guards the body loop as well.
        let result = match tokio::time::timeout(self.total_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Timeout),
        };
        crate::metrics::provider_request(&self.provider, endpoint, start.elapsed());
        result
    }
}

/// The `DPoP` request header (RFC 9449 §4.1).
const DPOP: &str = "dpop";
/// The `DPoP-Nonce` answer header (RFC 9449 §8).
const DPOP_NONCE: &str = "dpop-nonce";
/// The longest `DPoP-Nonce` kept; longer ones are ignored.
const MAX_NONCE: usize = 512;

/// An access token for a call: `Bearer`, or `DPoP` with its proof (RFC 9449 §7.1).
#[derive(Clone, Copy)]
pub struct TokenAuth<'a> {
    pub token: &'a str,
    /// `Some`: the token is DPoP-bound, and this proof goes along.
    pub proof: Option<&'a str>,
}

impl TokenAuth<'_> {
    fn scheme(&self) -> &'static str {
        if self.proof.is_some() {
            "DPoP"
        } else {
            "Bearer"
        }
    }
}

/// RFC 9449 §8.1: `nonce = 1*NQCHAR` (visible ASCII but `"` and `\`).
pub(crate) fn is_nonce(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NONCE
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

fn proof_header(proof: &str) -> Result<HeaderValue, ProviderError> {
    let mut value = HeaderValue::from_str(proof)
        .map_err(|_| ProviderError::DpopProof("the proof is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
fn basic_authorization(id: &str, secret: &str) -> Result<HeaderValue, ProviderError> {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", enc(id), enc(secret));
    let mut value = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    ))
    .map_err(|_| ProviderError::BadResponse("client credentials are not a valid header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn classify(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        // No URL in the message: it may carry a code or token in its query.
        ProviderError::Unreachable(e.without_url().to_string())
    }
}
