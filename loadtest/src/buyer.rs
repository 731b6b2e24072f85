//! One buyer placing one order the way a real storefront does: a fresh
//! Idempotency-Key, honouring `Retry-After` on 429/503 and retrying transport
//! failures with the same key, a bounded number of times. With several APIs
//! a request that got no answer is retried on the next one, as behind a load
//! balancer; with `--same-key-to-every-api` the first attempt goes to all of
//! them at once ([`fan_out`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::Rng;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::client::{error_chain, ApiClient, Order, OrderError, Reply};

/// Delay used when a 429/503 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const NETWORK_BACKOFF_BASE: Duration = Duration::from_millis(100);
const NETWORK_BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// Upper bound on a honoured `Retry-After`.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// `Retry-After` (capped) plus up to 10% jitter, so that buyers told to
    /// come back at the same moment do not all return in the same millisecond.
    pub fn backpressure_delay(&self, retry_after: Option<Duration>) -> Duration {
        let base = retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(self.max_retry_after);
        base + jitter(base / 10)
    }

    /// Exponential backoff with jitter for the `retry`-th transport retry.
    pub fn network_delay(&self, retry: u32) -> Duration {
        let exp = NETWORK_BACKOFF_BASE.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = exp.min(NETWORK_BACKOFF_MAX);
        capped / 2 + jitter(capped / 2)
    }
}

fn jitter(max: Duration) -> Duration {
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max_micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::thread_rng().gen_range(0..=max_micros))
}

/// What a buyer asks for.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    pub customer_id: String,
    pub token: Arc<str>,
    pub product_id: Uuid,
    pub quantity: u32,
    pub idempotency_key: String,
    /// The API the buyer's first attempt goes to ([`ApiClient::home`]).
    pub home: usize,
}

impl OrderRequest {
    pub fn new(
        customer_id: String,
        token: String,
        product_id: Uuid,
        quantity: u32,
        home: usize,
    ) -> Self {
        Self {
            customer_id,
            token: token.into(),
            product_id,
            quantity,
            idempotency_key: random_key(),
            home,
        }
    }
}

/// A fresh Idempotency-Key: a random (version 4) UUID from the thread's
/// generator, not the operating system's (a system call per key).
fn random_key() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The final answer a buyer got.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `202` (or `200` replay): the order exists.
    Accepted {
        order: Order,
        replayed: bool,
        /// Round trip of the attempt that was accepted.
        latency: Duration,
        /// When that attempt was sent and its answer read.
        sent_at: Instant,
        received_at: Instant,
    },
    /// Any other HTTP answer (`409 sold_out` included), or a 429/503 once the
    /// attempts ran out.
    Refused {
        status: u16,
        code: Option<String>,
        latency: Duration,
        received_at: Instant,
    },
    /// A 2xx whose body is not an order: the order may exist but its id is
    /// unknown.
    Unreadable { status: u16, error: String },
    /// No HTTP answer after every attempt.
    Unreachable { kind: &'static str, error: String },
}

/// `--same-key-to-every-api`: what each API answered to a buyer's first
/// attempt, sent to all of them at the same moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// By API, in `--api-url` order.
    pub answers: Vec<FanoutAnswer>,
}

/// One API's answer to a fanned-out attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutAnswer {
    /// A 2xx naming this order.
    Order(Uuid),
    /// A 2xx whose body is not an order.
    Unreadable(u16),
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer.
    NoAnswer,
}

impl Fanout {
    /// The distinct order ids the 2xx answers named.
    pub fn order_ids(&self) -> BTreeSet<Uuid> {
        self.answers
            .iter()
            .filter_map(|answer| match answer {
                FanoutAnswer::Order(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Every 2xx named the same order (API.md: identical requests, however
    /// concurrent, get one order); an unreadable 2xx names none, so it does
    /// not agree.
    pub fn agrees(&self) -> bool {
        self.order_ids().len() <= 1
            && !self
                .answers
                .iter()
                .any(|answer| matches!(answer, FanoutAnswer::Unreadable(_)))
    }

    /// Every API answered 2xx with an order.
    pub fn all_accepted(&self) -> bool {
        self.answers
            .iter()
            .all(|answer| matches!(answer, FanoutAnswer::Order(_)))
    }
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub request: OrderRequest,
    pub answer: Answer,
    pub backpressure_retries: u32,
    pub network_retries: u32,
    /// The API the final answer came from (the last one tried if none
    /// answered).
    pub api: usize,
    /// `--same-key-to-every-api`: the first attempt's answers.
    pub fanout: Option<Fanout>,
}

/// Places `request`'s order, retrying as a storefront would; with
/// `every_api`, the first attempt goes to every API at once ([`fan_out`]).
pub async fn submit(
    client: ApiClient,
    request: OrderRequest,
    policy: RetryPolicy,
    every_api: bool,
) -> Submission {
    let build = |api| {
        client.order_request(
            api,
            &request.token,
            &request.idempotency_key,
            request.product_id,
            request.quantity,
        )
    };
    let sent = if every_api {
        fan_out(&client, request.home, build, policy).await
    } else {
        send(&client, request.home, build, policy).await
    };
    Submission {
        request,
        answer: sent.answer,
        backpressure_retries: sent.backpressure_retries,
        network_retries: sent.network_retries,
        api: sent.api,
        fanout: sent.fanout,
    }
}

/// The final answer to an order request, and the retries it took.
#[derive(Debug, Clone)]
pub struct Sent {
    pub answer: Answer,
    pub backpressure_retries: u32,
    pub network_retries: u32,
    /// The API the final answer came from.
    pub api: usize,
    /// [`fan_out`]: the first attempt's answers.
    pub fanout: Option<Fanout>,
}

/// Sends one order request (one key, one body: every attempt is the same
/// request; `build` writes it for the API it goes to) to API `home`,
/// retrying 429/503 there and transport failures on the next API, as a
/// storefront behind a load balancer would.
pub async fn send<F>(client: &ApiClient, home: usize, build: F, policy: RetryPolicy) -> Sent
where
    F: Fn(usize) -> Vec<u8>,
{
    let bytes = build(home);
    let result = client.place_order(home, &bytes).await;
    follow_up(client, home, bytes, result, &build, policy).await
}

/// `--same-key-to-every-api`: sends the first attempt to every API at the
/// same moment, keeps what each answered, and goes on from one answer: a
/// 2xx with an order if there is one (the home API's first), else one that
/// may be retried (the home API's first: a storefront would not trust a
/// `409` while another API may have taken the order), else the home API's.
pub async fn fan_out<F>(client: &ApiClient, home: usize, build: F, policy: RetryPolicy) -> Sent
where
    F: Fn(usize) -> Vec<u8>,
{
    let requests: Vec<Vec<u8>> = (0..client.api_count()).map(&build).collect();
    let mut results = join_all(
        requests
            .iter()
            .enumerate()
            .map(|(api, bytes)| client.place_order(api, bytes)),
    )
    .await;
    let answers: Vec<FanoutAnswer> = results.iter().map(fanout_answer).collect();
    // The home API first, then the others in turn.
    let order: Vec<usize> = (0..answers.len())
        .map(|offset| (home + offset) % answers.len())
        .collect();
    let retryable = |result: &Result<Reply, OrderError>| match result {
        Err(_) => true,
        Ok(reply) => reply.is_backpressure(),
    };
    let chosen = order
        .iter()
        .copied()
        .find(|&api| matches!(answers[api], FanoutAnswer::Order(_)))
        .or_else(|| order.iter().copied().find(|&api| retryable(&results[api])))
        .unwrap_or(home % answers.len());
    let result = results.swap_remove(chosen);
    let bytes = requests
        .into_iter()
        .nth(chosen)
        .unwrap_or_else(|| build(chosen));
    let mut sent = follow_up(client, chosen, bytes, result, &build, policy).await;
    sent.fanout = Some(Fanout { answers });
    sent
}

fn fanout_answer(result: &Result<Reply, OrderError>) -> FanoutAnswer {
    match result {
        Err(_) => FanoutAnswer::NoAnswer,
        Ok(reply) if reply.status.is_success() => match reply.json::<Order>() {
            Ok(order) => FanoutAnswer::Order(order.id),
            Err(_) => FanoutAnswer::Unreadable(reply.status.as_u16()),
        },
        Ok(reply) => FanoutAnswer::Status(reply.status.as_u16()),
    }
}

/// Goes on from `result`, the answer of API `api` to the first attempt
/// (`bytes`), until an answer is final or the attempts run out.
async fn follow_up<F>(
    client: &ApiClient,
    mut api: usize,
    mut bytes: Vec<u8>,
    mut result: Result<Reply, OrderError>,
    build: &F,
    policy: RetryPolicy,
) -> Sent
where
    F: Fn(usize) -> Vec<u8>,
{
    let mut backpressure_retries = 0u32;
    let mut network_retries = 0u32;
    let mut attempt = 1u32;
    let answer = loop {
        let may_retry = attempt < policy.max_attempts;
        attempt += 1;
        match result {
            Err(_) if may_retry => {
                network_retries += 1;
                let next = client.next(api);
                if next != api {
                    client.count_failover(api);
                    api = next;
                    bytes = build(api);
                }
                tokio::time::sleep(policy.network_delay(network_retries)).await;
            }
            Err(err) => {
                break Answer::Unreachable {
                    kind: err.kind(),
                    error: error_chain(&err),
                }
            }
            Ok(reply) if reply.is_backpressure() && may_retry => {
                backpressure_retries += 1;
                tokio::time::sleep(policy.backpressure_delay(reply.retry_after)).await;
            }
            Ok(reply) => break final_answer(client, reply),
        }
        result = client.place_order(api, &bytes).await;
    };
    Sent {
        answer,
        backpressure_retries,
        network_retries,
        api,
        fanout: None,
    }
}

/// A final HTTP answer as the buyer records it.
fn final_answer(client: &ApiClient, reply: Reply) -> Answer {
    if reply.status == StatusCode::ACCEPTED || reply.status == StatusCode::OK {
        // Queued (checkline): a 200 is the replay of an earlier attempt.
        // Synchronous (baseline): every decision is a 200, and only the
        // header marks a replay.
        let replayed =
            reply.replayed || (reply.status == StatusCode::OK && !client.is_synchronous());
        return match reply.json::<Order>() {
            Ok(order) => Answer::Accepted {
                order,
                replayed,
                latency: reply.latency,
                sent_at: reply.sent_at,
                received_at: reply.received_at,
            },
            Err(err) => Answer::Unreadable {
                status: reply.status.as_u16(),
                error: format!("{err:#}"),
            },
        };
    }
    Answer::Refused {
        status: reply.status.as_u16(),
        code: reply.code(),
        latency: reply.latency,
        received_at: reply.received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn backpressure_delay_honours_retry_after_with_bounded_jitter() {
        for _ in 0..100 {
            let delay = policy().backpressure_delay(Some(Duration::from_secs(2)));
            assert!(delay >= Duration::from_secs(2), "{delay:?}");
            assert!(delay <= Duration::from_millis(2200), "{delay:?}");
        }
        let capped = policy().backpressure_delay(Some(Duration::from_secs(600)));
        assert!(capped <= Duration::from_secs(33), "{capped:?}");
        let default = policy().backpressure_delay(None);
        assert!(default >= DEFAULT_RETRY_AFTER, "{default:?}");
        assert_eq!(
            policy().backpressure_delay(Some(Duration::ZERO)),
            Duration::ZERO
        );
    }

    #[test]
    fn network_backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = policy().network_delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let late = policy().network_delay(40);
            assert!((Duration::from_secs(1)..=NETWORK_BACKOFF_MAX).contains(&late));
        }
    }

    #[test]
    fn requests_get_distinct_valid_keys() {
        let a = OrderRequest::new("c".into(), "t".into(), Uuid::nil(), 1, 0);
        let b = OrderRequest::new("c".into(), "t".into(), Uuid::nil(), 1, 0);
        assert_ne!(a.idempotency_key, b.idempotency_key);
        let key = Uuid::parse_str(&a.idempotency_key).unwrap();
        assert_eq!(key.get_version(), Some(uuid::Version::Random));
        assert_eq!(key.get_variant(), uuid::Variant::RFC4122);
        assert!(a
            .idempotency_key
            .bytes()
            .all(|byte| (0x21..=0x7e).contains(&byte)));
    }

    mod apis {
        use super::*;
        use crate::client::ApiCounts;
        use crate::stub_api::{dead_url, Behaviour, StubApi};
        use reqwest::Url;

        const KEY: &str = "key-1";

        fn client_for(urls: &[&Url]) -> ApiClient {
            let urls: Vec<Url> = urls.iter().map(|url| (*url).clone()).collect();
            ApiClient::new(&urls, 4, Duration::from_secs(5)).unwrap()
        }

        fn build(client: &ApiClient) -> impl Fn(usize) -> Vec<u8> + '_ {
            |api| client.order_request(api, "token", KEY, Uuid::from_u128(9), 2)
        }

        fn policy(max_attempts: u32) -> RetryPolicy {
            RetryPolicy {
                max_attempts,
                max_retry_after: Duration::from_secs(1),
            }
        }

        fn accepted_id(sent: &Sent) -> Uuid {
            match &sent.answer {
                Answer::Accepted { order, .. } => order.id,
                other => panic!("not accepted: {other:?}"),
            }
        }

        #[tokio::test]
        async fn no_answer_is_retried_on_the_next_api_with_the_same_key_and_body() {
            let dead = dead_url().await;
            let id = Uuid::from_u128(1);
            let live = StubApi::start(Behaviour::Accept(id)).await;
            let client = client_for(&[&dead, &live.url]);

            let sent = send(&client, 0, build(&client), policy(3)).await;
            assert_eq!(accepted_id(&sent), id);
            assert_eq!((sent.api, sent.network_retries), (1, 1));
            assert!(sent.fanout.is_none());
            let seen = live.seen();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].idempotency_key, KEY);
            assert_eq!(
                seen[0].host,
                live.url.authority(),
                "written for the API it goes to"
            );
            assert_eq!(
                seen[0].body,
                r#"{"product_id":"00000000-0000-0000-0000-000000000009","quantity":2}"#
            );
            assert_eq!(
                client.counts(),
                [
                    ApiCounts {
                        attempts: 1,
                        accepted: 0,
                        no_answer: 1,
                        failovers: 1
                    },
                    ApiCounts {
                        attempts: 1,
                        accepted: 1,
                        no_answer: 0,
                        failovers: 0
                    }
                ]
            );

            // A buyer at home on the live API stays there.
            let sent = send(&client, 1, build(&client), policy(3)).await;
            assert_eq!((sent.api, sent.network_retries), (1, 0));
            assert_eq!(live.seen().len(), 2);
        }

        #[tokio::test]
        async fn one_api_that_gives_no_answer_is_tried_again_until_the_attempts_run_out() {
            let dead = dead_url().await;
            let client = client_for(&[&dead]);
            let sent = send(&client, 0, build(&client), policy(2)).await;
            assert!(
                matches!(
                    sent.answer,
                    Answer::Unreachable {
                        kind: "connect",
                        ..
                    }
                ),
                "{:?}",
                sent.answer
            );
            assert_eq!(sent.network_retries, 1);
            let counts = client.counts()[0];
            assert_eq!(
                (counts.attempts, counts.no_answer, counts.failovers),
                (2, 2, 0)
            );
        }

        #[tokio::test]
        async fn backpressure_is_retried_on_the_same_api() {
            let busy = StubApi::start(Behaviour::Refuse(503)).await;
            let other = StubApi::start(Behaviour::Accept(Uuid::from_u128(1))).await;
            let client = client_for(&[&busy.url, &other.url]);
            let sent = send(&client, 0, build(&client), policy(3)).await;
            assert!(
                matches!(sent.answer, Answer::Refused { status: 503, .. }),
                "{:?}",
                sent.answer
            );
            assert_eq!(sent.backpressure_retries, 2);
            assert_eq!(busy.seen().len(), 3);
            assert!(other.seen().is_empty());
        }

        #[tokio::test]
        async fn the_first_attempt_goes_to_every_api_with_one_key() {
            let id = Uuid::from_u128(1);
            let a = StubApi::start(Behaviour::Accept(id)).await;
            let b = StubApi::start(Behaviour::Accept(id)).await;
            let client = client_for(&[&a.url, &b.url]);
            let sent = fan_out(&client, 1, build(&client), policy(3)).await;
            assert_eq!(accepted_id(&sent), id);
            assert_eq!(sent.api, 1, "the home API's answer is the buyer's");
            let fanout = sent.fanout.unwrap();
            assert_eq!(fanout.answers, [FanoutAnswer::Order(id); 2]);
            assert!(fanout.agrees() && fanout.all_accepted());
            let (a, b) = (a.seen(), b.seen());
            assert_eq!((a.len(), b.len()), (1, 1));
            assert_eq!(a[0].idempotency_key, b[0].idempotency_key);
            assert_eq!(a[0].body, b[0].body);
        }

        #[tokio::test]
        async fn apis_that_name_different_orders_disagree() {
            let a = StubApi::start(Behaviour::Accept(Uuid::from_u128(1))).await;
            let b = StubApi::start(Behaviour::Accept(Uuid::from_u128(2))).await;
            let client = client_for(&[&a.url, &b.url]);
            let sent = fan_out(&client, 0, build(&client), policy(3)).await;
            assert_eq!(accepted_id(&sent), Uuid::from_u128(1));
            let fanout = sent.fanout.unwrap();
            assert!(!fanout.agrees());
            assert_eq!(fanout.order_ids().len(), 2);
        }

        #[tokio::test]
        async fn a_fanned_out_attempt_goes_on_from_the_answer_that_matters() {
            let id = Uuid::from_u128(3);
            let dead = dead_url().await;
            let live = StubApi::start(Behaviour::Accept(id)).await;
            let client = client_for(&[&dead, &live.url]);
            // The home API gave no answer, the other an order: that order.
            let sent = fan_out(&client, 0, build(&client), policy(3)).await;
            assert_eq!((accepted_id(&sent), sent.api), (id, 1));
            assert_eq!(sent.network_retries, 0);
            let fanout = sent.fanout.unwrap();
            assert_eq!(
                fanout.answers,
                [FanoutAnswer::NoAnswer, FanoutAnswer::Order(id)]
            );
            assert!(fanout.agrees() && !fanout.all_accepted());

            // Sold out at home, no answer from the other (which may have
            // taken the order): asked again, at the API after the silent one.
            let sold_out = StubApi::start(Behaviour::Refuse(409)).await;
            let client = client_for(&[&sold_out.url, &dead]);
            let sent = fan_out(&client, 0, build(&client), policy(3)).await;
            assert!(
                matches!(sent.answer, Answer::Refused { status: 409, .. }),
                "{:?}",
                sent.answer
            );
            assert_eq!((sent.api, sent.network_retries), (0, 1));
            assert_eq!(sold_out.seen().len(), 2);
            assert_eq!(
                sent.fanout.unwrap().answers,
                [FanoutAnswer::Status(409), FanoutAnswer::NoAnswer]
            );
        }
    }
}
