//! Command line and environment configuration.
//!
//! Numeric flags are range-checked by clap, so a bad value is reported with the
//! flag's name. Settings that clap cannot check on its own (the JWT secret is
//! required but may come from the environment, URLs must be well formed) are
//! validated by [`Connection::from_args`]; so are the combinations of load
//! flags (mode-specific flags, derived buyers and stock), by
//! [`ScenarioSettings::from_command`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Url;
use serde::Serialize;

use crate::buyer::RetryPolicy;
use crate::schedule;

#[derive(Debug, Parser)]
#[command(
    name = "checkline-loadtest",
    version,
    about = "Load generator and invariant checker for the checkline order API",
    long_about = "Drives the checkline HTTP API with many concurrent buyers, reports \
                  throughput and latency, then checks the contract's invariants against \
                  PostgreSQL and the API.\n\nExit codes: 0 all checks passed, 1 a check \
                  failed, 2 the run could not be carried out (usage, configuration, or \
                  the API or database could not be reached)."
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the system under test lives and how to authenticate against it.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Base URL of the checkline API, or several separated by commas (API
    /// instances of one system): buyer i is sent to the (i mod n)-th, and a
    /// request that gets no answer is retried on the next.
    #[arg(
        long,
        env = "CHECKLINE_API_URL",
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Connection"
    )]
    pub api_url: String,

    /// HS256 secret the API verifies bearer tokens with (required).
    #[arg(
        long,
        env = "CHECKLINE_JWT_SECRET",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub jwt_secret: Option<String>,

    /// PostgreSQL URL: the invariant checks, `--decisions db`, and the
    /// baseline's schema.
    #[arg(
        long,
        env = "CHECKLINE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/checkline",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Many distinct buyers race for one fresh product's limited stock; every
    /// accepted order's decision is awaited, then the invariants are checked.
    FlashSale(FlashSaleArgs),
    /// Throughput on one product with enough stock that it never sells out:
    /// every order is accepted and confirmed.
    HotProduct(HotProductArgs),
    /// Orders spread uniformly at random over many products, none of which
    /// sells out; the invariants are checked per product.
    ManyProducts(ManyProductsArgs),
    /// Sell a product out, then send a storm of buyers at it and measure how
    /// fast the API answers `409 sold_out`.
    SoldOutStorm(SoldOutStormArgs),
    /// Checkout 1.1: buyers check out random carts of several products with
    /// small stock, some reserving first and then confirming, cancelling or
    /// abandoning the reservation; then invariants 1-8 are checked.
    Cart(CartArgs),
    /// Product reads under an order load: readers alternate
    /// `GET /v1/products/{id}` and the list page that holds the product while
    /// orders arrive at a fixed rate; reads/s and latency are reported and
    /// every read is checked against the freshness bound (--fresh-ms).
    Read(ReadArgs),
    /// Print bearer tokens signed with the API's secret, one per line, for
    /// driving the API with another load generator (`scripts/bench-wrk.sh`).
    /// Sends no load.
    Tokens(TokensArgs),
}

/// How load is offered (`--mode`, and the report's `config.mode`); the
/// validated shape with its figures is [`Mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeKind {
    /// `--concurrency` virtual users, each sending its next order when the
    /// previous one was answered.
    Closed,
    /// A fixed arrival rate (`--rate`), whatever the answers' latency.
    Open,
}

impl ModeKind {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// How the decisions of accepted orders are learnt (`--decisions`, and the
/// report's `config.decisions` and `decisions.tracking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracking {
    /// One long-poll `GET /v1/orders/{id}?wait=10` per accepted order.
    #[default]
    Poll,
    /// Watch PostgreSQL until no accepted order is pending; latencies from
    /// the orders' own timestamps.
    Db,
    /// The answer to the order carries its decision (the baseline; not a
    /// choice on the command line).
    #[value(skip)]
    Synchronous,
}

impl Tracking {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Db => "db",
            Self::Synchronous => "synchronous",
        }
    }
}

/// How every scenario's HTTP requests are retried and timed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Requests")]
pub struct RequestArgs {
    /// Attempts per request (the first one included) when the API answers
    /// 429/503 or the connection fails; retries reuse the same
    /// Idempotency-Key.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_attempts: u32,

    /// Longest delay honoured from a Retry-After header.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub max_retry_after_secs: u64,

    /// Timeout of one HTTP request (a long-poll gets its wait on top).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout_secs: u64,
}

/// [`RequestArgs`], in the units the engine works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requests {
    pub max_attempts: u32,
    #[serde(serialize_with = "serialize_secs", rename = "max_retry_after_secs")]
    pub max_retry_after: Duration,
    #[serde(serialize_with = "serialize_secs", rename = "request_timeout_secs")]
    pub request_timeout: Duration,
}

impl From<&RequestArgs> for Requests {
    fn from(args: &RequestArgs) -> Self {
        Self {
            max_attempts: args.max_attempts,
            max_retry_after: Duration::from_secs(args.max_retry_after_secs),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
        }
    }
}

impl Requests {
    /// When a submission is tried again.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_retry_after: self.max_retry_after,
        }
    }
}

/// Flags shared by every scenario: the load shape and how it is followed.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// closed: --concurrency virtual users; open: a fixed arrival rate --rate.
    #[arg(long, value_enum, default_value_t = ModeKind::Closed, help_heading = "Load")]
    pub mode: ModeKind,

    /// Closed mode: virtual users, i.e. order submissions in flight at once
    /// [default: 256].
    #[arg(long, value_name = "C", help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// Open mode (required there): order submissions started per second.
    #[arg(long, value_name = "R", help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,

    /// Open mode: length of the arrival schedule; buyers = rate x duration
    /// unless --buyers is given [default: 10].
    #[arg(long, value_name = "SECS", help_heading = "Load",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: Option<u64>,

    /// Open mode: most submissions outstanding at once; a request due while
    /// the cap is reached is not sent and counts as dropped [default: 10000].
    #[arg(long, value_name = "N", help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: Option<u32>,

    /// Number of buyers (distinct customers, one order each) [default: the
    /// scenario's in closed mode, rate x duration in open mode].
    #[arg(long, value_name = "N", help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub buyers: Option<u32>,

    /// Quantity each buyer orders.
    #[arg(long, value_name = "Q", default_value_t = 1, help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub quantity: u32,

    /// How decisions are learnt: poll (long-poll each accepted order through
    /// the API) or db (watch PostgreSQL; adds no HTTP load).
    #[arg(long, value_enum, default_value_t = Tracking::Poll, help_heading = "Load")]
    pub decisions: Tracking,

    /// How long to wait for the remaining decisions once every buyer has been
    /// answered.
    #[arg(long, value_name = "SECS", default_value_t = 60, help_heading = "Load",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub decision_timeout_secs: u64,

    /// Maximum number of decision long-polls (`GET /v1/orders/{id}?wait=`) in
    /// flight at once (--decisions poll).
    #[arg(long, value_name = "P", default_value_t = 512, help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub poll_concurrency: u32,

    #[command(flatten)]
    pub requests: RequestArgs,

    /// Also write the report, checks included, as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Load")]
    pub json_out: Option<PathBuf>,

    /// Send each buyer's first attempt to every API of --api-url at the same
    /// moment (same key, same body); every 2xx must name the same order.
    /// Needs at least two URLs.
    #[arg(long, help_heading = "Load")]
    pub same_key_to_every_api: bool,
}

/// The row-locking comparison (`--baseline`).
#[derive(Debug, Clone, Args)]
pub struct BaselineArgs {
    /// After the checkline run, run the same load against an in-process
    /// row-locking implementation of the order endpoint and compare.
    #[arg(long, help_heading = "Baseline")]
    pub baseline: bool,

    /// PostgreSQL connections of the baseline's pool.
    #[arg(long, value_name = "N", default_value_t = 32, help_heading = "Baseline",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub baseline_pool: u32,
}

#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Initial stock of the product created for the sale.
    #[arg(long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub stock: u64,

    /// Per-customer limit set on the product (none if omitted).
    #[arg(long, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_per_customer: Option<u32>,

    #[command(flatten)]
    pub baseline: BaselineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HotProductArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Initial stock of the product [default: buyers x quantity, so that it
    /// never sells out].
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub stock: Option<u64>,

    #[command(flatten)]
    pub baseline: BaselineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ManyProductsArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Number of products the orders are spread over (uniformly at random).
    #[arg(long, value_name = "P", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,

    /// Initial stock of each product [default: buyers x quantity, so that
    /// none sells out].
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub stock: Option<u64>,

    #[command(flatten)]
    pub baseline: BaselineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SoldOutStormArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Stock of the product, sold out (by as many orders of quantity 1)
    /// before the storm.
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub stock: u64,

    #[command(flatten)]
    pub baseline: BaselineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CartArgs {
    /// Buyers; each checks out one cart.
    #[arg(long, value_name = "N", default_value_t = CART_BUYERS, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub buyers: u32,

    /// Carts per customer: buyer i is customer i / K, so that a customer's
    /// carts meet on the per-customer limits.
    #[arg(long, value_name = "K", default_value_t = 2, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub carts_per_customer: u32,

    /// Products the carts are drawn from.
    #[arg(long, value_name = "P", default_value_t = 20, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,

    /// Initial stock of each product (small, so that carts compete).
    #[arg(long, value_name = "S", default_value_t = 10, help_heading = "Carts",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub stock: u64,

    /// Most lines of a cart: each cart has 1..=L distinct products.
    #[arg(long, value_name = "L", default_value_t = 3, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_lines: u32,

    /// Most units of a line: each line orders 1..=Q.
    #[arg(long, value_name = "Q", default_value_t = 2, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_quantity: u32,

    /// How many of the products get a per-customer limit (the first ones).
    #[arg(long, value_name = "N", default_value_t = 5, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub limited_products: u32,

    /// The limit set on those products.
    #[arg(long, value_name = "M", default_value_t = 2, help_heading = "Carts",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_per_customer: u32,

    /// Fraction of carts sent with `reserve_secs` (hold, then pay).
    #[arg(long, value_name = "F", default_value_t = 0.5, help_heading = "Reservations",
          value_parser = parse_fraction)]
    pub reserve_fraction: f64,

    /// `reserve_secs` of those carts.
    #[arg(long, value_name = "SECS", default_value_t = 30, help_heading = "Reservations",
          value_parser = clap::value_parser!(u32).range(30..=3_600))]
    pub reserve_secs: u32,

    /// Of the reserved carts, the fraction confirmed.
    #[arg(long, value_name = "F", default_value_t = 0.5, help_heading = "Reservations",
          value_parser = parse_fraction)]
    pub confirm_fraction: f64,

    /// Of the reserved carts, the fraction cancelled.
    #[arg(long, value_name = "F", default_value_t = 0.2, help_heading = "Reservations",
          value_parser = parse_fraction)]
    pub cancel_fraction: f64,

    /// Of the reserved carts, the fraction sent confirm and cancel at the
    /// same moment (exactly one may win). The rest are abandoned.
    #[arg(long, value_name = "F", default_value_t = 0.1, help_heading = "Reservations",
          value_parser = parse_fraction)]
    pub race_fraction: f64,

    /// Wait until every abandoned reservation has expired, then try to
    /// confirm each one (it must stay expired), before checking.
    #[arg(long, help_heading = "Reservations")]
    pub wait_expiry: bool,

    /// --wait-expiry: longest wait for the expiries [default: reserve-secs + 60].
    #[arg(long, value_name = "SECS", help_heading = "Reservations",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub expiry_timeout_secs: Option<u64>,

    /// How late past `reserved_until` an order may still be `reserved`
    /// (the expirer's bound) before the checks call it overdue.
    #[arg(long, value_name = "SECS", default_value_t = 5, help_heading = "Reservations",
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub expiry_bound_secs: u64,

    /// Virtual users: carts in progress at once (submit, wait for the
    /// decision, confirm or cancel).
    #[arg(long, value_name = "C", default_value_t = DEFAULT_CONCURRENCY, help_heading = "Load",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Longest wait for one cart's decision.
    #[arg(long, value_name = "SECS", default_value_t = 60, help_heading = "Load",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub decision_timeout_secs: u64,

    /// Longest wait, once every buyer is done, for the queues to drain (no
    /// pending order, held unit, unsettled line or returning unit).
    #[arg(long, value_name = "SECS", default_value_t = 60, help_heading = "Load",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub drain_timeout_secs: u64,

    #[command(flatten)]
    pub requests: RequestArgs,

    /// Also write the report, checks included, as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Load")]
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// Reader tasks, each alternating `GET /v1/products/{id}` and
    /// `GET /v1/products?limit=50` (the page that holds the product)
    /// [default: 128].
    #[arg(long, value_name = "N", help_heading = "Reads",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub readers: Option<u32>,

    /// How long the readers read and the orders arrive.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_DURATION_SECS, help_heading = "Reads",
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration_secs: u64,

    /// Orders of quantity 1 per second on the product, open loop
    /// [default: 5000].
    #[arg(long, value_name = "R", help_heading = "Orders",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub order_rate: Option<u32>,

    /// Readers only, no orders: the read load measured alone.
    #[arg(long, conflicts_with = "orders_only", help_heading = "Reads")]
    pub reads_only: bool,

    /// Orders only, no readers: the order load measured alone.
    #[arg(long, help_heading = "Orders")]
    pub orders_only: bool,

    /// The freshness bound checked, in milliseconds: a read at time t must
    /// show the product as PostgreSQL had it at some instant >= t - bound.
    #[arg(long, value_name = "MS", env = "CHECKLINE_CATALOG_FRESH_MS",
          default_value_t = DEFAULT_FRESH_MS, help_heading = "Reads",
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub fresh_ms: u64,

    /// Most order submissions outstanding at once; an order due while the
    /// cap is reached is not sent and counts as dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT, help_heading = "Orders",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// How decisions are learnt: db (watch PostgreSQL; adds no HTTP load
    /// beside the reads) or poll (long-poll each accepted order).
    #[arg(long, value_enum, default_value_t = Tracking::Db, help_heading = "Orders")]
    pub decisions: Tracking,

    /// --decisions poll: most long-polls in flight at once.
    #[arg(long, value_name = "P", default_value_t = 512, help_heading = "Orders",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub poll_concurrency: u32,

    /// How long to wait for the remaining decisions once every order has
    /// been answered.
    #[arg(long, value_name = "SECS", default_value_t = 60, help_heading = "Orders",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub decision_timeout_secs: u64,

    #[command(flatten)]
    pub requests: RequestArgs,

    /// Also write the report, checks included, as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Load")]
    pub json_out: Option<PathBuf>,
}

/// The `read` scenario, validated.
#[derive(Debug, Clone, Serialize)]
pub struct ReadSettings {
    /// Reader tasks; 0 with `--orders-only`.
    pub readers: usize,
    #[serde(serialize_with = "serialize_secs", rename = "duration_secs")]
    pub duration: Duration,
    /// Orders per second; `None` with `--reads-only`.
    pub order_rate: Option<u32>,
    /// Orders in the run: rate x duration (0 with `--reads-only`).
    pub orders: u32,
    /// Initial stock of the product: twice the orders and a margin, so that
    /// it never sells out.
    pub stock: u64,
    /// The freshness bound checked.
    #[serde(serialize_with = "serialize_ms", rename = "fresh_ms")]
    pub fresh: Duration,
    pub max_in_flight: usize,
    pub decisions: Tracking,
    pub poll_concurrency: usize,
    #[serde(serialize_with = "serialize_secs", rename = "decision_timeout_secs")]
    pub decision_timeout: Duration,
    #[serde(flatten)]
    pub requests: Requests,
    #[serde(skip)]
    pub json_out: Option<PathBuf>,
}

fn serialize_ms<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

impl ReadSettings {
    pub fn from_args(args: &ReadArgs) -> Result<Self> {
        if args.reads_only && args.order_rate.is_some() {
            bail!("--order-rate is not used with --reads-only (no orders are sent)");
        }
        if args.orders_only && args.readers.is_some() {
            bail!("--readers is not used with --orders-only (nothing is read)");
        }
        let readers = if args.orders_only {
            0
        } else {
            args.readers.unwrap_or(DEFAULT_READERS)
        };
        let order_rate = (!args.reads_only).then(|| args.order_rate.unwrap_or(DEFAULT_ORDER_RATE));
        let orders = order_rate.map_or(0, |rate| schedule::requests_for(rate, args.duration_secs));
        if orders > MAX_BUYERS {
            bail!(
                "--order-rate x --duration-secs = {orders} orders; at most {MAX_BUYERS} \
                 are supported (lower one of them)"
            );
        }
        // Twice the orders: the product must never sell out, whatever the
        // retries; the margin keeps a reads-only run's stock off zero.
        const _: () = assert!(2 * MAX_BUYERS + READ_STOCK_MARGIN <= MAX_STOCK);
        let stock = orders * 2 + READ_STOCK_MARGIN;
        Ok(Self {
            readers: to_usize(readers),
            duration: Duration::from_secs(args.duration_secs),
            order_rate,
            orders: u32::try_from(orders).unwrap_or(u32::MAX),
            stock,
            fresh: Duration::from_millis(args.fresh_ms),
            max_in_flight: to_usize(args.max_in_flight),
            decisions: args.decisions,
            poll_concurrency: to_usize(args.poll_concurrency),
            decision_timeout: Duration::from_secs(args.decision_timeout_secs),
            requests: Requests::from(&args.requests),
            json_out: args.json_out.clone(),
        })
    }

    /// Connections the HTTP client should keep: a reader each, and every
    /// submission and poll that may be in flight at once.
    pub fn http_pool_size(&self) -> usize {
        let orders = if self.order_rate.is_some() {
            let polls = match self.decisions {
                Tracking::Poll => self.poll_concurrency,
                Tracking::Db | Tracking::Synchronous => 0,
            };
            self.max_in_flight.saturating_add(polls)
        } else {
            0
        };
        self.readers.saturating_add(orders).max(1)
    }
}

/// A fraction between 0 and 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

/// What a reserved cart's buyer does once the reservation is made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReservedActions {
    pub confirm: f64,
    pub cancel: f64,
    pub race: f64,
}

impl ReservedActions {
    /// The part left to expire.
    pub fn abandon(&self) -> f64 {
        (1.0 - self.confirm - self.cancel - self.race).max(0.0)
    }
}

/// The `cart` scenario, validated.
#[derive(Debug, Clone, Serialize)]
pub struct CartSettings {
    pub buyers: u32,
    pub carts_per_customer: u32,
    pub products: u32,
    pub stock: u64,
    pub max_lines: u32,
    pub max_quantity: u32,
    pub limited_products: u32,
    pub max_per_customer: u32,
    pub reserve_fraction: f64,
    pub reserve_secs: u32,
    pub actions: ReservedActions,
    pub wait_expiry: bool,
    #[serde(serialize_with = "serialize_secs", rename = "expiry_timeout_secs")]
    pub expiry_timeout: Duration,
    #[serde(serialize_with = "serialize_secs", rename = "expiry_bound_secs")]
    pub expiry_bound: Duration,
    pub concurrency: usize,
    #[serde(serialize_with = "serialize_secs", rename = "decision_timeout_secs")]
    pub decision_timeout: Duration,
    #[serde(serialize_with = "serialize_secs", rename = "drain_timeout_secs")]
    pub drain_timeout: Duration,
    #[serde(flatten)]
    pub requests: Requests,
    #[serde(skip)]
    pub json_out: Option<PathBuf>,
}

fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

impl CartSettings {
    pub fn from_args(args: &CartArgs) -> Result<Self> {
        if args.limited_products > args.products {
            bail!(
                "--limited-products {} exceeds --products {}",
                args.limited_products,
                args.products
            );
        }
        let actions = ReservedActions {
            confirm: args.confirm_fraction,
            cancel: args.cancel_fraction,
            race: args.race_fraction,
        };
        let planned = actions.confirm + actions.cancel + actions.race;
        if planned > 1.0 + 1e-9 {
            bail!(
                "--confirm-fraction + --cancel-fraction + --race-fraction = {planned}; \
                 they share the reserved carts, so at most 1"
            );
        }
        if args.expiry_timeout_secs.is_some() && !args.wait_expiry {
            bail!("--expiry-timeout-secs is only used with --wait-expiry");
        }
        let expiry_timeout = Duration::from_secs(
            args.expiry_timeout_secs
                .unwrap_or(u64::from(args.reserve_secs) + 60),
        );
        Ok(Self {
            buyers: args.buyers,
            carts_per_customer: args.carts_per_customer,
            products: args.products,
            stock: args.stock,
            max_lines: args.max_lines.min(args.products),
            max_quantity: args.max_quantity,
            limited_products: args.limited_products,
            max_per_customer: args.max_per_customer,
            reserve_fraction: args.reserve_fraction,
            reserve_secs: args.reserve_secs,
            actions,
            wait_expiry: args.wait_expiry,
            expiry_timeout,
            expiry_bound: Duration::from_secs(args.expiry_bound_secs),
            concurrency: to_usize(args.concurrency),
            decision_timeout: Duration::from_secs(args.decision_timeout_secs),
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            requests: Requests::from(&args.requests),
            json_out: args.json_out.clone(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct TokensArgs {
    /// Customer tokens to print, for the customers `<PREFIX>-0` …
    /// `<PREFIX>-<N-1>`, in that order.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub customers: u32,

    /// Customer id prefix.
    #[arg(long, value_name = "PREFIX", default_value = "wrk")]
    pub prefix: String,

    /// Print one administrator token (`loadtest-admin`) instead.
    #[arg(long, conflicts_with_all = ["customers", "prefix"])]
    pub admin: bool,
}

/// Validated connection settings.
#[derive(Clone)]
pub struct Connection {
    /// The API instances, in the order given (at least one, no repeats).
    pub api_urls: Vec<Url>,
    pub jwt_secret: String,
    pub database_url: String,
}

impl std::fmt::Debug for Connection {
    // The secret and the database URL (which may hold a password) stay out of
    // debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.api_urls.iter().map(Url::as_str).collect();
        f.debug_struct("Connection")
            .field("api_urls", &urls)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn from_args(args: &ConnectionArgs) -> Result<Self> {
        let api_urls = parse_api_urls(&args.api_url)?;
        let jwt_secret = match args.jwt_secret.as_deref() {
            Some(secret) if !secret.is_empty() => secret.to_owned(),
            Some(_) => bail!("--jwt-secret (CHECKLINE_JWT_SECRET) must not be empty"),
            None => bail!(
                "--jwt-secret (or the CHECKLINE_JWT_SECRET environment variable) is required: \
                 it must be the HS256 secret the API verifies tokens with"
            ),
        };
        let database_url = parse_database_url(&args.database_url)?;
        Ok(Self {
            api_urls,
            jwt_secret,
            database_url,
        })
    }
}

/// One URL, or several separated by commas; each checked by
/// [`parse_api_url`], and none given twice.
fn parse_api_urls(raw: &str) -> Result<Vec<Url>> {
    let mut urls: Vec<Url> = Vec::new();
    for entry in raw.split(',') {
        if entry.trim().is_empty() {
            bail!("--api-url (CHECKLINE_API_URL) has an empty entry in {raw:?}");
        }
        let url = parse_api_url(entry)?;
        if urls.contains(&url) {
            bail!("--api-url (CHECKLINE_API_URL) lists {entry:?} twice");
        }
        urls.push(url);
    }
    Ok(urls)
}

fn parse_api_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw.trim())
        .with_context(|| format!("--api-url (CHECKLINE_API_URL) {raw:?} is not a valid URL"))?;
    // The load speaks plain HTTP/1.1 (no TLS is built in).
    if url.scheme() != "http" {
        bail!("--api-url (CHECKLINE_API_URL) must be an http:// URL, got {raw:?}");
    }
    if url.host_str().is_none() {
        bail!("--api-url (CHECKLINE_API_URL) {raw:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--api-url (CHECKLINE_API_URL) must not carry a query or fragment, got {raw:?}");
    }
    Ok(url)
}

fn parse_database_url(raw: &str) -> Result<String> {
    let trimmed = raw.trim();
    if !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://")) {
        // Do not echo the value: it may contain a password.
        bail!("--database-url (CHECKLINE_DATABASE_URL) must be a postgres:// or postgresql:// URL");
    }
    Ok(trimmed.to_owned())
}

/// Buyers of a closed-mode run when `--buyers` is not given.
pub const FLASH_SALE_BUYERS: u32 = 2000;
pub const HOT_PRODUCT_BUYERS: u32 = 5000;
pub const MANY_PRODUCTS_BUYERS: u32 = 5000;
pub const SOLD_OUT_STORM_BUYERS: u32 = 20_000;
pub const CART_BUYERS: u32 = 2000;
/// `read`: readers, orders per second, freshness bound, and the stock
/// kept above twice the orders.
pub const DEFAULT_READERS: u32 = 128;
pub const DEFAULT_ORDER_RATE: u32 = 5000;
pub const DEFAULT_FRESH_MS: u64 = 250;
const READ_STOCK_MARGIN: u64 = 1000;
/// Closed mode's virtual users when `--concurrency` is not given.
pub const DEFAULT_CONCURRENCY: u32 = 256;
/// Open mode's schedule length when neither `--duration-secs` nor `--buyers`
/// is given.
pub const DEFAULT_DURATION_SECS: u64 = 10;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10_000;
const MAX_BUYERS: u64 = 10_000_000;
const MAX_STOCK: u64 = 1_000_000_000;

/// The scenarios, by their command-line names (also the report's `scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    FlashSale,
    HotProduct,
    ManyProducts,
    SoldOutStorm,
    Cart,
    Read,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::FlashSale => "flash-sale",
            Self::HotProduct => "hot-product",
            Self::ManyProducts => "many-products",
            Self::SoldOutStorm => "sold-out-storm",
            Self::Cart => "cart",
            Self::Read => "read",
        }
    }
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `concurrency` virtual users, each sending its next order when the
    /// previous one was answered.
    Closed { concurrency: usize },
    /// `rate` orders per second on a fixed schedule, at most `max_in_flight`
    /// outstanding.
    Open { rate: u32, max_in_flight: usize },
}

impl Mode {
    pub fn kind(self) -> ModeKind {
        match self {
            Self::Closed { .. } => ModeKind::Closed,
            Self::Open { .. } => ModeKind::Open,
        }
    }

    /// Most order submissions that may be in flight at once.
    pub fn max_outstanding(self) -> usize {
        match self {
            Self::Closed { concurrency } => concurrency,
            Self::Open { max_in_flight, .. } => max_in_flight,
        }
    }
}

/// The load shape in the units the engine works with.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub mode: Mode,
    pub buyers: u32,
    pub quantity: u32,
    pub tracking: Tracking,
    pub decision_timeout: Duration,
    pub poll_concurrency: usize,
    pub requests: Requests,
    pub json_out: Option<PathBuf>,
    /// `--same-key-to-every-api`: each buyer's first attempt goes to every
    /// API at once.
    pub same_key_to_every_api: bool,
}

impl LoadSettings {
    /// Validates the mode-specific flags and settles the number of buyers
    /// (`default_buyers` in closed mode unless `--buyers` is given).
    pub fn from_args(args: &LoadArgs, default_buyers: u32) -> Result<Self> {
        let (mode, buyers) = match args.mode {
            ModeKind::Closed => {
                for (given, flag) in [
                    (args.rate.is_some(), "--rate"),
                    (args.duration_secs.is_some(), "--duration-secs"),
                    (args.max_in_flight.is_some(), "--max-in-flight"),
                ] {
                    if given {
                        bail!("{flag} is only used with --mode open");
                    }
                }
                let concurrency = args.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
                (
                    Mode::Closed {
                        concurrency: to_usize(concurrency),
                    },
                    args.buyers.unwrap_or(default_buyers),
                )
            }
            ModeKind::Open => {
                if args.concurrency.is_some() {
                    bail!(
                        "--concurrency is only used with --mode closed; open mode caps \
                         outstanding requests with --max-in-flight"
                    );
                }
                let Some(rate) = args.rate else {
                    bail!("--mode open needs --rate (orders per second)");
                };
                let buyers = match args.buyers {
                    Some(buyers) => buyers,
                    None => {
                        let duration = args.duration_secs.unwrap_or(DEFAULT_DURATION_SECS);
                        let requests = schedule::requests_for(rate, duration);
                        if !(1..=MAX_BUYERS).contains(&requests) {
                            bail!(
                                "--rate {rate} x --duration-secs {duration} = {requests} buyers; \
                                 at most {MAX_BUYERS} are supported (lower one of them, or give --buyers)"
                            );
                        }
                        u32::try_from(requests).unwrap_or(u32::MAX)
                    }
                };
                let max_in_flight = args.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
                (
                    Mode::Open {
                        rate,
                        max_in_flight: to_usize(max_in_flight),
                    },
                    buyers,
                )
            }
        };
        Ok(Self {
            mode,
            buyers,
            quantity: args.quantity,
            tracking: args.decisions,
            decision_timeout: Duration::from_secs(args.decision_timeout_secs),
            poll_concurrency: to_usize(args.poll_concurrency),
            requests: Requests::from(&args.requests),
            json_out: args.json_out.clone(),
            same_key_to_every_api: args.same_key_to_every_api,
        })
    }

    /// Connections the HTTP client should keep: every submission and every
    /// poll that may be in flight at once.
    pub fn http_pool_size(&self) -> usize {
        let polls = match self.tracking {
            Tracking::Poll => self.poll_concurrency,
            Tracking::Db | Tracking::Synchronous => 0,
        };
        self.mode.max_outstanding().saturating_add(polls)
    }

    /// Units the run's orders could take at most: buyers x quantity.
    fn demand(&self) -> u64 {
        u64::from(self.buyers) * u64::from(self.quantity)
    }
}

/// `--baseline` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineSettings {
    pub pool_size: u32,
}

impl BaselineSettings {
    fn from_args(args: &BaselineArgs) -> Option<Self> {
        args.baseline.then_some(Self {
            pool_size: args.baseline_pool,
        })
    }
}

/// A scenario and everything it needs, validated.
#[derive(Debug, Clone)]
pub struct ScenarioSettings {
    pub kind: ScenarioKind,
    pub load: LoadSettings,
    /// Products created for the run.
    pub products: u32,
    /// Initial stock of each product.
    pub stock: u64,
    pub max_per_customer: Option<u32>,
    pub baseline: Option<BaselineSettings>,
}

impl ScenarioSettings {
    pub fn from_command(command: &Command) -> Result<Self> {
        match command {
            Command::FlashSale(args) => {
                let baseline = BaselineSettings::from_args(&args.baseline);
                if baseline.is_some() && args.max_per_customer.is_some() {
                    bail!(
                        "--baseline does not implement per-customer limits; \
                         leave out --max-per-customer to compare"
                    );
                }
                Ok(Self {
                    kind: ScenarioKind::FlashSale,
                    load: LoadSettings::from_args(&args.load, FLASH_SALE_BUYERS)?,
                    products: 1,
                    stock: args.stock,
                    max_per_customer: args.max_per_customer,
                    baseline,
                })
            }
            Command::HotProduct(args) => {
                let load = LoadSettings::from_args(&args.load, HOT_PRODUCT_BUYERS)?;
                let stock = never_sold_out_stock(args.stock, &load)?;
                Ok(Self {
                    kind: ScenarioKind::HotProduct,
                    load,
                    products: 1,
                    stock,
                    max_per_customer: None,
                    baseline: BaselineSettings::from_args(&args.baseline),
                })
            }
            Command::ManyProducts(args) => {
                let load = LoadSettings::from_args(&args.load, MANY_PRODUCTS_BUYERS)?;
                let stock = never_sold_out_stock(args.stock, &load)?;
                Ok(Self {
                    kind: ScenarioKind::ManyProducts,
                    load,
                    products: args.products,
                    stock,
                    max_per_customer: None,
                    baseline: BaselineSettings::from_args(&args.baseline),
                })
            }
            Command::Tokens(_) => bail!("`tokens` prints tokens; it is not a load scenario"),
            Command::Cart(_) => bail!("`cart` has its own settings (CartSettings)"),
            Command::Read(_) => bail!("`read` has its own settings (ReadSettings)"),
            Command::SoldOutStorm(args) => Ok(Self {
                kind: ScenarioKind::SoldOutStorm,
                load: LoadSettings::from_args(&args.load, SOLD_OUT_STORM_BUYERS)?,
                products: 1,
                stock: args.stock,
                max_per_customer: None,
                baseline: BaselineSettings::from_args(&args.baseline),
            }),
        }
    }
}

impl ScenarioSettings {
    /// The flags that depend on how many APIs `--api-url` lists.
    pub fn check_api_count(&self, apis: usize) -> Result<()> {
        if self.load.same_key_to_every_api {
            if apis < 2 {
                bail!(
                    "--same-key-to-every-api needs at least two APIs in --api-url \
                     (CHECKLINE_API_URL, separated by commas); {apis} given"
                );
            }
            if self.baseline.is_some() {
                bail!(
                    "--same-key-to-every-api is not used with --baseline: the baseline \
                     is one server"
                );
            }
        }
        Ok(())
    }
}

/// `--stock`, or enough for every order to go to one product.
fn never_sold_out_stock(stock: Option<u64>, load: &LoadSettings) -> Result<u64> {
    match stock {
        Some(stock) => Ok(stock),
        None => {
            let demand = load.demand();
            if demand > MAX_STOCK {
                bail!(
                    "the default stock, buyers x quantity = {demand}, exceeds {MAX_STOCK}; \
                     give --stock or fewer buyers"
                );
            }
            Ok(demand)
        }
    }
}

fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("checkline-loadtest").chain(args.iter().copied()))
    }

    fn settings(args: &[&str]) -> Result<ScenarioSettings> {
        ScenarioSettings::from_command(&parse(args)?.command)
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flash_sale_defaults() {
        let cli = parse(&["flash-sale"]).unwrap();
        let Command::FlashSale(args) = &cli.command else {
            panic!("not flash-sale: {:?}", cli.command);
        };
        assert_eq!(args.stock, 100);
        assert_eq!(args.max_per_customer, None);
        assert!(!args.baseline.baseline);
        assert_eq!(args.baseline.baseline_pool, 32);
        let load = &args.load;
        assert_eq!(load.buyers, None);
        assert_eq!(load.quantity, 1);
        assert_eq!(load.decision_timeout_secs, 60);
        assert_eq!(load.decisions, Tracking::Poll);
        assert!(load.json_out.is_none());

        let settings = ScenarioSettings::from_command(&cli.command).unwrap();
        assert_eq!(settings.kind, ScenarioKind::FlashSale);
        assert_eq!(settings.load.buyers, FLASH_SALE_BUYERS);
        assert_eq!(settings.load.mode, Mode::Closed { concurrency: 256 });
        assert_eq!(settings.load.tracking, Tracking::Poll);
        assert_eq!(settings.stock, 100);
        assert_eq!(settings.products, 1);
        assert!(settings.baseline.is_none());
        assert_eq!(settings.load.http_pool_size(), 256 + 512);
    }

    #[test]
    fn flash_sale_keeps_its_flags() {
        let settings = settings(&[
            "flash-sale",
            "--buyers",
            "300",
            "--stock",
            "40",
            "--concurrency",
            "32",
            "--quantity",
            "2",
            "--max-per-customer",
            "3",
            "--decision-timeout-secs",
            "5",
            "--poll-concurrency",
            "64",
            "--max-attempts",
            "4",
            "--max-retry-after-secs",
            "7",
            "--request-timeout-secs",
            "9",
            "--json-out",
            "out.json",
        ])
        .unwrap();
        let load = &settings.load;
        assert_eq!(load.buyers, 300);
        assert_eq!(load.mode, Mode::Closed { concurrency: 32 });
        assert_eq!(load.quantity, 2);
        assert_eq!(settings.max_per_customer, Some(3));
        assert_eq!(load.decision_timeout, Duration::from_secs(5));
        assert_eq!(load.poll_concurrency, 64);
        assert_eq!(load.requests.max_attempts, 4);
        assert_eq!(load.requests.max_retry_after, Duration::from_secs(7));
        assert_eq!(load.requests.request_timeout, Duration::from_secs(9));
        assert_eq!(
            load.json_out.as_deref(),
            Some(std::path::Path::new("out.json"))
        );
    }

    #[test]
    fn open_mode_derives_buyers_from_rate_and_duration() {
        let s = settings(&["hot-product", "--mode", "open", "--rate", "500"]).unwrap();
        assert_eq!(
            s.load.mode,
            Mode::Open {
                rate: 500,
                max_in_flight: 10_000
            }
        );
        assert_eq!(s.load.buyers, 5000, "500/s for the default 10 s");
        assert_eq!(s.stock, 5000, "never sells out: buyers x quantity");

        let s = settings(&[
            "sold-out-storm",
            "--mode",
            "open",
            "--rate",
            "40000",
            "--duration-secs",
            "3",
            "--max-in-flight",
            "500",
            "--decisions",
            "db",
        ])
        .unwrap();
        assert_eq!(s.load.buyers, 120_000);
        assert_eq!(s.load.tracking, Tracking::Db);
        assert_eq!(s.load.http_pool_size(), 500, "no polls with --decisions db");
        assert_eq!(s.stock, 10);

        // --buyers wins over rate x duration.
        let s = settings(&[
            "flash-sale",
            "--mode",
            "open",
            "--rate",
            "100",
            "--duration-secs",
            "60",
            "--buyers",
            "42",
        ])
        .unwrap();
        assert_eq!(s.load.buyers, 42);
    }

    #[test]
    fn mode_flags_must_match_the_mode() {
        for (args, needle) in [
            (
                &["flash-sale", "--rate", "10"][..],
                "--rate is only used with --mode open",
            ),
            (
                &["hot-product", "--duration-secs", "3"][..],
                "--duration-secs",
            ),
            (
                &["hot-product", "--max-in-flight", "3"][..],
                "--max-in-flight",
            ),
            (&["hot-product", "--mode", "open"][..], "needs --rate"),
            (
                &[
                    "hot-product",
                    "--mode",
                    "open",
                    "--rate",
                    "5",
                    "--concurrency",
                    "3",
                ][..],
                "--concurrency is only used with --mode closed",
            ),
            (
                &[
                    "hot-product",
                    "--mode",
                    "open",
                    "--rate",
                    "1000000",
                    "--duration-secs",
                    "60",
                ][..],
                "at most 10000000",
            ),
        ] {
            let err = settings(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn scenario_defaults() {
        let hot = settings(&["hot-product", "--quantity", "3"]).unwrap();
        assert_eq!(hot.load.buyers, HOT_PRODUCT_BUYERS);
        assert_eq!(hot.stock, u64::from(HOT_PRODUCT_BUYERS) * 3);

        let many = settings(&["many-products", "--buyers", "1000"]).unwrap();
        assert_eq!(many.products, 100);
        assert_eq!(many.stock, 1000);
        assert!(many.baseline.is_none());
        let many = settings(&["many-products", "--products", "7", "--stock", "5"]).unwrap();
        assert_eq!((many.products, many.stock), (7, 5));

        let storm = settings(&["sold-out-storm", "--baseline", "--baseline-pool", "8"]).unwrap();
        assert_eq!(storm.load.buyers, SOLD_OUT_STORM_BUYERS);
        assert_eq!(storm.stock, 10);
        assert_eq!(storm.baseline, Some(BaselineSettings { pool_size: 8 }));

        let too_much = settings(&["hot-product", "--buyers", "10000000", "--quantity", "101"]);
        assert!(too_much.is_err(), "quantity range");
        // The largest demand the flags allow is exactly the largest stock.
        let max = settings(&["hot-product", "--buyers", "10000000", "--quantity", "100"]).unwrap();
        assert_eq!(max.stock, 1_000_000_000);
    }

    fn cart(args: &[&str]) -> Result<CartSettings> {
        let cli = parse(&[&["cart"], args].concat())?;
        let Command::Cart(args) = &cli.command else {
            panic!("not cart: {:?}", cli.command);
        };
        CartSettings::from_args(args)
    }

    #[test]
    fn cart_defaults_and_flags() {
        let s = cart(&[]).unwrap();
        assert_eq!((s.buyers, s.products, s.stock), (2000, 20, 10));
        assert_eq!((s.max_lines, s.max_quantity), (3, 2));
        assert_eq!((s.limited_products, s.max_per_customer), (5, 2));
        assert_eq!((s.reserve_fraction, s.reserve_secs), (0.5, 30));
        assert!((s.actions.abandon() - 0.2).abs() < 1e-9, "{:?}", s.actions);
        assert!(!s.wait_expiry);
        assert_eq!(s.expiry_timeout, Duration::from_secs(90));
        assert_eq!(s.concurrency, 256);
        assert!(settings(&["cart"]).is_err(), "cart has its own settings");

        let s = cart(&[
            "--buyers",
            "50",
            "--products",
            "2",
            "--stock",
            "3",
            "--max-lines",
            "5",
            "--limited-products",
            "0",
            "--reserve-fraction",
            "1",
            "--confirm-fraction",
            "1",
            "--cancel-fraction",
            "0",
            "--race-fraction",
            "0",
            "--wait-expiry",
            "--expiry-timeout-secs",
            "200",
        ])
        .unwrap();
        assert_eq!(s.max_lines, 2, "no more lines than products");
        assert_eq!(s.actions.abandon(), 0.0);
        assert!(s.wait_expiry);
        assert_eq!(s.expiry_timeout, Duration::from_secs(200));

        for (args, needle) in [
            (
                &["--confirm-fraction", "0.8", "--cancel-fraction", "0.3"][..],
                "at most 1",
            ),
            (
                &["--products", "3", "--limited-products", "4"][..],
                "--limited-products",
            ),
            (&["--expiry-timeout-secs", "10"][..], "--wait-expiry"),
        ] {
            let err = cart(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        for (args, flag) in [
            (&["--reserve-fraction", "1.5"][..], "--reserve-fraction"),
            (&["--reserve-secs", "29"][..], "--reserve-secs"),
            (&["--max-lines", "21"][..], "--max-lines"),
            (&["--buyers", "0"][..], "--buyers"),
        ] {
            let err = parse(&[&["cart"], args].concat()).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    fn read(args: &[&str]) -> Result<ReadSettings> {
        let cli = parse(&[&["read"], args].concat())?;
        let Command::Read(args) = &cli.command else {
            panic!("not read: {:?}", cli.command);
        };
        ReadSettings::from_args(args)
    }

    #[test]
    fn read_defaults() {
        let s = read(&[]).unwrap();
        assert_eq!(s.readers, 128);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.order_rate, Some(5000));
        assert_eq!(s.orders, 50_000);
        assert_eq!(s.stock, 2 * 50_000 + 1000, "never sells out");
        assert_eq!(s.fresh, Duration::from_millis(250));
        assert_eq!(s.decisions, Tracking::Db, "no polls beside the reads");
        assert_eq!(s.max_in_flight, 10_000);
        assert_eq!(s.http_pool_size(), 128 + 10_000);
        assert!(settings(&["read"]).is_err(), "read has its own settings");
        assert_eq!(ScenarioKind::Read.name(), "read");
    }

    #[test]
    fn read_flags() {
        let s = read(&[
            "--readers",
            "4",
            "--duration-secs",
            "5",
            "--order-rate",
            "1000",
            "--fresh-ms",
            "100",
            "--decisions",
            "poll",
            "--poll-concurrency",
            "10",
        ])
        .unwrap();
        assert_eq!((s.readers, s.orders, s.stock), (4, 5000, 11_000));
        assert_eq!(s.fresh, Duration::from_millis(100));
        assert_eq!(s.http_pool_size(), 4 + 10_000 + 10);

        let alone = read(&["--reads-only"]).unwrap();
        assert_eq!((alone.order_rate, alone.orders), (None, 0));
        assert_eq!(alone.stock, 1000, "the margin keeps it off zero");
        assert_eq!(alone.http_pool_size(), 128);
        let alone = read(&["--orders-only"]).unwrap();
        assert_eq!((alone.readers, alone.order_rate), (0, Some(5000)));
    }

    #[test]
    fn read_flags_that_conflict() {
        let err = parse(&["read", "--reads-only", "--orders-only"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--orders-only"), "{err}");
        for (args, needle) in [
            (
                &["--reads-only", "--order-rate", "10"][..],
                "--order-rate is not used with --reads-only",
            ),
            (
                &["--orders-only", "--readers", "3"][..],
                "--readers is not used with --orders-only",
            ),
            (
                &["--order-rate", "1000000", "--duration-secs", "3600"][..],
                "at most 10000000",
            ),
        ] {
            let err = read(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        for (args, flag) in [
            (&["read", "--readers", "0"][..], "--readers"),
            (&["read", "--order-rate", "0"][..], "--order-rate"),
            (&["read", "--duration-secs", "0"][..], "--duration-secs"),
            (&["read", "--fresh-ms=-1"][..], "--fresh-ms"),
            (&["read", "--decisions", "synchronous"][..], "--decisions"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn baseline_is_offered_where_it_applies() {
        let err = settings(&["flash-sale", "--baseline", "--max-per-customer", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-per-customer"), "{err}");
        let s = settings(&["flash-sale", "--baseline"]).unwrap();
        assert_eq!(s.baseline, Some(BaselineSettings { pool_size: 32 }));
    }

    #[test]
    fn many_products_compares_with_the_baseline_over_the_same_products() {
        let s = settings(&[
            "many-products",
            "--products",
            "100",
            "--buyers",
            "2000",
            "--baseline",
            "--baseline-pool",
            "16",
        ])
        .unwrap();
        assert_eq!(s.baseline, Some(BaselineSettings { pool_size: 16 }));
        assert_eq!((s.products, s.stock), (100, 2000), "none sells out");
        assert!(settings(&["many-products"]).unwrap().baseline.is_none());
        let err = parse(&["many-products", "--baseline-pool", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--baseline-pool"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        for (args, flag) in [
            (&["flash-sale", "--buyers", "0"][..], "--buyers"),
            (&["flash-sale", "--concurrency", "0"][..], "--concurrency"),
            (&["flash-sale", "--quantity", "101"][..], "--quantity"),
            (
                &["flash-sale", "--max-per-customer", "0"][..],
                "--max-per-customer",
            ),
            (&["flash-sale", "--stock", "1000000001"][..], "--stock"),
            (&["flash-sale", "--stock=-1"][..], "--stock"),
            (
                &["flash-sale", "--decision-timeout-secs", "0"][..],
                "--decision-timeout-secs",
            ),
            (&["hot-product", "--rate", "0"][..], "--rate"),
            (
                &["hot-product", "--max-in-flight", "0"][..],
                "--max-in-flight",
            ),
            (&["hot-product", "--mode", "sideways"][..], "--mode"),
            (&["hot-product", "--decisions", "sse"][..], "--decisions"),
            // The baseline's tracking is not a choice for checkline.
            (
                &["hot-product", "--decisions", "synchronous"][..],
                "--decisions",
            ),
            (&["many-products", "--products", "0"][..], "--products"),
            (&["sold-out-storm", "--stock", "1000001"][..], "--stock"),
            (
                &["sold-out-storm", "--baseline-pool", "0"][..],
                "--baseline-pool",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn connection_flags_may_follow_the_subcommand() {
        let cli = parse(&[
            "flash-sale",
            "--api-url",
            "http://api:9000/",
            "--jwt-secret",
            "s3cret",
        ])
        .unwrap();
        let conn = Connection::from_args(&cli.connection).unwrap();
        let urls: Vec<&str> = conn.api_urls.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://api:9000/"]);
        assert_eq!(conn.jwt_secret, "s3cret");
    }

    fn connection_args(api_url: &str, secret: Option<&str>, db: &str) -> ConnectionArgs {
        ConnectionArgs {
            api_url: api_url.to_owned(),
            jwt_secret: secret.map(str::to_owned),
            database_url: db.to_owned(),
        }
    }

    #[test]
    fn connection_validation_names_the_setting() {
        let db = "postgres://postgres@127.0.0.1:5432/checkline";
        let missing = Connection::from_args(&connection_args("http://x", None, db)).unwrap_err();
        assert!(missing.to_string().contains("CHECKLINE_JWT_SECRET"));
        let empty = Connection::from_args(&connection_args("http://x", Some(""), db)).unwrap_err();
        assert!(empty.to_string().contains("--jwt-secret"));
        let scheme = Connection::from_args(&connection_args("ftp://x", Some("k"), db)).unwrap_err();
        assert!(scheme.to_string().contains("--api-url"));
        let tls = Connection::from_args(&connection_args("https://x", Some("k"), db)).unwrap_err();
        assert!(tls.to_string().contains("http://"), "{tls}");
        let garbage =
            Connection::from_args(&connection_args("not a url", Some("k"), db)).unwrap_err();
        assert!(garbage.to_string().contains("--api-url"));
        let bad_db =
            Connection::from_args(&connection_args("http://x", Some("k"), "mysql://u:pw@h/db"))
                .unwrap_err();
        let message = bad_db.to_string();
        assert!(message.contains("--database-url"));
        assert!(!message.contains("pw"), "the password must not be echoed");
    }

    #[test]
    fn api_url_takes_several_urls_separated_by_commas() {
        let db = "postgres://postgres@127.0.0.1:5432/checkline";
        let urls = |raw: &str| -> Result<Vec<String>> {
            let conn = Connection::from_args(&connection_args(raw, Some("k"), db))?;
            Ok(conn.api_urls.iter().map(|url| url.to_string()).collect())
        };
        assert_eq!(urls("http://a:8080").unwrap(), ["http://a:8080/"]);
        assert_eq!(
            urls("http://a:8080, http://b:8081/prefix").unwrap(),
            ["http://a:8080/", "http://b:8081/prefix"],
            "spaces around the commas are ignored; the order is kept"
        );
        assert_eq!(
            urls("http://b,http://a").unwrap(),
            ["http://b/", "http://a/"]
        );

        // Every error names the setting and the bad entry.
        for (raw, needle) in [
            (
                "http://a,ftp://b",
                "must be an http:// URL, got \"ftp://b\"",
            ),
            ("http://a,not a url", "\"not a url\" is not a valid URL"),
            (
                "http://a,,http://b",
                "has an empty entry in \"http://a,,http://b\"",
            ),
            ("http://a,", "has an empty entry"),
            (
                "http://a,http://b?x=1",
                "must not carry a query or fragment, got \"http://b?x=1\"",
            ),
            ("http://a:80,http://a/", "lists \"http://a/\" twice"),
        ] {
            let err = urls(raw).unwrap_err().to_string();
            assert!(
                err.starts_with("--api-url (CHECKLINE_API_URL)"),
                "{raw}: {err}"
            );
            assert!(err.contains(needle), "{raw}: {err}");
        }

        // The environment variable takes the same list.
        let cli = Cli::try_parse_from([
            "checkline-loadtest",
            "flash-sale",
            "--api-url",
            "http://a:1,http://b:2",
        ])
        .unwrap();
        assert_eq!(cli.connection.api_url, "http://a:1,http://b:2");
    }

    #[test]
    fn same_key_to_every_api_needs_two_apis() {
        let s = settings(&["flash-sale", "--same-key-to-every-api"]).unwrap();
        assert!(s.load.same_key_to_every_api);
        assert!(s.check_api_count(2).is_ok());
        assert!(s.check_api_count(3).is_ok());
        let err = s.check_api_count(1).unwrap_err().to_string();
        assert!(
            err.contains("--same-key-to-every-api needs at least two APIs"),
            "{err}"
        );
        assert!(err.contains("--api-url"), "{err}");

        let plain = settings(&["flash-sale"]).unwrap();
        assert!(!plain.load.same_key_to_every_api);
        assert!(plain.check_api_count(1).is_ok());
        assert!(plain.check_api_count(2).is_ok());

        let with_baseline =
            settings(&["hot-product", "--same-key-to-every-api", "--baseline"]).unwrap();
        let err = with_baseline.check_api_count(2).unwrap_err().to_string();
        assert!(err.contains("--baseline"), "{err}");
        // A flag of the load, not of the cart scenario.
        assert!(parse(&["cart", "--same-key-to-every-api"]).is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let conn = Connection::from_args(&connection_args(
            "http://x",
            Some("topsecret"),
            "postgres://u:pw@h/db",
        ))
        .unwrap();
        let debug = format!("{conn:?}");
        assert!(!debug.contains("topsecret"));
        assert!(!debug.contains("pw@"));
    }
}
