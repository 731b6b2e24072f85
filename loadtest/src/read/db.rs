//! The `read` run's queries: the product's stock changes as PostgreSQL
//! recorded them (for [`super::timeline`]), and the difference between the
//! generator's clock and the database's.

use std::time::Instant;

use anyhow::{anyhow, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::timeline::StockChange;
use crate::db::sql_error;

/// `SELECT clock_timestamp()` round trips per clock measurement; the
/// shortest one is used.
const CLOCK_PROBES: usize = 9;

/// Every change of the product's stock. A one-line order takes its units
/// at its decision (`decided_at`, the time of the worker's transaction,
/// which also moved the stock) if it is reserved or confirmed, or was
/// reserved and then cancelled or expired (it has a stock return); restocks
/// and stock returns give units back when applied. Orders of several lines
/// are not counted: the `read` run sends none.
const STOCK_CHANGES: &str = "\
    SELECT o.decided_at AS at, -o.quantity::bigint AS delta FROM orders o \
     WHERE o.product_id = $1 AND o.line_count = 1 AND o.decided_at IS NOT NULL \
       AND (o.status IN ('reserved', 'confirmed') \
            OR (o.status IN ('cancelled', 'expired') AND EXISTS \
                (SELECT 1 FROM stock_returns r WHERE r.order_id = o.id AND r.product_id = $1))) \
    UNION ALL \
    SELECT applied_at, quantity FROM restocks \
     WHERE product_id = $1 AND status = 'applied' \
    UNION ALL \
    SELECT applied_at, quantity::bigint FROM stock_returns \
     WHERE product_id = $1 AND status = 'applied'";

/// The product's initial and current stock, and its stock changes.
#[derive(Debug, Clone)]
pub struct StockHistory {
    pub initial_stock: i64,
    pub stock: i64,
    pub changes: Vec<StockChange>,
}

pub async fn fetch_history(pool: &PgPool, product_id: Uuid) -> Result<StockHistory> {
    let row = sqlx::query("SELECT initial_stock, stock FROM products WHERE id = $1")
        .bind(product_id)
        .fetch_optional(pool)
        .await
        .map_err(sql_error("reading the product's stock"))?
        .ok_or_else(|| anyhow!("product {product_id} is not in PostgreSQL"))?;
    let initial_stock: i64 = row
        .try_get("initial_stock")
        .map_err(sql_error("reading initial_stock"))?;
    let stock: i64 = row.try_get("stock").map_err(sql_error("reading stock"))?;
    let changes = sqlx::query(STOCK_CHANGES)
        .bind(product_id)
        .fetch_all(pool)
        .await
        .map_err(sql_error("reading the product's stock changes"))?
        .iter()
        .map(|row| {
            let at: DateTime<Utc> = row.try_get("at")?;
            Ok(StockChange {
                at_us: at.timestamp_micros(),
                delta: row.try_get("delta")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(sql_error("decoding the product's stock changes"))?;
    Ok(StockHistory {
        initial_stock,
        stock,
        changes,
    })
}

/// How the generator's clock compares with PostgreSQL's, from the
/// shortest of several `SELECT clock_timestamp()` round trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClockSkew {
    /// PostgreSQL's clock minus the generator's, at the middle of the
    /// round trip, in ms.
    pub offset_ms: f64,
    /// The round trip it was measured over, in ms.
    pub round_trip_ms: f64,
}

impl ClockSkew {
    /// The allowance on either side of a read's window, in µs: the offset
    /// (either way) and half the round trip (where in it PostgreSQL read
    /// its clock is unknown).
    pub fn eps_us(&self) -> i64 {
        ms_to_us(self.offset_ms.abs() + self.round_trip_ms / 2.0)
    }

    /// The larger allowance of two measurements.
    pub fn wider(self, other: Self) -> Self {
        if other.eps_us() > self.eps_us() {
            other
        } else {
            self
        }
    }
}

fn ms_to_us(ms: f64) -> i64 {
    // Milliseconds of a clock difference fit in i64 microseconds.
    (ms * 1000.0).ceil() as i64
}

/// Measures [`ClockSkew`] over one connection.
pub async fn measure_clock_skew(pool: &PgPool) -> Result<ClockSkew> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(sql_error("connecting to PostgreSQL to compare clocks"))?;
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..CLOCK_PROBES {
        let started = Instant::now();
        let before_us = Utc::now().timestamp_micros();
        let theirs: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *connection)
            .await
            .map_err(sql_error("reading PostgreSQL's clock"))?;
        let round_trip_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        let middle_us = before_us.saturating_add(round_trip_us / 2);
        let offset_us = theirs.timestamp_micros().saturating_sub(middle_us);
        if best.is_none_or(|(_, shortest)| round_trip_us < shortest) {
            best = Some((offset_us, round_trip_us));
        }
    }
    let (offset_us, round_trip_us) = best.unwrap_or_default();
    Ok(ClockSkew {
        offset_ms: us_to_ms(offset_us),
        round_trip_ms: us_to_ms(round_trip_us),
    })
}

fn us_to_ms(us: i64) -> f64 {
    // Exact below 2^53 µs.
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_covers_the_offset_and_half_the_round_trip() {
        let skew = ClockSkew {
            offset_ms: -0.4,
            round_trip_ms: 0.3,
        };
        assert_eq!(skew.eps_us(), 550);
        let wider = ClockSkew {
            offset_ms: 2.0,
            round_trip_ms: 0.2,
        };
        assert_eq!(skew.wider(wider), wider);
        assert_eq!(wider.wider(skew), wider);
    }
}
