//! Invariant 4 by replay: one product's queue, run again with the rules of
//! `worker/src/decide.rs` from what PostgreSQL recorded, entry by entry.
//!
//! An entry that wants units, at its turn, waits behind entries already
//! waiting; else takes free units (a line of a cart *holds* them until its
//! order settles); else waits if units are held; else is refused for stock.
//! A refusal that needs no stock (the customer's limit, an inactive product,
//! a line of an order cancelled while pending) only waits in line behind
//! entries already waiting. Settle entries (a held line kept or released),
//! stock returns and restocks take effect at their turn, and then the
//! waiting entries are tried again in order until one must wait.
//!
//! Counting units after each refusal cannot tell a buyer refused while units
//! were merely held (by a cart that later gave them back) from a buyer
//! rightly refused; a replay can: the rules would have made it wait, and
//! then given it the units.

use std::collections::VecDeque;

/// What PostgreSQL says an entry that wanted units got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// Took its units (a one-line order's `total_cents`, a line's
    /// `unit_price_cents`).
    Took,
    /// Refused for lack of stock, with the reason recorded.
    NoStock { reason: Option<String> },
    /// Refused for what needs no stock (limit, inactive product), or
    /// withdrawn: takes nothing and never waits for units.
    Refused,
    /// Still waiting (a parked line, a pending one-line order with a turn).
    Waiting,
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Took => f.write_str("took"),
            Self::NoStock { reason: Some(r) } => write!(f, "refused {r}"),
            Self::NoStock { reason: None } => f.write_str("refused (no reason)"),
            Self::Refused => f.write_str("refused (not for stock)"),
            Self::Waiting => f.write_str("waiting"),
        }
    }
}

/// One entry of a product's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A one-line order (`holds: false`) or a line of a cart (`holds: true`).
    Wants {
        quantity: i64,
        holds: bool,
        got: Got,
    },
    /// A held line's settle entry: `keep` takes the units for good, else
    /// they go back to stock.
    Settle { quantity: i64, keep: bool },
    /// An applied stock return or restock.
    Back { quantity: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `(queue_sequence, queue_index)`; settle entries, returns and
    /// restocks are messages of their own, at index 0.
    pub position: (i64, i64),
    pub kind: Kind,
    /// How a failure names the entry.
    pub what: String,
}

/// What the replay of one product found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries that wanted units.
    pub entries: usize,
    /// Of those, how many the rules made wait.
    pub waited: usize,
    /// Settle entries, returns and restocks.
    pub gives: usize,
    /// Entries whose recorded outcome is not the one the rules give.
    pub mismatches: Vec<String>,
    /// Entries still waiting at the end.
    pub left_waiting: Vec<String>,
    /// Free and held units at the end.
    pub stock: i64,
    pub held: i64,
}

/// Replays `events` (in any order: sorted here by position) on a product
/// that started with `initial_stock` units. After a mismatch it goes on
/// with what the rules give, so the first mismatch is the cause.
pub fn replay(initial_stock: i64, mut events: Vec<Event>) -> Replayed {
    events.sort_by_key(|event| event.position);
    let mut state = State {
        stock: initial_stock,
        held: 0,
        out: Replayed::default(),
    };
    let mut waiting: VecDeque<Event> = VecDeque::new();
    for event in events {
        match event.kind {
            Kind::Wants { .. } => {
                state.out.entries += 1;
                if !waiting.is_empty() || !state.turn(&event) {
                    state.out.waited += 1;
                    waiting.push_back(event);
                }
            }
            Kind::Settle { quantity, keep } => {
                state.out.gives += 1;
                state.held -= quantity;
                if state.held < 0 {
                    state.out.mismatches.push(format!(
                        "{} at {:?}: settles {quantity} units with {} held",
                        event.what,
                        event.position,
                        state.held + quantity
                    ));
                }
                if !keep {
                    state.stock += quantity;
                }
                state.retry(&mut waiting);
            }
            Kind::Back { quantity } => {
                state.out.gives += 1;
                state.stock += quantity;
                state.retry(&mut waiting);
            }
        }
    }
    let State {
        stock,
        held,
        mut out,
    } = state;
    out.left_waiting = waiting
        .iter()
        .map(|event| format!("{} at {:?}", event.what, event.position))
        .collect();
    out.stock = stock;
    out.held = held;
    out
}

struct State {
    stock: i64,
    held: i64,
    out: Replayed,
}

impl State {
    /// Tries the waiting entries in order until one must wait again.
    fn retry(&mut self, waiting: &mut VecDeque<Event>) {
        while let Some(front) = waiting.front() {
            if !self.turn(front) {
                break;
            }
            waiting.pop_front();
        }
    }

    /// An entry that wants units, at its turn (or again, waiting): false if
    /// the rules make it wait; else its outcome is compared with the
    /// recorded one and applied.
    fn turn(&mut self, event: &Event) -> bool {
        let Kind::Wants {
            quantity,
            holds,
            ref got,
        } = event.kind
        else {
            return true;
        };
        let (free, held) = (self.stock, self.held);
        let expected = if *got == Got::Refused {
            Got::Refused
        } else if free >= quantity {
            self.stock -= quantity;
            if holds {
                self.held += quantity;
            }
            Got::Took
        } else if held > 0 {
            return false;
        } else {
            let reason = if free <= 0 {
                "sold_out"
            } else {
                "insufficient_stock"
            };
            Got::NoStock {
                reason: Some(reason.to_owned()),
            }
        };
        if *got != expected {
            self.out.mismatches.push(format!(
                "{} at {:?}: {got}, the rules give {expected} ({free} free, {held} held)",
                event.what, event.position
            ));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(seq: i64, quantity: i64, holds: bool, got: Got) -> Event {
        Event {
            position: (seq, 0),
            kind: Kind::Wants {
                quantity,
                holds,
                got,
            },
            what: format!("entry {seq}"),
        }
    }

    fn settle(seq: i64, quantity: i64, keep: bool) -> Event {
        Event {
            position: (seq, 0),
            kind: Kind::Settle { quantity, keep },
            what: format!("settle {seq}"),
        }
    }

    fn back(seq: i64, quantity: i64) -> Event {
        Event {
            position: (seq, 0),
            kind: Kind::Back { quantity },
            what: format!("return {seq}"),
        }
    }

    fn no_stock(reason: &str) -> Got {
        Got::NoStock {
            reason: Some(reason.to_owned()),
        }
    }

    /// 3 units, and a history that follows the rules.
    fn healthy() -> Vec<Event> {
        vec![
            wants(1, 2, true, Got::Took),             // holds 2: 1 free
            wants(2, 2, false, Got::Took),            // waits for the hold
            wants(3, 1, true, Got::Took),             // waits in line
            wants(4, 1, false, Got::Refused),         // a limit: waits in line
            wants(5, 1, false, no_stock("sold_out")), // waits in line
            settle(6, 2, false), // 3 free: 2 and 3 take them, 4 refused, 5 waits again
            settle(7, 1, true),  // 3 kept: nothing held, 5 is refused
            wants(8, 2, false, no_stock("sold_out")),
            back(9, 2), // a return or a restock
            wants(10, 3, false, no_stock("insufficient_stock")),
            wants(11, 2, false, Got::Took),
        ]
    }

    #[test]
    fn a_history_that_follows_the_rules_replays_clean() {
        let out = replay(3, healthy());
        assert!(out.mismatches.is_empty(), "{out:#?}");
        assert!(out.left_waiting.is_empty(), "{out:#?}");
        assert_eq!((out.stock, out.held), (0, 0));
        assert_eq!((out.entries, out.waited, out.gives), (8, 4, 3));

        // Positions decide the order, not the order given.
        let mut shuffled = healthy();
        shuffled.reverse();
        assert_eq!(replay(3, shuffled), out);
        // With one unit less the same history breaks the rules.
        assert!(!replay(2, healthy()).mismatches.is_empty());
    }

    #[test]
    fn a_buyer_refused_while_units_were_only_held_fails() {
        // One unit, held by a cart line; a buyer behind it is refused
        // sold_out, and then the cart fails and its unit comes back. The
        // buyer should have waited for it and got it. Counting units after
        // the refusal cannot see it: nobody took a unit after it.
        let events = vec![
            wants(1, 1, true, Got::Took),
            wants(2, 1, false, no_stock("sold_out")),
            settle(3, 1, false),
        ];
        let out = replay(1, events.clone());
        assert_eq!(out.mismatches.len(), 1, "{out:#?}");
        assert!(
            out.mismatches[0].contains("entry 2")
                && out.mismatches[0].contains("refused sold_out, the rules give took"),
            "{out:#?}"
        );
        // The rules leave no unit in stock; the recorded history left 1.
        assert_eq!((out.stock, out.held, out.waited), (0, 0, 1));

        // The same buyer given the unit once it came back: clean.
        let mut fixed = events;
        fixed[1] = wants(2, 1, false, Got::Took);
        let out = replay(1, fixed);
        assert!(out.mismatches.is_empty(), "{out:#?}");
        assert_eq!((out.stock, out.held, out.waited), (0, 0, 1));

        // Kept instead of released: the refusal is right.
        let out = replay(
            1,
            vec![
                wants(1, 1, true, Got::Took),
                wants(2, 1, false, no_stock("sold_out")),
                settle(3, 1, true),
            ],
        );
        assert!(out.mismatches.is_empty(), "{out:#?}");
    }

    #[test]
    fn other_departures_from_the_rules_fail() {
        // A unit taken out of turn: 1 unit held, then released; the entry
        // at 2 waited, yet the one at 3 got it.
        let out = replay(
            1,
            vec![
                wants(1, 1, true, Got::Took),
                wants(2, 1, false, no_stock("sold_out")),
                wants(3, 1, false, Got::Took),
                settle(4, 1, false),
            ],
        );
        assert_eq!(out.mismatches.len(), 2, "{out:#?}");

        // The wrong stock reason: 1 unit free of 2 asked.
        let out = replay(1, vec![wants(1, 2, false, no_stock("sold_out"))]);
        assert_eq!(out.mismatches.len(), 1, "{out:#?}");

        // Units taken that were not there.
        let out = replay(
            1,
            vec![wants(1, 1, false, Got::Took), wants(2, 1, false, Got::Took)],
        );
        assert_eq!(out.mismatches.len(), 1, "{out:#?}");

        // A hold never settled: held at the end, its waiter left waiting.
        let out = replay(
            1,
            vec![
                wants(1, 1, true, Got::Took),
                wants(2, 1, false, Got::Waiting),
            ],
        );
        assert!(out.mismatches.is_empty(), "{out:#?}");
        assert_eq!(out.held, 1);
        assert_eq!(out.left_waiting, ["entry 2 at (2, 0)"]);

        // A settle of units nobody held.
        let out = replay(2, vec![settle(1, 1, false)]);
        assert_eq!(out.mismatches.len(), 1, "{out:#?}");
    }
}
