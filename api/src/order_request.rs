//! The body of `POST /v1/orders`, validated into what the accept paths
//! take, and the request hash a retry must repeat. One place, used by the
//! handler and by the rate limiter's retry fingerprint, so both hash a
//! request the same way.

use std::collections::HashSet;

use checkline_shared::domain::{order_request_hash, parse_id};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// Body of `POST /v1/orders`: either one product and quantity (v1), or
/// `lines`; optionally `reserve_secs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = OrderCreate,
    examples(
        json!({"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1}),
        json!({"lines": [{"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1},
                         {"product_id": "7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a", "quantity": 2}],
               "reserve_secs": 300})
    )
)]
pub struct CreateOrder {
    /// The product of a one-line order (v1). Not together with `lines`.
    #[schema(value_type = Option<Uuid>)]
    product_id: Option<String>,
    /// Units to buy in a one-line order. The upper bound (100 by default) is configurable per deployment.
    #[schema(minimum = 1, maximum = 100)]
    quantity: Option<i64>,
    /// The lines of the order, each product at most once (1-20 lines by default, configurable). Not together with `product_id`/`quantity`.
    #[schema(min_items = 1, max_items = 20)]
    lines: Option<Vec<LineInput>>,
    /// Reserve instead of buy: a successful decision makes the order `reserved` for this many seconds (30-3,600 by default), until confirmed, cancelled or expired.
    #[schema(minimum = 30, maximum = 3600)]
    reserve_secs: Option<i64>,
}

/// One line of [`CreateOrder`].
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrderLineCreate)]
pub struct LineInput {
    #[schema(value_type = Uuid)]
    product_id: String,
    /// Units of this product. The upper bound (100 by default) is configurable per deployment.
    #[schema(minimum = 1, maximum = 100)]
    quantity: i64,
}

/// The bounds a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub quantity_max: i64,
    pub lines_max: usize,
    pub reserve_secs_max: i64,
}

impl Limits {
    /// The contract's floor for `reserve_secs`.
    pub const RESERVE_SECS_MIN: i64 = 30;

    /// No bound but the types': for fingerprints, where the handler's own
    /// check comes later.
    const LOOSE: Self = Self {
        quantity_max: i32::MAX as i64,
        lines_max: usize::MAX,
        reserve_secs_max: i32::MAX as i64,
    };
}

/// A valid order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// (product, quantity) in request order; one line for a v1 body.
    pub lines: Vec<(Uuid, i32)>,
    pub reserve_secs: Option<i32>,
}

impl CreateOrder {
    pub fn validate(self, limits: &Limits) -> Result<OrderRequest, ApiError> {
        let invalid = |detail: String| Err(ApiError::InvalidRequest(detail));
        let raw = match (self.product_id, self.quantity, self.lines) {
            (Some(product_id), Some(quantity), None) => vec![(product_id, quantity)],
            (None, None, Some(lines)) => lines
                .into_iter()
                .map(|l| (l.product_id, l.quantity))
                .collect(),
            (None, None, None) => {
                return invalid("give product_id and quantity, or lines".into());
            }
            (_, _, Some(_)) => {
                return invalid("give either product_id and quantity, or lines, not both".into());
            }
            _ => return invalid("product_id and quantity go together".into()),
        };
        if raw.is_empty() || raw.len() > limits.lines_max {
            return invalid(format!("an order has from 1 to {} lines", limits.lines_max));
        }
        let mut seen = HashSet::new();
        let mut lines = Vec::with_capacity(raw.len());
        for (product_id, quantity) in raw {
            let Some(product_id) = parse_id(&product_id) else {
                return invalid("product_id must be a UUID".into());
            };
            if !seen.insert(product_id) {
                return invalid(format!(
                    "product {product_id} is in more than one line; give it once with the total quantity"
                ));
            }
            let max = limits.quantity_max;
            if !(1..=max).contains(&quantity) {
                return invalid(format!("quantity must be from 1 to {max}"));
            }
            lines.push((
                product_id,
                i32::try_from(quantity).map_err(ApiError::internal)?,
            ));
        }
        let reserve_secs = match self.reserve_secs {
            None => None,
            Some(secs) if (Limits::RESERVE_SECS_MIN..=limits.reserve_secs_max).contains(&secs) => {
                Some(i32::try_from(secs).map_err(ApiError::internal)?)
            }
            Some(_) => {
                return invalid(format!(
                    "reserve_secs must be from {} to {}",
                    Limits::RESERVE_SECS_MIN,
                    limits.reserve_secs_max
                ))
            }
        };
        Ok(OrderRequest {
            lines,
            reserve_secs,
        })
    }
}

impl OrderRequest {
    /// The hash stored with the order: the same lines in the same order and
    /// the same `reserve_secs`. A v1 body and the same single line hash
    /// alike, as they did before carts existed.
    pub fn hash(&self) -> Vec<u8> {
        order_request_hash(&self.lines, self.reserve_secs)
    }

    /// The hash of a body, or `None` if it is not a valid order request
    /// (for the rate limiter's retry fingerprint).
    pub fn hash_of_body(body: &[u8]) -> Option<Vec<u8>> {
        let input: CreateOrder = serde_json::from_slice(body).ok()?;
        input.validate(&Limits::LOOSE).ok().map(|r| r.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkline_shared::domain::request_hash;

    const LIMITS: Limits = Limits {
        quantity_max: 100,
        lines_max: 3,
        reserve_secs_max: 3600,
    };

    fn parse(body: serde_json::Value) -> Result<OrderRequest, String> {
        let input: CreateOrder = serde_json::from_value(body).map_err(|e| e.to_string())?;
        input.validate(&LIMITS).map_err(|e| e.to_string())
    }

    const A: &str = "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d";
    const B: &str = "7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a";

    #[test]
    fn a_v1_body_is_one_line_and_hashes_as_before() {
        let v1 = parse(serde_json::json!({"product_id": A, "quantity": 2})).unwrap();
        let line = parse(serde_json::json!({"lines": [{"product_id": A, "quantity": 2}]})).unwrap();
        assert_eq!(v1, line);
        assert_eq!(v1.hash(), request_hash(&["order", A, "2"]));
        let reserved =
            parse(serde_json::json!({"product_id": A, "quantity": 2, "reserve_secs": 60})).unwrap();
        assert_ne!(reserved.hash(), v1.hash());
    }

    #[test]
    fn line_order_matters_to_the_hash() {
        let ab = parse(serde_json::json!({"lines": [{"product_id": A, "quantity": 1}, {"product_id": B, "quantity": 1}]})).unwrap();
        let ba = parse(serde_json::json!({"lines": [{"product_id": B, "quantity": 1}, {"product_id": A, "quantity": 1}]})).unwrap();
        assert_ne!(ab.hash(), ba.hash());
    }

    #[test]
    fn refusals() {
        for body in [
            serde_json::json!({}),
            serde_json::json!({"product_id": A}),
            serde_json::json!({"product_id": A, "quantity": 1, "lines": [{"product_id": B, "quantity": 1}]}),
            serde_json::json!({"lines": []}),
            serde_json::json!({"lines": [{"product_id": A, "quantity": 1}, {"product_id": A, "quantity": 1}]}),
            serde_json::json!({"lines": [{"product_id": A, "quantity": 0}]}),
            serde_json::json!({"lines": [{"product_id": "nope", "quantity": 1}]}),
            serde_json::json!({"product_id": A, "quantity": 1, "reserve_secs": 29}),
            serde_json::json!({"product_id": A, "quantity": 1, "reserve_secs": 3601}),
            serde_json::json!({"lines": [
                {"product_id": A, "quantity": 1},
                {"product_id": B, "quantity": 1},
                {"product_id": "11111111-1111-4111-8111-111111111111", "quantity": 1},
                {"product_id": "22222222-2222-4222-8222-222222222222", "quantity": 1}]}),
        ] {
            assert!(parse(body.clone()).is_err(), "{body}");
        }
        assert!(serde_json::from_value::<CreateOrder>(
            serde_json::json!({"lines": [{"product_id": A, "quantity": 1, "x": 1}]})
        )
        .is_err());
    }
}
