//! The load generator driving two API instances of one system: buyers spread
//! over both, and with `--same-key-to-every-api` each buyer's first attempt
//! sent to both at the same moment; every invariant check of the load
//! generator must pass, the agreement of the two APIs on one order per key
//! included.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use checkline_e2e::{TestApp, SECRET};
use serde_json::Value;
use tokio::process::Command;

const BUYERS: u64 = 60;
const STOCK: u64 = 20;
/// Bound on one run of the load generator (a few seconds when healthy).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// `checkline-loadtest`, built by cargo into this test's target directory
/// (a test can only name its own package's binaries at compile time), or
/// the program `CHECKLINE_LOADTEST_BIN` names.
fn loadtest_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHECKLINE_LOADTEST_BIN") {
        return path.into();
    }
    // <target>/<profile>/deps/<this test> → <target>/<profile>/checkline-loadtest
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "checkline-loadtest", "--bin"])
        .arg("checkline-loadtest")
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    // What cargo set for this test is not the build's environment: a build
    // script that watches one of these (ring's watches CARGO_MANIFEST_DIR)
    // would be run again here, and again by the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name == "OUT_DIR"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            build.env_remove(name);
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build -p checkline-loadtest failed");
    profile_dir.join("checkline-loadtest")
}

/// Runs a flash sale of [`BUYERS`] for [`STOCK`] units against `apis` with
/// `extra` flags; returns its JSON report once it passed.
async fn flash_sale(app: &TestApp, apis: &[&str], extra: &[&str]) -> Value {
    let json_out = std::env::temp_dir().join(format!("checkline-lt-{}.json", uuid::Uuid::new_v4()));
    let run = Command::new(loadtest_binary())
        .args(["flash-sale", "--buyers", &BUYERS.to_string()])
        .args(["--stock", &STOCK.to_string(), "--concurrency", "16"])
        .args([
            "--decision-timeout-secs",
            "30",
            "--request-timeout-secs",
            "10",
        ])
        .arg("--json-out")
        .arg(&json_out)
        .args(extra)
        .env("CHECKLINE_API_URL", apis.join(","))
        .env("CHECKLINE_JWT_SECRET", SECRET)
        .env("CHECKLINE_DATABASE_URL", &app.env.config.database_url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the flash sale ends in time")
        .expect("checkline-loadtest starts");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "every check passes:\n{text}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    std::fs::remove_file(&json_out).unwrap();
    assert_eq!(report["passed"], true, "{text}");
    assert_eq!(report["api_url"], apis.join(","));
    report
}

fn api(report: &Value, index: usize) -> &Value {
    &report["apis"][index]
}

#[tokio::test]
async fn a_flash_sale_over_two_apis_keeps_one_order_per_key() {
    let mut app = TestApp::spawn().await;
    let second = app.start_api().await;
    let first = app.base.clone();
    let apis = [first.as_str(), second.as_str()];

    // Buyers spread over both: buyer i at API i mod 2.
    let spread = flash_sale(&app, &apis, &[]).await;
    assert_eq!(spread["apis"].as_array().unwrap().len(), 2);
    for (index, url) in apis.iter().enumerate() {
        assert_eq!(api(&spread, index)["url"], *url);
        let attempts = api(&spread, index)["attempts"].as_u64().unwrap();
        assert!(attempts >= BUYERS / 2, "{spread:#}");
        assert!(api(&spread, index)["accepted"].as_u64().unwrap() > 0);
    }
    assert_eq!(spread["responses"]["retries"]["failovers"], 0);
    assert!(spread["agreement"].is_null());

    // Each first attempt to both APIs at once, with one key and body.
    let same_key = flash_sale(&app, &apis, &["--same-key-to-every-api"]).await;
    let agreement = &same_key["agreement"];
    assert_eq!(agreement["buyers"], BUYERS, "{same_key:#}");
    assert_eq!(agreement["disagreements"], 0);
    // Before the product sells out, both APIs take the same request.
    assert!(
        agreement["accepted_by_every_api"].as_u64().unwrap() > 0,
        "{same_key:#}"
    );
    for index in 0..2 {
        assert!(api(&same_key, index)["attempts"].as_u64().unwrap() >= BUYERS);
        assert!(api(&same_key, index)["accepted"].as_u64().unwrap() > 0);
    }
    let checks = same_key["checks"].as_array().unwrap();
    let agreed = checks
        .iter()
        .find(|check| check["name"] == "every API names the same order for one key")
        .expect("the agreement is checked");
    assert_eq!(agreed["passed"], true);
    assert_eq!(agreed["invariant"], 2);
    // One order per key whatever the two APIs were sent: the database's view.
    let one_per_key = checks
        .iter()
        .find(|check| check["name"] == "one order per idempotency key")
        .unwrap();
    assert_eq!(one_per_key["passed"], true);
    assert_eq!(
        same_key["decisions"]["confirmed"], STOCK,
        "first come first served over both APIs"
    );

    app.shutdown().await;
}
