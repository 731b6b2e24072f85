//! The `cart` scenario's course: create the products (some with a
//! per-customer limit), let the buyers check out their carts, wait for the
//! queues to drain (and with `--wait-expiry` for every abandoned
//! reservation to expire, then try to confirm each one), read PostgreSQL,
//! check invariants 1-8, report.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use chrono::{SecondsFormat, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{Harness, Verdict};
use crate::cart::checks::{self as cart_checks, CartExpectation, ProductSetup};
use crate::cart::db::{self as cart_db, Backlog, Waited};
use crate::cart::report::{figures, CartReport, ExpiryWait};
use crate::cart::{act, checkout, plan_cart, ActionKind, BuyerRecord, Checkout, Intent};
use crate::checks;
use crate::cli::{CartSettings, Connection, ScenarioKind};
use crate::client::{NewProduct, Product};
use crate::report::{seconds, ProductInfo};

/// Product creations in flight at once.
const CREATE_CONCURRENCY: usize = 8;
/// Polls and confirms besides the submissions, per virtual user.
const CONNECTIONS_PER_USER: usize = 3;

pub async fn run(connection: &Connection, settings: CartSettings) -> Result<Verdict> {
    if let Some(path) = &settings.json_out {
        std::fs::File::create(path)
            .with_context(|| format!("--json-out {} is not writable", path.display()))?;
    }
    let run_id = super::runner::new_run_id();
    let harness = Harness::connect(
        connection,
        settings.concurrency.saturating_mul(CONNECTIONS_PER_USER),
        settings.requests.request_timeout,
    )
    .await?;
    let products = create_products(&harness, &settings, &run_id).await?;
    let ids: Arc<[Uuid]> = products.iter().map(|(info, _)| info.id).collect();
    let ctx = Checkout {
        client: harness.client.clone(),
        retry: settings.requests.retry(),
        reserve_secs: settings.reserve_secs,
        decision_timeout: settings.decision_timeout,
    };
    eprintln!(
        "cart run {run_id}: {} buyers over {} products of {} units, {} virtual users",
        settings.buyers, settings.products, settings.stock, settings.concurrency
    );

    let started_at = Utc::now();
    let released = Instant::now();
    let mut buyers = release_buyers(&harness, &ctx, &settings, &run_id, &ids).await?;
    let done = released.elapsed();
    eprintln!(
        "  {} buyers done in {:.3} s; waiting up to {} s for the queues to drain",
        buyers.len(),
        done.as_secs_f64(),
        settings.drain_timeout.as_secs()
    );
    let mut notes = Vec::new();
    let mut drain =
        cart_db::wait_drained(&harness.pool, &run_id, &ids, settings.drain_timeout).await?;
    let mut expiry = None;
    if settings.wait_expiry {
        eprintln!(
            "  waiting up to {} s for every reservation to end",
            settings.expiry_timeout.as_secs()
        );
        let (waited, most_overdue_secs) =
            cart_db::wait_expired(&harness.pool, &run_id, settings.expiry_timeout).await?;
        expiry = Some(ExpiryWait {
            waited,
            most_overdue_secs,
        });
        let late = confirm_abandoned(&harness, &ctx, &settings, &mut buyers).await?;
        eprintln!("  {late} abandoned reservations asked to confirm after expiry");
        drain = wait_drained_again(&harness, &run_id, &ids, &settings, drain).await?;
    }
    if !drain.done {
        notes.push(format!(
            "the queues did not drain within {} s: {:?}",
            settings.drain_timeout.as_secs(),
            drain.last
        ));
    }

    // Abandoned reservations may expire while the products are read through
    // the API and then from PostgreSQL: the two reads are taken again (a
    // few times) until no product's stock moved between them.
    let mut attempt = 0;
    let (setups, db) = loop {
        attempt += 1;
        let mut setups = Vec::with_capacity(products.len());
        let mut api_notes = Vec::new();
        for (info, limit) in &products {
            let api = match api_product(&harness, info.id).await {
                Ok(product) => Some(product),
                Err(err) => {
                    report_note(&mut api_notes, format!("{err:#}"));
                    None
                }
            };
            setups.push(ProductSetup {
                id: info.id,
                sku: info.sku.clone(),
                initial_stock: info.initial_stock,
                max_per_customer: limit.map(i64::from),
                api_stock: api.as_ref().map(|product| product.stock),
                api_reserved: api.and_then(|product| product.reserved),
            });
        }
        let db = cart_db::fetch_view(&harness.pool, &run_id, &ids).await;
        let moved = db.as_ref().is_ok_and(|view| {
            setups.iter().any(|setup| {
                view.audits
                    .iter()
                    .find(|a| a.product_id == setup.id)
                    .is_some_and(|a| setup.api_stock.is_some_and(|s| s != a.stock))
            })
        });
        if !moved || attempt >= 5 {
            for note in api_notes {
                report_note(&mut notes, note);
            }
            break (setups, db);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let (responses, carts, actions, throughput, latency_ms, submission) =
        figures(&buyers, db.as_ref().ok(), released);
    let mut report = CartReport {
        scenario: ScenarioKind::Cart,
        run_id: run_id.clone(),
        started_at,
        api_url: harness.client.joined_base_urls(),
        products: products.iter().map(|(info, _)| info.clone()).collect(),
        config: settings.clone(),
        duration_secs: seconds(done),
        submission_secs: seconds(submission),
        responses,
        carts,
        actions,
        throughput,
        latency_ms,
        drain: Some(drain),
        expiry,
        checks: Vec::new(),
        passed: None,
        error: None,
        notes,
    };
    println!("{}", report.render());
    for note in &report.notes {
        println!("note: {note}");
    }
    let db = match db {
        Ok(db) => db,
        Err(err) => {
            report.error = Some(format!("{err:#}"));
            if let Some(path) = &settings.json_out {
                report.write_json(path)?;
            }
            return Err(err.context("reading the run from PostgreSQL"));
        }
    };
    let expect = CartExpectation {
        products: setups,
        wait_expiry: settings.wait_expiry,
        expiry_bound: settings.expiry_bound,
    };
    let checks = cart_checks::evaluate(&expect, &buyers, &db);
    println!("\n{}", checks::render(&checks));
    let verdict = Verdict::from_checks(&checks);
    report.passed = Some(verdict == Verdict::Passed);
    report.checks = checks;
    if let Some(path) = &settings.json_out {
        report.write_json(path)?;
    }
    Ok(verdict)
}

/// Creates `LOAD-<RUN>-<i>`; the first `limited_products` get the limit.
async fn create_products(
    harness: &Harness,
    settings: &CartSettings,
    run_id: &str,
) -> Result<Vec<(ProductInfo, Option<u32>)>> {
    let name = format!(
        "cart {}",
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let run = run_id.to_uppercase();
    stream::iter(0..settings.products)
        .map(|index| {
            let limit = (index < settings.limited_products).then_some(settings.max_per_customer);
            let new = NewProduct {
                sku: format!("LOAD-{run}-{index}"),
                name: name.clone(),
                price_cents: super::system::PRICE_CENTS,
                stock: settings.stock,
                max_per_customer: limit,
            };
            async move {
                let product = harness.create_product(&new).await?;
                ensure!(
                    u64::try_from(product.stock).ok() == Some(settings.stock)
                        && product.max_per_customer == limit.map(i64::from),
                    "the API created product {} with stock {} and max_per_customer {:?}, \
                     not the requested {} and {limit:?}",
                    product.id,
                    product.stock,
                    product.max_per_customer,
                    settings.stock
                );
                Ok::<_, anyhow::Error>((
                    ProductInfo {
                        id: product.id,
                        sku: product.sku,
                        partition: Some(product.partition),
                        initial_stock: product.stock,
                    },
                    limit,
                ))
            }
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await
}

/// `concurrency` virtual users, each taking the next buyer until none is
/// left; the records in buyer order.
async fn release_buyers(
    harness: &Harness,
    ctx: &Checkout,
    settings: &CartSettings,
    run_id: &str,
    ids: &Arc<[Uuid]>,
) -> Result<Vec<BuyerRecord>> {
    let next = Arc::new(AtomicU32::new(0));
    let mut users = JoinSet::new();
    let count = settings
        .concurrency
        .min(usize::try_from(settings.buyers).unwrap_or(usize::MAX))
        .max(1);
    for _ in 0..count {
        let (ctx, minter, next, ids) = (
            ctx.clone(),
            Arc::clone(&harness.minter),
            Arc::clone(&next),
            Arc::clone(ids),
        );
        let (settings, run_id) = (settings.clone(), run_id.to_owned());
        users.spawn(async move {
            let mut records = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= settings.buyers {
                    return Ok::<_, anyhow::Error>(records);
                }
                let cart = plan_cart(&run_id, index, &ids, &settings);
                let token: Arc<str> = minter.customer(&cart.customer_id)?.into();
                records.push(checkout(&ctx, cart, token).await);
            }
        });
    }
    let mut buyers = Vec::with_capacity(usize::try_from(settings.buyers).unwrap_or(0));
    while let Some(done) = users.join_next().await {
        buyers.extend(done.context("a virtual user failed")??);
    }
    buyers.sort_by_key(|buyer| buyer.index);
    Ok(buyers)
}

/// `--wait-expiry`: once the reservations have ended, every abandoned one
/// is asked to confirm; an expiry is never undone, so each must answer
/// `409 reservation_expired`.
async fn confirm_abandoned(
    harness: &Harness,
    ctx: &Checkout,
    settings: &CartSettings,
    buyers: &mut [BuyerRecord],
) -> Result<usize> {
    let abandoned: Vec<(usize, Uuid, String, usize)> = buyers
        .iter()
        .enumerate()
        .filter(|(_, buyer)| buyer.intent == Intent::Abandon && buyer.was_reserved())
        .filter_map(|(at, buyer)| {
            let home = ctx.client.home(buyer.index);
            buyer
                .order_id()
                .map(|id| (at, id, buyer.customer_id.clone(), home))
        })
        .collect();
    let answers: Vec<(usize, _)> = stream::iter(abandoned)
        .map(|(at, id, customer, home)| {
            let minter = Arc::clone(&harness.minter);
            async move {
                let token = minter.customer(&customer)?;
                let answer = act(ctx, home, &token, id, ActionKind::Confirm, true).await;
                Ok::<_, anyhow::Error>((at, answer))
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .try_collect()
        .await?;
    let late = answers.len();
    for (at, answer) in answers {
        buyers[at].actions.push(answer);
    }
    Ok(late)
}

/// After the expiries, their units come back through the queues: drained
/// again, the longer wait reported.
async fn wait_drained_again(
    harness: &Harness,
    run_id: &str,
    ids: &[Uuid],
    settings: &CartSettings,
    before: Waited<Backlog>,
) -> Result<Waited<Backlog>> {
    let after = cart_db::wait_drained(&harness.pool, run_id, ids, settings.drain_timeout).await?;
    Ok(Waited {
        secs: before.secs + after.secs,
        ..after
    })
}

/// Keeps the first few notes of a kind.
fn report_note(notes: &mut Vec<String>, note: String) {
    if notes.len() < 5 {
        notes.push(note);
    }
}

/// `GET /v1/products/{id}` at the first API that answers.
async fn api_product(harness: &Harness, id: Uuid) -> Result<Product> {
    let client = &harness.client;
    let reply = client
        .first_answer(|api| client.get_product(api, id))
        .await
        .with_context(|| format!("GET /v1/products/{id}"))?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET /v1/products/{id} answered {}",
        reply.describe_with_body()
    );
    reply.json::<Product>()
}
