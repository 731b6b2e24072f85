//! The cap on open event streams, in total and per client address (an
//! IPv6 /64 is one address, as for the rate limit). `crate::edge` opens a
//! slot for each event stream and answers `503 overloaded` when none is
//! left.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ratelimit::client_net;

/// Open event streams, in total and per client address (an IPv6 /64 is
/// one address, as for the rate limit: [`client_net`]).
pub struct StreamSlots {
    total: Arc<Semaphore>,
    per_addr: Mutex<HashMap<IpAddr, usize>>,
    per_addr_max: usize,
}

/// One open stream; gives its slot back when dropped.
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    slots: Arc<StreamSlots>,
    addr: Option<IpAddr>,
}

impl StreamSlots {
    pub fn new(total: usize, per_addr_max: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_addr: Mutex::new(HashMap::new()),
            per_addr_max,
        })
    }

    /// A slot, or `None` when the total or the address's share is used up.
    pub fn open(self: &Arc<Self>, addr: Option<IpAddr>) -> Option<StreamSlot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let addr = addr.map(client_net);
        if let Some(addr) = addr {
            let mut per_addr = self
                .per_addr
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let open = per_addr.entry(addr).or_insert(0);
            if *open >= self.per_addr_max {
                if *open == 0 {
                    per_addr.remove(&addr);
                }
                return None;
            }
            *open += 1;
        }
        Some(StreamSlot {
            _permit: permit,
            slots: self.clone(),
            addr,
        })
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.per_addr
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or_default()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            let mut per_addr = self
                .slots
                .per_addr
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(open) = per_addr.get_mut(&addr) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    // The map holds only addresses with open streams.
                    per_addr.remove(&addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_capped_in_total_and_per_address() {
        let slots = StreamSlots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.open(Some(a)).unwrap();
        let _a2 = slots.open(Some(a)).unwrap();
        assert!(slots.open(Some(a)).is_none(), "per-address cap");
        let _b1 = slots.open(Some(b)).unwrap();
        assert!(slots.open(Some(b)).is_none(), "total cap");
        drop(a1);
        let _b2 = slots.open(Some(b)).unwrap();
        assert_eq!(slots.open_count(), 3);
    }

    #[test]
    fn an_ipv6_64_shares_one_address_share() {
        let slots = StreamSlots::new(10, 2);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let _a = slots.open(ip("2001:db8:1:2::1")).unwrap();
        let _b = slots.open(ip("2001:db8:1:2:ffff:ffff:ffff:fffe")).unwrap();
        assert!(
            slots.open(ip("2001:db8:1:2::77")).is_none(),
            "one /64 holds one address's share"
        );
        let _other = slots.open(ip("2001:db8:1:3::1")).unwrap();
        // IPv4 stays per address.
        let _c = slots.open(ip("10.0.0.1")).unwrap();
        let _d = slots.open(ip("10.0.0.1")).unwrap();
        let _e = slots.open(ip("10.0.0.2")).unwrap();
        assert_eq!(slots.open_count(), 6);
    }
}
