//! Which service called which, from parent links that cross a process: a server (or consumer) span
//! whose parent is a client (or producer) span of another service. The two halves come from
//! different processes and usually arrive child first (the server span ends before the client
//! span that waited for it), so both sides are remembered for a while in memory: recent client
//! spans, and entry spans still waiting for their parent. Memory is bounded by two-generation maps
//! (a generation is dropped whole when it ages out) plus a hard cap on entries.
use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

/// The caller side of a link.
#[derive(Clone, Copy)]
pub struct ClientSide {
    pub service_id: i64,
}

/// The callee side, with what the edge rollup counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerSide {
    pub service_id: i64,
    pub minute: i64,
    pub error: bool,
    pub duration_ns: u64,
}

/// A resolved call from one service to another.
#[derive(Debug, PartialEq)]
pub struct Call {
    pub caller: i64,
    pub callee: ServerSide,
}

type Key = (u128, u64);

struct Generations<V> {
    current: HashMap<Key, V>,
    previous: HashMap<Key, V>,
    rotated: Instant,
    every: Duration,
    cap: usize,
}

impl<V> Generations<V> {
    fn new(every: Duration, cap: usize) -> Self {
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            rotated: Instant::now(),
            every,
            cap,
        }
    }

    fn maybe_rotate(&mut self, now: Instant) {
        if now.duration_since(self.rotated) >= self.every || self.current.len() >= self.cap {
            self.previous = std::mem::take(&mut self.current);
            self.rotated = now;
        }
    }

    fn remove(&mut self, key: &Key) -> Option<V> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }

    fn get(&self, key: &Key) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

pub struct EdgeResolver {
    clients: Generations<ClientSide>,
    waiting: Generations<Vec<ServerSide>>,
}

impl Default for EdgeResolver {
    fn default() -> Self {
        // Clients: the child normally arrives first, so a client span only needs to wait for
        // stragglers. Waiting children: as long as a slow upstream request may take to end.
        Self::new(Duration::from_secs(10), Duration::from_secs(120), 1_000_000)
    }
}

impl EdgeResolver {
    pub fn new(client_window: Duration, waiting_window: Duration, cap: usize) -> Self {
        Self {
            clients: Generations::new(client_window, cap),
            waiting: Generations::new(waiting_window, cap),
        }
    }

    /// A client or producer span was stored: returns the calls it completes.
    pub fn client(&mut self, trace_id: u128, span_id: u64, side: ClientSide, out: &mut Vec<Call>) {
        let key = (trace_id, span_id);
        if let Some(children) = self.waiting.remove(&key) {
            for callee in children {
                if callee.service_id != side.service_id {
                    out.push(Call {
                        caller: side.service_id,
                        callee,
                    });
                }
            }
        }
        self.clients.current.insert(key, side);
    }

    /// A server or consumer span with a parent was stored: returns the call if its parent is known.
    pub fn server(
        &mut self,
        trace_id: u128,
        parent_span_id: u64,
        side: ServerSide,
    ) -> Option<Call> {
        let key = (trace_id, parent_span_id);
        if let Some(parent) = self.clients.get(&key) {
            return (parent.service_id != side.service_id).then_some(Call {
                caller: parent.service_id,
                callee: side,
            });
        }
        self.waiting.current.entry(key).or_default().push(side);
        None
    }

    /// Ages the maps out; called once per write transaction.
    pub fn tick(&mut self, now: Instant) {
        self.clients.maybe_rotate(now);
        self.waiting.maybe_rotate(now);
    }

    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.clients.len() + self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(service_id: i64) -> ServerSide {
        ServerSide {
            service_id,
            minute: 7,
            error: false,
            duration_ns: 5,
        }
    }

    #[test]
    fn resolves_in_either_order_and_ignores_same_service() {
        let mut r = EdgeResolver::default();
        let mut calls = Vec::new();
        // Parent first.
        r.client(1, 10, ClientSide { service_id: 1 }, &mut calls);
        assert_eq!(r.server(1, 10, server(2)).map(|c| c.caller), Some(1));
        // Child first.
        assert!(r.server(2, 20, server(3)).is_none());
        r.client(2, 20, ClientSide { service_id: 1 }, &mut calls);
        assert_eq!(
            calls,
            vec![Call {
                caller: 1,
                callee: server(3)
            }]
        );
        // Same service: not an edge.
        assert!(r.server(1, 10, server(1)).is_none());
    }

    #[test]
    fn generations_bound_memory() {
        let mut r = EdgeResolver::new(Duration::from_secs(60), Duration::from_secs(60), 100);
        let mut calls = Vec::new();
        for i in 0..10_000u64 {
            r.client(u128::from(i), i, ClientSide { service_id: 1 }, &mut calls);
            let _ = r.server(u128::from(i), i + 1, server(2));
            r.tick(Instant::now());
        }
        assert!(r.remembered() <= 400, "{}", r.remembered());
    }
}
