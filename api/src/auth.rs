//! Bearer tokens: HS256 JWTs with `sub`, `exp` and `roles`.
//!
//! Only HS256 is accepted (the algorithm list is fixed, so `none` and every
//! other algorithm fail), `exp` is required with a small configured leeway,
//! and the subject must be a valid customer id. Tokens are never logged.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use checkline_shared::domain::CustomerId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
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
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &[u8], leeway_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| ApiError::Unauthorized("the bearer token is invalid or expired"))?;
        let claims = data.claims;
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
    let exp = jsonwebtoken::get_current_timestamp() + ttl_secs;
    let claims = Claims {
        sub: sub.to_owned(),
        exp,
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
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

    /// Whether the caller may read an order placed by `customer_id`.
    pub fn may_read_order_of(&self, customer_id: &str) -> bool {
        self.admin || (self.customer && self.subject.as_str() == customer_id)
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "an Authorization: Bearer token is required",
            ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "an Authorization: Bearer token is required",
            ))?;
        state.verifier.verify(token)
    }
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
