//! The system a run is pointed at: checkline through its public API, or the
//! in-process row-locking baseline. Both take the same orders from the same
//! load engine; they differ in how products are created, how decisions are
//! learnt, and where the checks read their figures.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use chrono::{SecondsFormat, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use uuid::Uuid;

use super::Harness;
use crate::auth::TokenMinter;
use crate::baseline::BaselineServer;
use crate::checks::{self, Check, ClientView, Expectation, System};
use crate::cli::{ScenarioSettings, Tracking};
use crate::client::{ApiClient, NewProduct, Product};
use crate::db;
use crate::load::Follow;
use crate::report::ProductInfo;

/// Price of every product a run creates.
pub const PRICE_CENTS: i64 = 1000;
/// Product creations in flight at once (`many-products`).
const CREATE_CONCURRENCY: usize = 8;

pub enum Target<'a> {
    Checkline(&'a Harness),
    Baseline {
        server: &'a BaselineServer,
        client: ApiClient,
    },
}

/// A system under test with what the engine needs to drive it.
pub struct SystemUnderTest<'a> {
    pub target: Target<'a>,
    pub minter: Arc<TokenMinter>,
    pub follow: Follow,
}

impl<'a> SystemUnderTest<'a> {
    pub fn checkline(harness: &'a Harness, settings: &ScenarioSettings) -> Self {
        let follow = match settings.load.tracking {
            Tracking::Poll => Follow::Poll {
                concurrency: settings.load.poll_concurrency,
            },
            Tracking::Db => Follow::Db {
                pool: harness.pool.clone(),
            },
            Tracking::Synchronous => Follow::Synchronous,
        };
        Self {
            target: Target::Checkline(harness),
            minter: Arc::clone(&harness.minter),
            follow,
        }
    }

    pub fn baseline(
        server: &'a BaselineServer,
        client: ApiClient,
        minter: Arc<TokenMinter>,
    ) -> Self {
        Self {
            target: Target::Baseline { server, client },
            minter,
            follow: Follow::Synchronous,
        }
    }

    /// Which system this is: checkline, or the baseline.
    pub fn kind(&self) -> System {
        match self.target {
            Target::Checkline(_) => System::Checkline,
            Target::Baseline { .. } => System::Baseline,
        }
    }

    pub fn client(&self) -> &ApiClient {
        match &self.target {
            Target::Checkline(harness) => &harness.client,
            Target::Baseline { client, .. } => client,
        }
    }

    /// Creates the run's products: `LOAD-<RUN>` (or `LOAD-<RUN>-<i>` when
    /// there are several) with the scenario's stock and limit.
    pub async fn create_products(
        &self,
        settings: &ScenarioSettings,
        run_id: &str,
    ) -> Result<Vec<ProductInfo>> {
        let count = settings.products;
        let sku = |index: u32| {
            let run = run_id.to_uppercase();
            if count == 1 {
                format!("LOAD-{run}")
            } else {
                format!("LOAD-{run}-{index}")
            }
        };
        let initial_stock = i64::try_from(settings.stock).unwrap_or(i64::MAX);
        match &self.target {
            Target::Checkline(harness) => {
                let name = format!(
                    "{} {}",
                    settings.kind.name(),
                    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                stream::iter(0..count)
                    .map(|index| {
                        let new = NewProduct {
                            sku: sku(index),
                            name: name.clone(),
                            price_cents: PRICE_CENTS,
                            stock: settings.stock,
                            max_per_customer: settings.max_per_customer,
                        };
                        async move {
                            let product = harness.create_product(&new).await?;
                            check_created(&product, settings)?;
                            Ok::<_, anyhow::Error>(ProductInfo {
                                id: product.id,
                                sku: product.sku,
                                partition: Some(product.partition),
                                initial_stock: product.stock,
                            })
                        }
                    })
                    .buffered(CREATE_CONCURRENCY)
                    .try_collect()
                    .await
            }
            Target::Baseline { server, .. } => {
                let mut products = Vec::new();
                for index in 0..count {
                    let sku = sku(index);
                    let id = server
                        .create_product(&sku, settings.stock, PRICE_CENTS)
                        .await?;
                    products.push(ProductInfo {
                        id,
                        sku,
                        partition: None,
                        initial_stock,
                    });
                }
                Ok(products)
            }
        }
    }

    /// The product's current stock.
    pub async fn stock(&self, product_id: Uuid) -> Result<i64> {
        match &self.target {
            Target::Checkline(harness) => Ok(api_product(harness, product_id).await?.stock),
            Target::Baseline { server, .. } => server.stock(product_id).await,
        }
    }

    /// Gathers the database's (and for checkline the API's) figures for one
    /// product and evaluates the checks.
    pub async fn product_checks(
        &self,
        product_id: Uuid,
        mut expect: Expectation,
        mut client: ClientView,
    ) -> Result<Vec<Check>> {
        expect.system = self.kind();
        let db = match &self.target {
            Target::Checkline(harness) => {
                client.api_stock = api_product(harness, product_id).await?.stock;
                db::fetch_view(&harness.pool, &db::CHECKLINE, product_id).await?
            }
            Target::Baseline { server, .. } => {
                let view = server.fetch_view(product_id).await?;
                // No separate read API: the figure is not compared.
                client.api_stock = view.audit.as_ref().map_or(0, |audit| audit.stock);
                view
            }
        };
        Ok(checks::evaluate(&expect, &client, &db))
    }
}

/// The API must have created the product as asked.
fn check_created(product: &Product, settings: &ScenarioSettings) -> Result<()> {
    ensure!(
        u64::try_from(product.stock).ok() == Some(settings.stock)
            && product.max_per_customer == settings.max_per_customer.map(i64::from),
        "the API created product {} with stock {} and max_per_customer {:?}, \
         not the requested {} and {:?}",
        product.id,
        product.stock,
        product.max_per_customer,
        settings.stock,
        settings.max_per_customer
    );
    Ok(())
}

/// `GET /v1/products/{id}` at the first API that answers.
async fn api_product(harness: &Harness, product_id: Uuid) -> Result<Product> {
    let client = &harness.client;
    let reply = client
        .first_answer(|api| client.get_product(api, product_id))
        .await
        .with_context(|| format!("GET /v1/products/{product_id}"))?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET /v1/products/{product_id} answered {}",
        reply.describe_with_body()
    );
    reply.json()
}
