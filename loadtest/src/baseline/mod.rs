//! The baseline: the order endpoint as most flash-sale demos write it, to
//! compare checkline against.
//!
//! An HTTP server (axum, in this process, on `127.0.0.1:0`) whose
//! `POST /orders` runs one PostgreSQL transaction per request and answers
//! `200` with the decision:
//!
//! ```sql
//! BEGIN;
//! SELECT stock, price_cents FROM baseline.products WHERE id = $1 FOR UPDATE;
//! INSERT INTO baseline.orders (id, customer_id, idempotency_key, product_id, quantity,
//!                              status, reason, unit_price_cents, total_cents)
//!   VALUES (...)   -- 'confirmed' if stock >= quantity, else 'rejected'
//!   ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING created_at;
//! UPDATE baseline.products SET stock = stock - $2 WHERE id = $1;   -- if confirmed
//! COMMIT;
//! ```
//!
//! The order row is inserted before the decrement so that the unique
//! constraint settles a retried key before any stock moves (a conflict rolls
//! back and answers the stored order as a replay). It does the same
//! per-request work as checkline's accept path where the two overlap: it
//! verifies the HS256 bearer token, checks the `customer` role, validates the
//! `Idempotency-Key` and parses the same JSON body.
//!
//! Its tables live in their own schema, `baseline`, of the same database,
//! created by the load test if missing; every run creates a fresh product.

mod schema;
mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use reqwest::Url;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checks::DbView;
use crate::db::{self, sql_error};
pub use schema::TABLES;
use server::AppState;
pub use server::ORDERS_PATH;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running baseline server.
pub struct BaselineServer {
    url: Url,
    pool: PgPool,
    state: Arc<AppState>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl BaselineServer {
    /// Creates the schema if needed, opens (and warms) a pool of `pool_size`
    /// connections, and starts serving on a free loopback port.
    pub async fn start(database_url: &str, pool_size: u32, jwt_secret: &str) -> Result<Self> {
        let options: PgConnectOptions = database_url
            .parse()
            .map_err(sql_error("--database-url is not a valid PostgreSQL URL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        schema::create_schema(&pool).await?;
        schema::check_connection_headroom(&pool, pool_size).await?;
        // Open every connection now, so that the measured run does not pay
        // for connection set-up (checkline's API has its pool warm too).
        let warm = tokio::time::timeout(
            CONNECT_TIMEOUT,
            futures::future::try_join_all((0..pool_size).map(|_| pool.acquire())),
        )
        .await
        .map_err(|_elapsed| anyhow!("opening the baseline's {pool_size} connections timed out"))?
        .map_err(sql_error("opening the baseline's connections"))?;
        drop(warm);

        let state = Arc::new(AppState::new(pool.clone(), jwt_secret));
        let app = server::router(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the baseline server to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the baseline's address")?;
        let url = Url::parse(&format!("http://{addr}")).context("the baseline's URL")?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
        });
        Ok(Self {
            url,
            pool,
            state,
            shutdown,
            task,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The first database error the server answered with a 503, if any.
    pub fn first_error(&self) -> Option<String> {
        self.state.first_error()
    }

    /// Inserts a fresh product with `stock` units.
    pub async fn create_product(&self, sku: &str, stock: u64, price_cents: i64) -> Result<Uuid> {
        schema::create_product(&self.pool, sku, stock, price_cents).await
    }

    pub async fn stock(&self, product_id: Uuid) -> Result<i64> {
        schema::stock(&self.pool, product_id).await
    }

    /// What the checks need to know about `product_id`, from the baseline's
    /// tables.
    pub async fn fetch_view(&self, product_id: Uuid) -> Result<DbView> {
        db::fetch_view(&self.pool, &TABLES, product_id).await
    }

    /// Stops serving and closes the pool.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        let served = self.task.await.context("the baseline server task failed")?;
        self.pool.close().await;
        served.context("the baseline server failed")
    }
}
