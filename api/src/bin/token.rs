//! `checkline-token`: mints an HS256 bearer token for local use, signed with
//! `CHECKLINE_JWT_SECRET`. Prints only the token.
//!
//! ```text
//! checkline-token --sub alice --role customer --ttl-secs 3600
//! ```

use anyhow::{bail, Context};
use checkline_shared::domain::CustomerId;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Mint a checkline bearer token for local use")]
struct Args {
    /// The subject (customer id): 1-64 chars of [A-Za-z0-9_.@-].
    #[arg(long)]
    sub: String,
    /// A role to grant: customer or admin. Repeat for both.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret =
        std::env::var("CHECKLINE_JWT_SECRET").context("CHECKLINE_JWT_SECRET must be set")?;
    if secret.len() < checkline_api::config::JWT_SECRET_MIN_BYTES {
        bail!(
            "CHECKLINE_JWT_SECRET must be at least {} bytes",
            checkline_api::config::JWT_SECRET_MIN_BYTES
        );
    }
    if CustomerId::parse(&args.sub).is_none() {
        bail!("--sub must be 1-64 characters of [A-Za-z0-9_.@-]");
    }
    for role in &args.roles {
        if role != "customer" && role != "admin" {
            bail!("--role must be customer or admin, got {role:?}");
        }
    }
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    let token = checkline_api::auth::mint(secret.as_bytes(), &args.sub, &roles, args.ttl_secs)?;
    println!("{token}");
    Ok(())
}
