//! Command line and environment configuration.
//!
//! Numeric flags are range-checked by clap, so a bad value is reported with the
//! flag's name. Settings that clap cannot check on its own (the JWT secret is
//! required but may come from the environment, URLs must be well formed) are
//! validated by [`Connection::from_args`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use reqwest::Url;

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
    /// Base URL of the checkline API.
    #[arg(
        long,
        env = "CHECKLINE_API_URL",
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

    /// PostgreSQL URL used for the invariant checks.
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
}

#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    /// Number of buyers (distinct customers, one order each).
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub buyers: u32,

    /// Initial stock of the product created for the sale.
    #[arg(long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub stock: u64,

    /// Maximum number of order submissions in flight at once.
    #[arg(long, value_name = "C", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Quantity each buyer orders.
    #[arg(long, value_name = "Q", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub quantity: u32,

    /// Per-customer limit set on the product (none if omitted).
    #[arg(long, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_per_customer: Option<u32>,

    /// Also write the report, checks included, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,

    /// How long to wait for the remaining decisions once every buyer has been
    /// answered.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub decision_timeout_secs: u64,

    /// Maximum number of decision long-polls (`GET /v1/orders/{id}?wait=`) in
    /// flight at once.
    #[arg(long, value_name = "P", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub poll_concurrency: u32,

    /// Attempts per order submission (the first one included) when the API
    /// answers 429/503 or the connection fails; retries reuse the same
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

/// Validated connection settings.
#[derive(Clone)]
pub struct Connection {
    pub api_url: Url,
    pub jwt_secret: String,
    pub database_url: String,
}

impl std::fmt::Debug for Connection {
    // The secret and the database URL (which may hold a password) stay out of
    // debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("api_url", &self.api_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn from_args(args: &ConnectionArgs) -> Result<Self> {
        let api_url = parse_api_url(&args.api_url)?;
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
            api_url,
            jwt_secret,
            database_url,
        })
    }
}

fn parse_api_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw.trim())
        .with_context(|| format!("--api-url (CHECKLINE_API_URL) {raw:?} is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--api-url (CHECKLINE_API_URL) must be an http:// or https:// URL, got {raw:?}");
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

/// Flash-sale settings in the units the scenario works with.
#[derive(Debug, Clone)]
pub struct FlashSaleSettings {
    pub buyers: u32,
    pub stock: u64,
    pub concurrency: usize,
    pub quantity: u32,
    pub max_per_customer: Option<u32>,
    pub json_out: Option<PathBuf>,
    pub decision_timeout: Duration,
    pub poll_concurrency: usize,
    pub max_attempts: u32,
    pub max_retry_after: Duration,
    pub request_timeout: Duration,
}

impl From<&FlashSaleArgs> for FlashSaleSettings {
    fn from(args: &FlashSaleArgs) -> Self {
        Self {
            buyers: args.buyers,
            stock: args.stock,
            concurrency: to_usize(args.concurrency),
            quantity: args.quantity,
            max_per_customer: args.max_per_customer,
            json_out: args.json_out.clone(),
            decision_timeout: Duration::from_secs(args.decision_timeout_secs),
            poll_concurrency: to_usize(args.poll_concurrency),
            max_attempts: args.max_attempts,
            max_retry_after: Duration::from_secs(args.max_retry_after_secs),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
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

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flash_sale_defaults() {
        let cli = parse(&["flash-sale"]).unwrap();
        let Command::FlashSale(args) = cli.command;
        assert_eq!(args.buyers, 2000);
        assert_eq!(args.stock, 100);
        assert_eq!(args.concurrency, 256);
        assert_eq!(args.quantity, 1);
        assert_eq!(args.max_per_customer, None);
        assert_eq!(args.decision_timeout_secs, 60);
        assert!(args.json_out.is_none());
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
        assert_eq!(conn.api_url.as_str(), "http://api:9000/");
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
