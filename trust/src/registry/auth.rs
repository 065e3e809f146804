//! Registry authentication, the way the distribution spec describes it: send the request, and on `401`
//! read the `WWW-Authenticate` challenge. `Bearer realm=…,service=…,scope=…` means: get a token from the
//! realm (anonymously, with the host's user and password, or with its identity token) and retry with it;
//! `Basic` means: retry with the user and password. Answers are cached per host and scope, until the
//! token's `expires_in` runs out or the registry answers `401` again.
//!
//! Every registry request Pollen makes goes through [`Authenticator::send`]: manifests, signatures, the
//! chunk index, whole blobs and the edge node's range GETs; pushes hand the same answer to oci-client.
//! So there is one token logic. It is Pollen's own, not oci-client's, because oci-client's sends the
//! host's password to whatever realm the challenge names, plain HTTP included, and never renews a token
//! the registry stopped accepting.
//!
//! Credentials only ever travel over HTTPS, or to a host the operator listed as insecure. Redirects
//! (to object storage or a CDN) are followed by reqwest, which drops the `Authorization` header when the
//! scheme, host or port changes.
//!
//! Non-goals: the OAuth2 password grant, registry-specific token APIs (ECR's `GetAuthorizationToken`
//! is what its credential helper is for).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::RegistryError;
use super::credentials::{Credential, DockerConfig};

/// A token without `expires_in` lives this long (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this much before they expire (or a fifth of their life, for short-lived ones).
const RENEW_MARGIN: Duration = Duration::from_secs(10);
/// The largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;
/// The most of an error body quoted in a message.
const QUOTE_LEN: usize = 300;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service the token is for.
        service: Option<String>,
        /// The scope the registry asks for.
        scope: Option<String>,
    },
    /// `Basic realm="…"`.
    Basic,
}

/// Parses a `WWW-Authenticate` header value (RFC 7235 `auth-scheme` and `auth-param`s, quoted or not).
/// `None` for schemes Pollen cannot answer, or a Bearer challenge without a realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&header[..i], &header[i..]),
        None => (header, ""),
    };
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `key=value` or `key="quoted, value"` pairs separated by commas.
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_ascii_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.next_if_eq(&'=').is_none() {
            // A token68 or a bare word: not a parameter Pollen needs.
            continue;
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_ascii_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if out.len() >= 32 {
            return None;
        }
        out.push((key, value));
    }
}

/// What an endpoint answered for a token.
#[derive(Debug, PartialEq)]
pub struct TokenAnswer {
    /// The token.
    pub token: String,
    /// How long it is valid.
    pub lifetime: Duration,
}

/// Parses a token endpoint's JSON (`token` or `access_token`, optional `expires_in`).
pub fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("not a token answer: {e}"))?;
    let token = a
        .token
        .filter(|t| !t.is_empty())
        .or(a.access_token.filter(|t| !t.is_empty()))
        .ok_or("the answer holds no token")?;
    let lifetime = a
        .expires_in
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(86_400)))
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok(TokenAnswer { token, lifetime })
}

/// A cached `Authorization` answer.
#[derive(Clone)]
struct Cached {
    header: HeaderValue,
    /// The same answer as oci-client takes it, for pushes.
    presented: Presented,
    renew_at: Option<Instant>,
}

/// What an operation may present to oci-client (whose requests Pollen does not send itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    /// Nothing was asked for.
    Anonymous,
    /// A bearer token for the scope.
    Bearer(String),
    /// The host's user and password.
    Basic(String, String),
}

/// Answers registry challenges, with one cache per process (shared by every request of a [`super::Registry`]).
pub struct Authenticator {
    creds: DockerConfig,
    insecure_hosts: Vec<String>,
    cache: Mutex<HashMap<(String, String), Cached>>,
}

/// The message of an error and its sources, for errors whose top line says little ("error sending request").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// Quotes the start of an error body.
pub fn quote(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(QUOTE_LEN)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Authenticator {
    /// Answers with `creds`; plain HTTP is allowed for `insecure_hosts` only.
    pub fn new(creds: DockerConfig, insecure_hosts: Vec<String>) -> Self {
        Authenticator {
            creds,
            insecure_hosts,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `host` (`host` or `host:port`) is listed as reachable over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.insecure_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
    }

    /// The hosts reached over plain HTTP.
    pub fn insecure_hosts(&self) -> &[String] {
        &self.insecure_hosts
    }

    /// `http` for a listed host, else `https`.
    pub fn scheme(&self, host: &str) -> &'static str {
        if self.is_insecure(host) { "http" } else { "https" }
    }

    fn cached(&self, host: &str, scope: &str) -> Option<Cached> {
        let mut cache = self.cache.lock().expect("auth cache");
        let key = (host.to_string(), scope.to_string());
        match cache.get(&key) {
            Some(c) if c.renew_at.is_none_or(|t| Instant::now() < t) => Some(c.clone()),
            Some(_) => {
                cache.remove(&key);
                None
            }
            None => None,
        }
    }

    /// What the last successful request for `host` and `scope` presented.
    pub fn presented(&self, host: &str, scope: &str) -> Presented {
        self.cached(host, scope)
            .map_or(Presented::Anonymous, |c| c.presented)
    }

    /// Sends the request `build` makes for `host` under `scope`, with the cached answer if there is one.
    /// A `401` gets one fresh answer to its challenge and one retry; a second `401` is
    /// [`RegistryError::Unauthorized`]. Every other status is returned to the caller.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        host: &str,
        scope: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut answered = false;
        // The answer just fetched is used for the retry as it is, whatever its lifetime.
        let mut fresh: Option<HeaderValue> = None;
        loop {
            let mut req = build();
            if let Some(h) = fresh
                .take()
                .or_else(|| self.cached(host, scope).map(|c| c.header))
            {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| RegistryError::Http {
                host: host.to_string(),
                reason: error_chain(&e),
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            self.cache
                .lock()
                .expect("auth cache")
                .remove(&(host.to_string(), scope.to_string()));
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            let body = resp.bytes().await.unwrap_or_default();
            if answered {
                return Err(RegistryError::Unauthorized {
                    host: host.to_string(),
                    reason: format!(
                        "the registry refused the {} credentials ({}): {}",
                        if self.creds.has_entry(host) {
                            "configured"
                        } else {
                            "anonymous"
                        },
                        self.creds.describe(),
                        quote(&body)
                    ),
                });
            }
            let Some(challenge) = challenge.as_deref().and_then(parse_challenge) else {
                return Err(RegistryError::Unauthorized {
                    host: host.to_string(),
                    reason: format!(
                        "401 with no challenge Pollen can answer ({:?}): {}",
                        challenge.unwrap_or_default(),
                        quote(&body)
                    ),
                });
            };
            let answer = self.answer(http, host, scope, &challenge).await?;
            fresh = Some(answer.header.clone());
            self.cache
                .lock()
                .expect("auth cache")
                .insert((host.to_string(), scope.to_string()), answer);
            // A refused cached answer gets one fresh try; a refused fresh answer is final.
            answered = true;
        }
    }

    async fn answer(
        &self,
        http: &reqwest::Client,
        host: &str,
        scope: &str,
        challenge: &Challenge,
    ) -> Result<Cached, RegistryError> {
        let cred = self.creds.lookup(host).await?;
        match challenge {
            Challenge::Basic => {
                let Some(Credential::Basic { username, password }) = cred else {
                    return Err(RegistryError::Unauthorized {
                        host: host.to_string(),
                        reason: format!(
                            "the registry asks for a user and password and none is configured for {host} ({})",
                            self.creds.describe()
                        ),
                    });
                };
                let raw = format!("{username}:{password}");
                let mut header = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
                .map_err(|_| RegistryError::Unauthorized {
                    host: host.to_string(),
                    reason: "the configured credential is not a valid header".into(),
                })?;
                header.set_sensitive(true);
                Ok(Cached {
                    header,
                    presented: Presented::Basic(username, password),
                    renew_at: None,
                })
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Unauthorized {
                    host: host.to_string(),
                    reason: format!("the token realm {realm:?} is not a URL: {e}"),
                })?;
                let realm_host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => String::new(),
                };
                match url.scheme() {
                    "https" => {}
                    "http" if self.is_insecure(&realm_host) => {}
                    "http" if cred.is_none() => {}
                    _ => {
                        return Err(RegistryError::InsecureCredentials {
                            host: host.to_string(),
                            url: realm.clone(),
                        });
                    }
                }
                let scope = asked.as_deref().unwrap_or(scope);
                let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
                if let Some(s) = service {
                    query.push(("service", s));
                }
                let req = match &cred {
                    Some(Credential::IdentityToken(t)) => {
                        let mut form = vec![
                            ("grant_type", "refresh_token"),
                            ("refresh_token", t.as_str()),
                            ("client_id", "pollen"),
                            ("scope", scope),
                        ];
                        if let Some(s) = service {
                            form.push(("service", s));
                        }
                        // application/x-www-form-urlencoded, encoded by the URL type's query serializer.
                        let mut enc = url.clone();
                        enc.set_query(None);
                        enc.query_pairs_mut().extend_pairs(&form);
                        let body = enc.query().unwrap_or_default().to_string();
                        http.post(url.clone())
                            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(body)
                    }
                    Some(Credential::Basic { username, password }) => http
                        .get(url.clone())
                        .query(&query)
                        .basic_auth(username, Some(password)),
                    None => http.get(url.clone()).query(&query),
                };
                let resp = req.send().await.map_err(|e| RegistryError::Http {
                    host: realm_host.clone(),
                    reason: format!("token endpoint: {}", error_chain(&e)),
                })?;
                let status = resp.status();
                let body = read_capped(resp, MAX_TOKEN_RESPONSE).await.map_err(|reason| {
                    RegistryError::Unauthorized {
                        host: host.to_string(),
                        reason: format!("token endpoint {realm}: {reason}"),
                    }
                })?;
                if !status.is_success() {
                    return Err(RegistryError::Unauthorized {
                        host: host.to_string(),
                        reason: format!(
                            "token endpoint {realm} answered {status} for {} credentials ({}): {}",
                            if cred.is_some() { "the configured" } else { "no" },
                            self.creds.describe(),
                            quote(&body)
                        ),
                    });
                }
                let answer = parse_token_answer(&body).map_err(|reason| RegistryError::Unauthorized {
                    host: host.to_string(),
                    reason: format!("token endpoint {realm}: {reason}"),
                })?;
                let mut header =
                    HeaderValue::from_str(&format!("Bearer {}", answer.token)).map_err(|_| {
                        RegistryError::Unauthorized {
                            host: host.to_string(),
                            reason: format!("token endpoint {realm}: the token is not a valid header"),
                        }
                    })?;
                header.set_sensitive(true);
                Ok(Cached {
                    header,
                    presented: Presented::Bearer(answer.token),
                    renew_at: Some(Instant::now() + answer.lifetime - RENEW_MARGIN.min(answer.lifetime / 5)),
                })
            }
        }
    }
}

/// Reads a response body, refusing more than `max` bytes (checked as it streams, not after).
pub async fn read_capped(mut resp: Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(piece) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + piece.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:fleet/app:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:fleet/app:pull".into()),
            })
        );
        // Unquoted values, spaces after commas, other case, an error parameter.
        assert_eq!(
            parse_challenge(
                r#"bearer realm=https://a/t, service="s", error="insufficient_scope", scope="repository:a:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("s".into()),
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn basic_and_unknown_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Negotiate abc=="#), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn token_answers() {
        assert_eq!(
            parse_token_answer(br#"{"token":"t","expires_in":300}"#).unwrap(),
            TokenAnswer {
                token: "t".into(),
                lifetime: Duration::from_secs(300)
            }
        );
        assert_eq!(
            parse_token_answer(br#"{"access_token":"a"}"#).unwrap().lifetime,
            DEFAULT_TOKEN_LIFETIME
        );
        assert!(parse_token_answer(br#"{"token":""}"#).is_err());
        assert!(parse_token_answer(b"<html>").is_err());
    }

    proptest::proptest! {
        /// Whatever a registry or token endpoint sends, parsing answers and never panics.
        #[test]
        fn challenges_and_token_answers_never_panic(s in ".{0,300}", b in proptest::collection::vec(0u8.., 0..300)) {
            let _ = parse_challenge(&s);
            let _ = parse_challenge(&format!("Bearer {s}"));
            let _ = parse_token_answer(&b);
            let _ = parse_token_answer(s.as_bytes());
        }

        /// Quoted values with escapes and commas come back as they were sent.
        #[test]
        fn quoted_parameters_round_trip(realm in "[ -~]{1,60}", service in "[ -~]{0,40}") {
            let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
            let h = format!(r#"Bearer realm="{}",service="{}""#, q(&realm), q(&service));
            proptest::prop_assert_eq!(
                parse_challenge(&h),
                Some(Challenge::Bearer { realm, service: Some(service), scope: None })
            );
        }
    }

    #[test]
    fn insecure_hosts_are_exact() {
        let a = Authenticator::new(DockerConfig::default(), vec!["127.0.0.1:5000".into()]);
        assert_eq!(a.scheme("127.0.0.1:5000"), "http");
        assert_eq!(a.scheme("127.0.0.1:5001"), "https");
        assert_eq!(a.scheme("127.0.0.1"), "https");
    }
}
