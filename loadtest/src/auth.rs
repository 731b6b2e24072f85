//! Bearer tokens minted locally with the API's HS256 secret.

use anyhow::{ensure, Context, Result};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::cli::TokensArgs;

/// Subject of the administrator that creates the sale's product.
pub const ADMIN_SUBJECT: &str = "loadtest-admin";

/// Token lifetime: long enough for any run.
const TOKEN_TTL_SECS: i64 = 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    roles: &'a [&'a str],
}

/// Mints HS256 tokens the API accepts.
pub struct TokenMinter {
    key: EncodingKey,
    header: Header,
}

impl TokenMinter {
    pub fn new(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
        }
    }

    /// A token with the `admin` role for [`ADMIN_SUBJECT`].
    pub fn admin(&self) -> Result<String> {
        self.mint(ADMIN_SUBJECT, &["admin"])
    }

    /// A token with the `customer` role for `subject`.
    pub fn customer(&self, subject: &str) -> Result<String> {
        self.mint(subject, &["customer"])
    }

    fn mint(&self, subject: &str, roles: &[&str]) -> Result<String> {
        ensure!(
            is_valid_subject(subject),
            "token subject {subject:?} is not 1-64 characters of [A-Za-z0-9_.@-]"
        );
        let claims = Claims {
            sub: subject,
            exp: chrono::Utc::now().timestamp() + TOKEN_TTL_SECS,
            roles,
        };
        encode(&self.header, &claims, &self.key)
            .with_context(|| format!("signing a token for {subject:?}"))
    }
}

/// The contract's customer id syntax: 1–64 characters of `[A-Za-z0-9_.@-]`.
pub fn is_valid_subject(subject: &str) -> bool {
    (1..=64).contains(&subject.len())
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Customer id of buyer `index` in run `run_id`.
pub fn buyer_subject(run_id: &str, index: u32) -> String {
    format!("buyer-{run_id}-{index}")
}

/// The tokens `checkline-loadtest tokens` prints, in order: one
/// administrator token with `admin`, else customer tokens for
/// `<prefix>-0` … `<prefix>-<customers - 1>`. Every subject is checked
/// before any token is signed.
pub fn token_list(minter: &TokenMinter, args: &TokensArgs) -> Result<Vec<String>> {
    if args.admin {
        return Ok(vec![minter.admin()?]);
    }
    let last = format!("{}-{}", args.prefix, args.customers.saturating_sub(1));
    ensure!(
        is_valid_subject(&last),
        "--prefix {:?}: customer ids such as {last:?} must be 1-64 characters of \
         [A-Za-z0-9_.@-]",
        args.prefix
    );
    (0..args.customers)
        .map(|index| minter.customer(&format!("{}-{index}", args.prefix)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Decoded {
        sub: String,
        exp: i64,
        roles: Vec<String>,
    }

    fn decode_with(secret: &str, token: &str) -> jsonwebtoken::errors::Result<Decoded> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        decode::<Decoded>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .map(|data| data.claims)
    }

    #[test]
    fn admin_and_customer_tokens_carry_the_contract_claims() {
        let minter = TokenMinter::new("secret");
        let now = chrono::Utc::now().timestamp();

        let admin = decode_with("secret", &minter.admin().unwrap()).unwrap();
        assert_eq!(admin.sub, ADMIN_SUBJECT);
        assert_eq!(admin.roles, ["admin"]);
        assert!((now + TOKEN_TTL_SECS - 5..=now + TOKEN_TTL_SECS + 5).contains(&admin.exp));

        let subject = buyer_subject("ab12cd34", 7);
        let buyer = decode_with("secret", &minter.customer(&subject).unwrap()).unwrap();
        assert_eq!(buyer.sub, "buyer-ab12cd34-7");
        assert_eq!(buyer.roles, ["customer"]);
    }

    #[test]
    fn tokens_are_hs256_and_bound_to_the_secret() {
        let token = TokenMinter::new("secret").customer("alice").unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert!(decode_with("other-secret", &token).is_err());
    }

    fn tokens_args(customers: u32, prefix: &str, admin: bool) -> TokensArgs {
        TokensArgs {
            customers,
            prefix: prefix.to_owned(),
            admin,
        }
    }

    #[test]
    fn token_list_names_each_customer_in_order() {
        let minter = TokenMinter::new("secret");
        let tokens = token_list(&minter, &tokens_args(3, "wrk-ab12", false)).unwrap();
        let subjects: Vec<_> = tokens
            .iter()
            .map(|token| decode_with("secret", token).unwrap())
            .map(|claims| {
                assert_eq!(claims.roles, ["customer"]);
                claims.sub
            })
            .collect();
        assert_eq!(subjects, ["wrk-ab12-0", "wrk-ab12-1", "wrk-ab12-2"]);

        let admin = token_list(&minter, &tokens_args(1, "wrk", true)).unwrap();
        assert_eq!(admin.len(), 1);
        let claims = decode_with("secret", &admin[0]).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.roles),
            (ADMIN_SUBJECT, vec!["admin".to_owned()])
        );
    }

    #[test]
    fn token_list_refuses_a_prefix_that_makes_bad_subjects() {
        let minter = TokenMinter::new("secret");
        for prefix in ["has space", "a/b", &"x".repeat(60)] {
            let err = token_list(&minter, &tokens_args(2000, prefix, false))
                .unwrap_err()
                .to_string();
            assert!(err.contains("--prefix"), "{prefix}: {err}");
        }
        // The longest id is the last one: 59 characters + "-1999" fit in 64, 60 do not.
        assert!(token_list(&minter, &tokens_args(2000, &"x".repeat(59), false)).is_ok());
    }

    #[test]
    fn subjects_are_checked() {
        assert!(is_valid_subject("buyer-ab12cd34-1999999"));
        assert!(is_valid_subject(&buyer_subject("ffffffff", u32::MAX)));
        assert!(!is_valid_subject(""));
        assert!(!is_valid_subject("has space"));
        assert!(!is_valid_subject(&"x".repeat(65)));
        assert!(TokenMinter::new("k").customer("bad/subject").is_err());
    }
}
