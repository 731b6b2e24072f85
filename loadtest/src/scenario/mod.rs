//! Scenarios and what they share: connecting to the system under test,
//! creating the products under load, and turning checks into an exit code.
//!
//! Every scenario follows the same course ([`runner`]): create its products,
//! (for `sold-out-storm`) sell the product out, release the buyers, learn the
//! decisions, report, check the invariants; then, with `--baseline`, the same
//! against the row-locking baseline ([`system`] hides the difference).
//! What differs between scenarios is settled by the command line
//! ([`crate::cli::ScenarioSettings`]): products, stock, default buyers, and
//! the sell-out phase. `cart` ([`cart`]) and `read` ([`read`]) have courses
//! of their own.

mod cart;
mod read;
mod runner;
mod system;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::future::join_all;
use reqwest::StatusCode;
use sqlx::PgPool;

use crate::auth::TokenMinter;
use crate::checks::{self, Check};
use crate::cli::{CartSettings, Cli, Command, Connection, ReadSettings, ScenarioSettings};
use crate::client::{error_chain, ApiClient, NewProduct, Product};
use crate::db;

/// Every check passed.
pub const EXIT_PASSED: u8 = 0;
/// At least one check failed.
pub const EXIT_FAILED: u8 = 1;
/// The run could not be carried out: usage or configuration error, the API
/// or the database could not be reached, or the set-up was refused.
pub const EXIT_NOT_RUN: u8 = 2;

const PRODUCT_ATTEMPTS: u32 = 5;
const PRODUCT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
}

impl Verdict {
    pub fn from_checks(checks: &[Check]) -> Self {
        if checks::all_passed(checks) {
            Self::Passed
        } else {
            Self::Failed
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Self::Passed => EXIT_PASSED,
            Self::Failed => EXIT_FAILED,
        }
    }
}

/// Runs the scenario the command line asks for.
pub async fn run(cli: Cli) -> Result<Verdict> {
    let connection = Connection::from_args(&cli.connection)?;
    if let Command::Cart(args) = &cli.command {
        return cart::run(&connection, CartSettings::from_args(args)?).await;
    }
    if let Command::Read(args) = &cli.command {
        return read::run(&connection, ReadSettings::from_args(args)?).await;
    }
    let settings = ScenarioSettings::from_command(&cli.command)?;
    settings.check_api_count(connection.api_urls.len())?;
    runner::run(&connection, settings).await
}

/// Connections to the system under test, checked before any load is sent.
pub struct Harness {
    pub client: ApiClient,
    pub minter: Arc<TokenMinter>,
    pub pool: PgPool,
}

impl Harness {
    /// Builds the HTTP client (with a pool of `http_pool_size` connections
    /// per API), and checks that every API is ready and PostgreSQL answers.
    pub async fn connect(
        connection: &Connection,
        http_pool_size: usize,
        request_timeout: Duration,
    ) -> Result<Self> {
        let client = ApiClient::new(&connection.api_urls, http_pool_size, request_timeout)?;
        let readiness = join_all((0..client.api_count()).map(|api| client.readyz(api))).await;
        for (api, ready) in readiness.into_iter().enumerate() {
            let ready = ready.map_err(|err| {
                anyhow!(
                    "the checkline API at {} could not be reached (--api-url / CHECKLINE_API_URL): {}",
                    client.base_url(api),
                    error_chain(&err)
                )
            })?;
            ensure!(
                ready.status.is_success(),
                "the checkline API at {} is not ready: GET /readyz answered {}",
                client.base_url(api),
                ready.describe_with_body()
            );
        }
        let pool = db::connect(&connection.database_url).await?;
        Ok(Self {
            client,
            minter: Arc::new(TokenMinter::new(&connection.jwt_secret)),
            pool,
        })
    }

    /// Creates `product` as the administrator at the first API that
    /// answers, honouring 429/503.
    pub async fn create_product(&self, product: &NewProduct) -> Result<Product> {
        let token = self.minter.admin()?;
        let mut attempt = 1;
        loop {
            let reply = self
                .client
                .first_answer(|api| self.client.create_product(api, &token, product))
                .await
                .map_err(|err| anyhow!("POST /v1/products failed: {}", error_chain(&err)))?;
            if reply.status == StatusCode::CREATED {
                return reply.json().context("reading the created product");
            }
            if reply.is_backpressure() && attempt < PRODUCT_ATTEMPTS {
                attempt += 1;
                let delay = reply
                    .retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(PRODUCT_MAX_RETRY_AFTER);
                tokio::time::sleep(delay).await;
                continue;
            }
            let hint = match reply.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    " (is --jwt-secret / CHECKLINE_JWT_SECRET the API's secret?)"
                }
                _ => "",
            };
            bail!(
                "creating product {} was refused: {}{hint}",
                product.sku,
                reply.describe_with_body()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_exit_codes() {
        let pass = Check {
            invariant: 1,
            name: "a".into(),
            passed: true,
            detail: String::new(),
        };
        let fail = Check {
            passed: false,
            ..pass.clone()
        };
        assert_eq!(
            Verdict::from_checks(std::slice::from_ref(&pass)).exit_code(),
            0
        );
        assert_eq!(Verdict::from_checks(&[pass, fail]).exit_code(), 1);
        assert_eq!(Verdict::from_checks(&[]), Verdict::Failed);
        assert_eq!(EXIT_NOT_RUN, 2);
    }
}
