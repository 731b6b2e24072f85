//! Bearer tokens: HS256 JWTs with `sub`, `exp` and `roles`.
//!
//! Only HS256 is accepted (the algorithm list is fixed, so `none` and every
//! other algorithm fail), `exp` is required with a small configured leeway,
//! `iss` and `aud` are required and checked when configured, and the subject
//! must be a valid customer id. Several keys may verify (rotation: the
//! current one signs, previous ones still verify until removed). Tokens are
//! never logged, nor the reason a token was refused (which could echo it).
//!
//! A handler gets its [`Caller`] from the request through `crate::edge`,
//! which verifies the token here and charges the caller's rate limit.

use checkline_shared::domain::CustomerId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The claims checkline reads and writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub roles: Vec<String>,
}

/// Verifies tokens.
#[derive(Clone)]
pub struct Verifier {
    /// The current key first, then the previous ones still accepted.
    keys: Vec<DecodingKey>,
    validation: Validation,
}

/// Longest bearer token looked at; anything longer is refused unparsed.
pub const TOKEN_MAX_BYTES: usize = 4096;

impl Verifier {
    pub fn new(secret: &[u8], leeway_secs: u64) -> Self {
        Self::with_options(secret, &[], leeway_secs, None, None)
    }

    /// `previous`: keys that still verify (rotation). `issuer` and
    /// `audience`: when given, the claim is required and must match.
    pub fn with_options(
        secret: &[u8],
        previous: &[Vec<u8>],
        leeway_secs: u64,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let keys = std::iter::once(secret)
            .chain(previous.iter().map(Vec::as_slice))
            .map(DecodingKey::from_secret)
            .collect();
        Self { keys, validation }
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        const INVALID: ApiError = ApiError::Unauthorized("the bearer token is invalid or expired");
        if token.len() > TOKEN_MAX_BYTES {
            return Err(INVALID);
        }
        let mut data = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(decoded) => {
                    data = Some(decoded);
                    break;
                }
                // Only a signature mismatch may be another key's token; any
                // other failure (expired, malformed, wrong algorithm) is final.
                Err(err)
                    if matches!(
                        err.kind(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature
                    ) => {}
                Err(_) => return Err(INVALID),
            }
        }
        let claims = data.ok_or(INVALID)?.claims;
        let subject = CustomerId::parse(&claims.sub).ok_or(ApiError::Unauthorized(
            "the token's sub is not a valid customer id",
        ))?;
        Ok(Caller {
            subject,
            customer: claims.roles.iter().any(|r| r == "customer"),
            admin: claims.roles.iter().any(|r| r == "admin"),
        })
    }
}

/// Mints a token (for local use and tests).
pub fn mint(
    secret: &[u8],
    sub: &str,
    roles: &[&str],
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_with(secret, sub, roles, ttl_secs, None, None)
}

/// Mints a token with optional `iss` and `aud` claims.
pub fn mint_with(
    secret: &[u8],
    sub: &str,
    roles: &[&str],
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(Serialize)]
    struct Minted<'a> {
        sub: &'a str,
        exp: u64,
        roles: &'a [&'a str],
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    let claims = Minted {
        sub,
        exp: jsonwebtoken::get_current_timestamp() + ttl_secs,
        roles,
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: CustomerId,
    pub customer: bool,
    pub admin: bool,
}

impl Caller {
    pub fn require_customer(&self) -> Result<&CustomerId, ApiError> {
        if self.customer {
            Ok(&self.subject)
        } else {
            Err(ApiError::Forbidden("this call needs the customer role"))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this call needs the admin role"))
        }
    }

    /// Reading orders by id takes either role; a token with neither is
    /// refused before any order is looked up.
    pub fn require_order_reader(&self) -> Result<(), ApiError> {
        if self.customer || self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this call needs the customer or admin role",
            ))
        }
    }

    /// Whether the caller may read an order placed by `customer_id`.
    pub fn may_read_order_of(&self, customer_id: &str) -> bool {
        self.admin || (self.customer && self.subject.as_str() == customer_id)
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(data: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    }

    #[test]
    fn accepts_a_valid_token() {
        let token = mint(SECRET, "alice", &["customer"], 60).unwrap();
        let caller = Verifier::new(SECRET, 5).verify(&token).unwrap();
        assert!(caller.customer && !caller.admin);
        assert_eq!(caller.subject.as_str(), "alice");
    }

    #[test]
    fn refuses_alg_none_other_keys_and_expired() {
        let v = Verifier::new(SECRET, 5);
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let payload = b64(&format!(
            r#"{{"sub":"alice","exp":{exp},"roles":["admin"]}}"#
        ));
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), payload);
        assert!(v.verify(&none).is_err());
        let other = mint(
            b"another-key-another-key-another-k",
            "alice",
            &["admin"],
            60,
        )
        .unwrap();
        assert!(v.verify(&other).is_err());
        let claims = Claims {
            sub: "alice".into(),
            exp: jsonwebtoken::get_current_timestamp() - 30,
            roles: vec![],
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(v.verify(&expired).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "alice".into(),
                exp,
                roles: vec![],
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(v.verify(&hs512).is_err());
    }

    #[test]
    fn leeway_is_a_few_seconds_at_most() {
        let v = Verifier::new(SECRET, 5);
        let token = |exp: u64| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &Claims {
                    sub: "alice".into(),
                    exp,
                    roles: vec!["customer".into()],
                },
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        let now = jsonwebtoken::get_current_timestamp();
        // Within the leeway: still accepted. Beyond it: refused.
        assert!(v.verify(&token(now - 2)).is_ok());
        assert!(v.verify(&token(now - 8)).is_err());
    }

    #[test]
    fn rotated_keys_verify_until_removed() {
        let old = b"previous-key-previous-key-previous".to_vec();
        let rotated = Verifier::with_options(SECRET, std::slice::from_ref(&old), 5, None, None);
        let by_old = mint(&old, "alice", &["customer"], 60).unwrap();
        let by_new = mint(SECRET, "alice", &["customer"], 60).unwrap();
        assert!(rotated.verify(&by_old).is_ok());
        assert!(rotated.verify(&by_new).is_ok());
        // Once the old key is dropped from the list, its tokens fail.
        assert!(Verifier::new(SECRET, 5).verify(&by_old).is_err());
        // An expired token signed by an old key is still refused.
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: jsonwebtoken::get_current_timestamp() - 60,
                roles: vec![],
            },
            &EncodingKey::from_secret(&old),
        )
        .unwrap();
        assert!(rotated.verify(&expired).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let strict = Verifier::with_options(SECRET, &[], 5, Some("checkline"), Some("storefront"));
        let good = mint_with(
            SECRET,
            "alice",
            &["customer"],
            60,
            Some("checkline"),
            Some("storefront"),
        )
        .unwrap();
        assert!(strict.verify(&good).is_ok());
        for (iss, aud) in [
            (None, Some("storefront")),
            (Some("checkline"), None),
            (Some("other"), Some("storefront")),
            (Some("checkline"), Some("other")),
        ] {
            let token = mint_with(SECRET, "alice", &["customer"], 60, iss, aud).unwrap();
            assert!(strict.verify(&token).is_err(), "iss {iss:?} aud {aud:?}");
        }
        // Not configured: the claims are optional and not checked.
        let lax = Verifier::new(SECRET, 5);
        let token = mint_with(SECRET, "alice", &["customer"], 60, Some("x"), Some("y")).unwrap();
        assert!(lax.verify(&token).is_ok());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(&[0x42, 0xff, 0x20, 0x41]), None);
        assert!(Verifier::new(SECRET, 5)
            .verify(&"a".repeat(TOKEN_MAX_BYTES + 1))
            .is_err());
    }

    #[test]
    fn refuses_missing_exp_and_bad_subjects() {
        let v = Verifier::new(SECRET, 5);
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
            roles: Vec<&'a str>,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                sub: "alice",
                roles: vec!["customer"],
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(v.verify(&token).is_err());
        let bad_sub = mint(SECRET, "not valid!", &["customer"], 60).unwrap();
        assert!(v.verify(&bad_sub).is_err());
    }
}
