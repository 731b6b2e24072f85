//! Checkout 1.1 under load: buyers checking out carts of several products,
//! some reserving first and then paying, cancelling or walking away.
//!
//! - [`plan_cart`] draws buyer `i`'s cart from the run id and `i` alone
//!   (lines, quantities, whether it reserves, what it does then), so a run
//!   can be repeated with the same carts.
//! - [`checkout`] is one buyer: the `POST /v1/orders` with its lines (retried
//!   as a storefront would, same key), the long-poll for the first decision,
//!   then confirm, cancel, both at once, or nothing. Every answer is kept in
//!   a [`BuyerRecord`]: the checks judge the system by what clients saw.
//! - [`checks`] evaluates invariants 1-8 from the records and PostgreSQL
//!   ([`db`]), invariant 4 also by a [`replay`] of each product's queue;
//!   [`report`] holds the figures.

pub mod checks;
pub mod db;
pub mod replay;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use crate::buyer::{self, Answer, RetryPolicy};
use crate::cli::CartSettings;
use crate::client::{error_chain, ApiClient, CartBody, CartLine, Order, OrderStatus, Reply};
use crate::decisions::{self, Accepted};

/// Pause before asking again when a confirm or cancel finds the order not
/// decided yet (`409 order_pending`).
const PENDING_RETRY: Duration = Duration::from_millis(200);

/// What a buyer does once its cart is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// No `reserve_secs`: decided `confirmed` or `rejected` at once.
    Buy,
    /// Reserve, then confirm.
    Confirm,
    /// Reserve, then cancel.
    Cancel,
    /// Reserve, then confirm and cancel at the same moment.
    Race,
    /// Reserve and walk away: the reservation expires.
    Abandon,
}

impl Intent {
    pub fn reserves(self) -> bool {
        self != Self::Buy
    }
}

/// Buyer `index`'s cart.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCart {
    pub index: u32,
    pub customer_id: String,
    pub lines: Vec<CartLine>,
    pub intent: Intent,
}

/// Draws buyer `index`'s cart: 1..=`max_lines` distinct products, each
/// 1..=`max_quantity` units; reserved with probability `reserve_fraction`,
/// and then confirmed, cancelled, raced or abandoned by the fractions.
pub fn plan_cart(
    run_id: &str,
    index: u32,
    products: &[Uuid],
    settings: &CartSettings,
) -> PlannedCart {
    let mut rng = StdRng::seed_from_u64(seed(run_id, index));
    let most = usize::try_from(settings.max_lines)
        .unwrap_or(usize::MAX)
        .clamp(1, products.len().max(1));
    let count = rng.gen_range(1..=most);
    let lines = rand::seq::index::sample(&mut rng, products.len(), count.min(products.len()))
        .into_iter()
        .map(|product| CartLine {
            product_id: products[product],
            quantity: rng.gen_range(1..=settings.max_quantity.max(1)),
        })
        .collect();
    let intent = if rng.gen_bool(settings.reserve_fraction) {
        let draw: f64 = rng.gen();
        let actions = settings.actions;
        if draw < actions.confirm {
            Intent::Confirm
        } else if draw < actions.confirm + actions.cancel {
            Intent::Cancel
        } else if draw < actions.confirm + actions.cancel + actions.race {
            Intent::Race
        } else {
            Intent::Abandon
        }
    } else {
        Intent::Buy
    };
    PlannedCart {
        index,
        customer_id: customer_of(run_id, index, settings.carts_per_customer),
        lines,
        intent,
    }
}

/// The customer of buyer `index`: `K` consecutive buyers share one.
pub fn customer_of(run_id: &str, index: u32, carts_per_customer: u32) -> String {
    crate::auth::buyer_subject(run_id, index / carts_per_customer.max(1))
}

/// FNV-1a of the run id, mixed with the buyer's index.
fn seed(run_id: &str, index: u32) -> u64 {
    let hash = run_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash ^ (u64::from(index) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// How the `POST /v1/orders` of a cart ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// `202` (or the `200` replay): the order exists.
    Accepted {
        order_id: Uuid,
        replayed: bool,
        latency: Duration,
    },
    /// Any other HTTP answer, or 429/503 once the attempts ran out.
    Refused {
        status: u16,
        code: Option<String>,
        latency: Duration,
    },
    /// No readable answer: whether an order exists is unknown.
    Unknown { what: String },
}

/// The first decision the buyer saw (`?wait` returns at it; `reserved`
/// counts).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub rejected_product_id: Option<Uuid>,
    /// From the accept answer to the decision seen.
    pub latency: Duration,
}

/// Which call a [`ActionAnswer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Confirm,
    Cancel,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
        }
    }
}

/// The final answer to one confirm or cancel.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionAnswer {
    pub kind: ActionKind,
    /// `None`: no HTTP answer after every attempt (the call may have taken
    /// effect).
    pub status: Option<u16>,
    pub code: Option<String>,
    /// The order's status in a `200` answer.
    pub order_status: Option<OrderStatus>,
    pub latency: Duration,
    /// Sent after the reservation expired (`--wait-expiry`).
    pub late: bool,
}

impl ActionAnswer {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }

    /// No answer, or one that says nothing of the outcome (429, 5xx once
    /// the attempts ran out): the call may or may not have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        self.status
            .is_none_or(|status| status == 429 || status >= 500)
    }

    /// `"200"`, `"409 reservation_expired"`, `"no answer"`.
    pub fn label(&self) -> String {
        match (self.status, &self.code) {
            (None, _) => "no answer".to_owned(),
            (Some(status), Some(code)) => format!("{status} {code}"),
            (Some(status), None) => status.to_string(),
        }
    }
}

/// Everything one buyer saw.
#[derive(Debug, Clone)]
pub struct BuyerRecord {
    pub index: u32,
    pub customer_id: String,
    pub idempotency_key: String,
    pub lines: Vec<CartLine>,
    pub intent: Intent,
    pub submitted: Submitted,
    pub backpressure_retries: u32,
    pub network_retries: u32,
    pub seen: Option<Seen>,
    pub poll_errors: Vec<String>,
    pub actions: Vec<ActionAnswer>,
    /// When the `POST /v1/orders` was finally answered, if it was.
    pub answered_at: Option<Instant>,
    /// When the decision was seen, if it was.
    pub decided_at: Option<Instant>,
    /// When the buyer was done (its last answer).
    pub done_at: Option<Instant>,
}

impl BuyerRecord {
    pub fn order_id(&self) -> Option<Uuid> {
        match self.submitted {
            Submitted::Accepted { order_id, .. } => Some(order_id),
            _ => None,
        }
    }

    /// The first decision seen was `reserved`.
    pub fn was_reserved(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|seen| seen.status == OrderStatus::Reserved)
    }

    pub fn answers(&self, kind: ActionKind) -> impl Iterator<Item = &ActionAnswer> {
        self.actions
            .iter()
            .filter(move |answer| answer.kind == kind)
    }
}

/// What a buyer needs besides its cart.
#[derive(Clone)]
pub struct Checkout {
    pub client: ApiClient,
    pub retry: RetryPolicy,
    pub reserve_secs: u32,
    pub decision_timeout: Duration,
}

/// One buyer: submits the cart, waits for its first decision, and acts on a
/// reservation as `cart.intent` says.
pub async fn checkout(ctx: &Checkout, cart: PlannedCart, token: Arc<str>) -> BuyerRecord {
    let body = CartBody {
        lines: cart.lines.clone(),
        reserve_secs: cart.intent.reserves().then_some(ctx.reserve_secs),
    };
    let key = Uuid::new_v4().to_string();
    let home = ctx.client.home(cart.index);
    let build = |api| ctx.client.cart_request(api, &token, &key, &body);
    let sent = buyer::send(&ctx.client, home, build, ctx.retry).await;
    let mut record = BuyerRecord {
        index: cart.index,
        customer_id: cart.customer_id,
        idempotency_key: key,
        lines: cart.lines,
        intent: cart.intent,
        submitted: Submitted::Unknown {
            what: String::new(),
        },
        backpressure_retries: sent.backpressure_retries,
        network_retries: sent.network_retries,
        seen: None,
        poll_errors: Vec::new(),
        actions: Vec::new(),
        answered_at: None,
        decided_at: None,
        done_at: None,
    };
    finish(&mut record, ctx, sent.answer, sent.api, token).await;
    record.done_at = Some(Instant::now());
    record
}

/// The rest of [`checkout`] once the `POST` is answered (by API `api`, which
/// the buyer keeps using): fills `record`.
async fn finish(
    record: &mut BuyerRecord,
    ctx: &Checkout,
    answer: Answer,
    api: usize,
    token: Arc<str>,
) {
    let (order, sent_at, accepted_at) = match answer {
        Answer::Accepted {
            order,
            replayed,
            latency,
            sent_at,
            received_at,
        } => {
            record.submitted = Submitted::Accepted {
                order_id: order.id,
                replayed,
                latency,
            };
            record.answered_at = Some(received_at);
            (order, sent_at, received_at)
        }
        Answer::Refused {
            status,
            code,
            latency,
            received_at,
        } => {
            record.submitted = Submitted::Refused {
                status,
                code,
                latency,
            };
            record.answered_at = Some(received_at);
            return;
        }
        Answer::Unreadable { status, error } => {
            record.submitted = Submitted::Unknown {
                what: format!("unreadable {status}: {error}"),
            };
            return;
        }
        Answer::Unreachable { kind, error } => {
            record.submitted = Submitted::Unknown {
                what: format!("no answer ({kind}): {error}"),
            };
            return;
        }
    };

    let decided = if order.status == OrderStatus::Pending {
        let accepted = Accepted {
            order_id: order.id,
            token: Arc::clone(&token),
            accepted_at,
            sent_at,
            api,
        };
        match tokio::time::timeout(
            ctx.decision_timeout,
            decisions::await_decision(&ctx.client, &accepted),
        )
        .await
        {
            Ok(outcome) => {
                record.poll_errors = outcome.errors;
                outcome
                    .decision
                    .map(|decision| (decision.order, decision.observed_at))
            }
            Err(_elapsed) => {
                record.poll_errors.push("decision timeout".to_owned());
                None
            }
        }
    } else {
        // A replay may carry the decision already.
        Some((order, accepted_at))
    };
    let Some((order, observed_at)) = decided else {
        return;
    };
    record.seen = Some(Seen {
        status: order.status,
        reason: order.reason.clone(),
        rejected_product_id: order.rejected_product_id,
        latency: observed_at.saturating_duration_since(accepted_at),
    });
    record.decided_at = Some(observed_at);
    if order.status != OrderStatus::Reserved {
        return;
    }
    let id = order.id;
    match record.intent {
        Intent::Confirm => {
            record
                .actions
                .push(act(ctx, api, &token, id, ActionKind::Confirm, false).await);
        }
        Intent::Cancel => {
            record
                .actions
                .push(act(ctx, api, &token, id, ActionKind::Cancel, false).await);
        }
        Intent::Race => {
            let (confirm, cancel) = tokio::join!(
                act(ctx, api, &token, id, ActionKind::Confirm, false),
                act(ctx, api, &token, id, ActionKind::Cancel, false)
            );
            record.actions.push(confirm);
            record.actions.push(cancel);
        }
        Intent::Buy | Intent::Abandon => {}
    }
}

/// `POST /v1/orders/{id}/confirm` or `/cancel` at API `api`, retried on
/// 429/503, on `409 order_pending` and on transport failures, those at the
/// next API (both calls are safe to repeat: a second confirm of a confirmed
/// order answers `200` again).
pub async fn act(
    ctx: &Checkout,
    mut api: usize,
    token: &str,
    id: Uuid,
    kind: ActionKind,
    late: bool,
) -> ActionAnswer {
    let mut attempt = 1u32;
    let mut network_retries = 0u32;
    loop {
        let result = match kind {
            ActionKind::Confirm => ctx.client.confirm_order(api, token, id).await,
            ActionKind::Cancel => ctx.client.cancel_order(api, token, id).await,
        };
        let may_retry = attempt < ctx.retry.max_attempts;
        attempt += 1;
        match result {
            Ok(reply) if reply.is_backpressure() && may_retry => {
                tokio::time::sleep(ctx.retry.backpressure_delay(reply.retry_after)).await;
            }
            Ok(reply)
                if reply.status == StatusCode::CONFLICT
                    && reply.code().as_deref() == Some("order_pending")
                    && may_retry =>
            {
                tokio::time::sleep(PENDING_RETRY).await;
            }
            Ok(reply) => return answer_of(kind, &reply, late),
            Err(_) if may_retry => {
                network_retries += 1;
                api = ctx.client.next(api);
                tokio::time::sleep(ctx.retry.network_delay(network_retries)).await;
            }
            Err(err) => {
                return ActionAnswer {
                    kind,
                    status: None,
                    code: Some(error_chain(&err)),
                    order_status: None,
                    latency: Duration::ZERO,
                    late,
                }
            }
        }
    }
}

fn answer_of(kind: ActionKind, reply: &Reply, late: bool) -> ActionAnswer {
    let ok = reply.status == StatusCode::OK;
    ActionAnswer {
        kind,
        status: Some(reply.status.as_u16()),
        code: if ok { None } else { reply.code() },
        order_status: if ok {
            reply.json::<Order>().ok().map(|order| order.status)
        } else {
            None
        },
        latency: reply.latency,
        late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn settings(args: &[&str]) -> CartSettings {
        let cli = Cli::try_parse_from(
            ["checkline-loadtest", "cart"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let Command::Cart(args) = &cli.command else {
            panic!("not cart");
        };
        CartSettings::from_args(args).unwrap()
    }

    fn products(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[test]
    fn carts_follow_the_settings_and_repeat_per_run() {
        let settings = settings(&[]);
        let products = products(20);
        let mut intents = std::collections::HashMap::new();
        let mut sizes = [0u32; 4];
        for index in 0..4000 {
            let cart = plan_cart("ab12cd34", index, &products, &settings);
            assert_eq!(cart, plan_cart("ab12cd34", index, &products, &settings));
            assert!((1..=3).contains(&cart.lines.len()), "{cart:?}");
            sizes[cart.lines.len()] += 1;
            let mut ids: Vec<Uuid> = cart.lines.iter().map(|line| line.product_id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), cart.lines.len(), "distinct products: {cart:?}");
            assert!(cart
                .lines
                .iter()
                .all(|line| (1..=2).contains(&line.quantity)));
            assert_eq!(cart.customer_id, format!("buyer-ab12cd34-{}", index / 2));
            *intents.entry(cart.intent).or_insert(0u32) += 1;
        }
        // Every size and every intent is drawn, roughly as often as asked.
        assert!(sizes[1..].iter().all(|&n| n > 1000), "{sizes:?}");
        let buy = intents[&Intent::Buy];
        assert!((1800..2200).contains(&buy), "{intents:?}");
        let confirm = intents[&Intent::Confirm];
        assert!((800..1200).contains(&confirm), "{intents:?}");
        for intent in [Intent::Cancel, Intent::Race, Intent::Abandon] {
            assert!(intents[&intent] > 100, "{intents:?}");
        }
        assert_ne!(
            plan_cart("ab12cd34", 1, &products, &settings),
            plan_cart("ab12cd35", 1, &products, &settings)
        );
    }

    /// A stand-in for the API's order endpoints: carts are accepted
    /// pending, decided `reserved` (with `reserve_secs`) or `confirmed` at
    /// the first poll, and the first of confirm and cancel wins.
    mod stub {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use axum::{Json, Router};
        use serde_json::{json, Value};
        use uuid::Uuid;

        #[derive(Default)]
        pub struct Orders {
            /// id -> (status, body as received, key)
            pub orders: HashMap<Uuid, (String, Value, String)>,
        }

        type Shared = Arc<Mutex<Orders>>;

        fn order(id: Uuid, status: &str) -> Json<Value> {
            Json(json!({
                "id": id, "status": status, "reason": null,
                "created_at": "2026-11-30T12:00:00Z",
                "decided_at": if status == "pending" { Value::Null } else { json!("2026-11-30T12:00:01Z") },
            }))
        }

        async fn place(
            State(state): State<Shared>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            let key = headers["idempotency-key"].to_str().unwrap().to_owned();
            assert!(headers["authorization"]
                .to_str()
                .unwrap()
                .starts_with("Bearer "));
            let id = Uuid::new_v4();
            state
                .lock()
                .unwrap()
                .orders
                .insert(id, ("pending".into(), body, key));
            (StatusCode::ACCEPTED, order(id, "pending"))
        }

        async fn read(State(state): State<Shared>, Path(id): Path<Uuid>) -> Json<Value> {
            let mut state = state.lock().unwrap();
            let entry = state.orders.get_mut(&id).unwrap();
            if entry.0 == "pending" {
                entry.0 = if entry.1.get("reserve_secs").is_some() {
                    "reserved".into()
                } else {
                    "confirmed".into()
                };
            }
            order(id, &entry.0)
        }

        async fn settle(
            state: Shared,
            id: Uuid,
            to: &str,
            loser: &str,
        ) -> (StatusCode, Json<Value>) {
            let mut state = state.lock().unwrap();
            let entry = state.orders.get_mut(&id).unwrap();
            if entry.0 == "reserved" {
                entry.0 = to.into();
            }
            if entry.0 == to {
                (StatusCode::OK, order(id, to))
            } else {
                (
                    StatusCode::CONFLICT,
                    Json(json!({"status": 409, "code": loser})),
                )
            }
        }

        async fn confirm(
            State(state): State<Shared>,
            Path(id): Path<Uuid>,
        ) -> (StatusCode, Json<Value>) {
            settle(state, id, "confirmed", "order_cancelled").await
        }

        async fn cancel(
            State(state): State<Shared>,
            Path(id): Path<Uuid>,
        ) -> (StatusCode, Json<Value>) {
            settle(state, id, "cancelled", "order_confirmed").await
        }

        pub async fn start() -> (String, Shared) {
            let state: Shared = Arc::default();
            let app = Router::new()
                .route("/v1/orders", post(place))
                .route("/v1/orders/{id}", get(read))
                .route("/v1/orders/{id}/confirm", post(confirm))
                .route("/v1/orders/{id}/cancel", post(cancel))
                .with_state(Arc::clone(&state));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (url, state)
        }
    }

    #[tokio::test]
    async fn a_buyer_checks_out_waits_and_acts_on_its_reservation() {
        let (url, state) = stub::start().await;
        let client = ApiClient::new(&[url.parse().unwrap()], 4, Duration::from_secs(5)).unwrap();
        let ctx = Checkout {
            client,
            retry: RetryPolicy {
                max_attempts: 3,
                max_retry_after: Duration::from_secs(1),
            },
            reserve_secs: 45,
            decision_timeout: Duration::from_secs(5),
        };
        let lines = vec![
            CartLine {
                product_id: Uuid::from_u128(1),
                quantity: 2,
            },
            CartLine {
                product_id: Uuid::from_u128(2),
                quantity: 1,
            },
        ];
        let mut records = Vec::new();
        for (index, intent) in [
            Intent::Buy,
            Intent::Confirm,
            Intent::Cancel,
            Intent::Race,
            Intent::Abandon,
        ]
        .into_iter()
        .enumerate()
        {
            let cart = PlannedCart {
                index: index as u32,
                customer_id: format!("buyer-t-{index}"),
                lines: lines.clone(),
                intent,
            };
            records.push(checkout(&ctx, cart, "token".into()).await);
        }
        let orders = &state.lock().unwrap().orders;
        for record in &records {
            let id = record.order_id().expect("accepted");
            let (status, body, key) = &orders[&id];
            assert_eq!(key, &record.idempotency_key);
            assert_eq!(body["lines"][0]["quantity"], 2);
            assert_eq!(
                body["lines"][1]["product_id"],
                Uuid::from_u128(2).to_string()
            );
            assert_eq!(body.get("reserve_secs").is_some(), record.intent.reserves());
            let seen = record.seen.as_ref().expect("decision seen").status;
            let labels: Vec<String> = record
                .actions
                .iter()
                .map(|a| format!("{} {}", a.kind.name(), a.label()))
                .collect();
            match record.intent {
                Intent::Buy => {
                    assert_eq!(
                        (seen, status.as_str()),
                        (OrderStatus::Confirmed, "confirmed")
                    );
                    assert!(labels.is_empty());
                }
                Intent::Confirm => assert_eq!(labels, ["confirm 200"]),
                Intent::Cancel => assert_eq!(
                    (status.as_str(), &labels[..]),
                    ("cancelled", &["cancel 200".to_owned()][..])
                ),
                Intent::Race => {
                    // One winner; the loser names it.
                    assert_eq!(labels.len(), 2, "{labels:?}");
                    let winners = record.actions.iter().filter(|a| a.ok()).count();
                    assert_eq!(winners, 1, "{labels:?}");
                }
                Intent::Abandon => {
                    assert_eq!((seen, status.as_str()), (OrderStatus::Reserved, "reserved"));
                    assert!(labels.is_empty());
                }
            }
            if record.intent.reserves() {
                assert_eq!(seen, OrderStatus::Reserved);
            }
            assert!(record.answered_at.is_some() && record.done_at.is_some());
        }
        assert_eq!(
            records[1].actions[0].order_status,
            Some(OrderStatus::Confirmed)
        );
    }

    #[test]
    fn one_line_quantity_one_without_reservations() {
        let settings = settings(&[
            "--max-lines",
            "1",
            "--max-quantity",
            "1",
            "--reserve-fraction",
            "0",
        ]);
        for index in 0..500 {
            let cart = plan_cart("r", index, &products(3), &settings);
            assert_eq!(cart.lines.len(), 1);
            assert_eq!(cart.lines[0].quantity, 1);
            assert_eq!(cart.intent, Intent::Buy);
        }
        // More lines than products: every product once.
        let settings = self::settings(&["--max-lines", "5"]);
        assert_eq!(settings.max_lines, 5);
        let cart = (0..200)
            .map(|index| plan_cart("r", index, &products(2), &settings))
            .max_by_key(|cart| cart.lines.len())
            .unwrap();
        assert_eq!(cart.lines.len(), 2);
    }
}
