//! Test support: each integration test gets a fresh PostgreSQL database and
//! its own NATS subject/stream prefix and Redis key prefix, on the real
//! servers named by the same `CHECKLINE_*` variables the binaries read.

use sqlx::PgPool;
use uuid::Uuid;

use checkline_shared::config::{CommonConfig, Env};
use checkline_shared::db::{self, PoolSettings};

/// One isolated test environment.
pub struct TestEnv {
    pub config: CommonConfig,
    /// `CHECKLINE_REDIS_URL` as the tests were given it, passed on to the
    /// API under test (the API's own default when unset).
    pub redis_url: Option<String>,
    pub pool: PgPool,
    server_url: String,
    database: String,
}

impl TestEnv {
    /// Creates `checkline_test_<random>` on the configured server, migrates it,
    /// and picks a unique prefix. Panics with a clear message when a
    /// dependency is missing: run the tests through `scripts/test.sh`.
    pub async fn new(partitions: u32) -> Self {
        let env = Env::from_process();
        let base = CommonConfig::from_env(&env).expect("CHECKLINE_* configuration");
        let suffix = Uuid::new_v4().simple().to_string();
        let database = format!("checkline_test_{}", &suffix[..12]);
        let server_url = base.database_url.clone();
        let config = CommonConfig {
            database_url: db::with_database(&server_url, &database),
            prefix: format!("t{}", &suffix[..12]),
            partitions,
            // JetStream reserves a stream's max_bytes up front; many test
            // streams must fit in one server's file store.
            stream_max_bytes: 16 * 1024 * 1024,
            ..base
        };
        let pool = db::connect_and_migrate(
            &config.database_url,
            PoolSettings {
                max_connections: 8,
                acquire_timeout: std::time::Duration::from_secs(10),
                startup_timeout: std::time::Duration::from_secs(10),
            },
        )
        .await
        .expect("PostgreSQL at CHECKLINE_DATABASE_URL (run the tests with scripts/test.sh)");
        db::ensure_partitions(&pool, partitions)
            .await
            .expect("partition cursors");
        Self {
            config,
            redis_url: env.raw("CHECKLINE_REDIS_URL").map(str::to_owned),
            pool,
            server_url,
            database,
        }
    }

    /// A process environment for a binary under test, pointing at this
    /// environment's database and prefix.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (
                "CHECKLINE_DATABASE_URL".into(),
                self.config.database_url.clone(),
            ),
            ("CHECKLINE_NATS_URL".into(), self.config.nats_url.clone()),
            ("CHECKLINE_PREFIX".into(), self.config.prefix.clone()),
            (
                "CHECKLINE_PARTITIONS".into(),
                self.config.partitions.to_string(),
            ),
            (
                "CHECKLINE_STREAM_MAX_BYTES".into(),
                self.config.stream_max_bytes.to_string(),
            ),
        ];
        if let Some(url) = &self.redis_url {
            vars.push(("CHECKLINE_REDIS_URL".into(), url.clone()));
        }
        vars
    }

    /// Drops the database and the test's stream. Best effort.
    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Ok(client) = async_nats::connect(self.config.nats_url.as_str()).await {
            let js = async_nats::jetstream::new(client);
            let subjects = checkline_shared::subjects::Subjects::new(&self.config.prefix);
            for name in [
                subjects.stream_name(),
                subjects.dead_letter_stream(),
                format!("KV_{}", subjects.lease_bucket()),
            ] {
                let _ = js.delete_stream(name).await;
            }
        }
        let admin = db::with_database(&self.server_url, "postgres");
        if let Ok(pool) = PgPool::connect(&admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .execute(&pool)
            .await;
            pool.close().await;
        }
    }
}
