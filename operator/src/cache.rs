//! What agents hold, per node, shared by every program's reconcile: one
//! `List` and one `Stats` of every program per agent serve all programs for
//! up to `max_age`, instead of a `List` and a `Stats` per program per node
//! per reconcile. Concurrent reconciles that need the same node wait for
//! the same call; at most `fanout` nodes are asked at once, operator-wide.
//!
//! Never stale after an action: when the operator has acted on a node for
//! a program (the call returned, whatever it answered), nothing seen of
//! that node before counts any more *for that program*; its next
//! observation is an answer to a call that started after the action ended.
//! Other programs keep their cached view (the agent keeps programs apart).
//! Calls are ordered by a sequence number taken under the cache's lock when
//! a call starts and when an action is recorded, so "started after" holds
//! without trusting clocks.
//!
//! The call itself is given in ([`Fetch`]), so this module holds no gRPC;
//! [`crate::agents::agent_fetch`] is the one over the agent pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;

use crate::observe::NodeView;

/// Asks the agent of a node (name, endpoint) for its view; None when it
/// does not answer. The future is created only once a fan-out permit is
/// held, so nodes waiting their turn cost almost nothing.
pub type Fetch = Arc<dyn Fn(String, String) -> BoxFuture<'static, Option<NodeView>> + Send + Sync>;

/// A node's slot is dropped after this long without a lookup (the Node
/// went, or its agent moved to another endpoint).
const IDLE_SLOT: Duration = Duration::from_secs(600);
/// How often idle slots are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One answer of a node's agent (or its silence).
#[derive(Clone, Debug)]
pub struct Sighting {
    /// Sequence number of the call's start.
    seq: u64,
    /// When the answer came (or the call was given up).
    pub at: Instant,
    /// None: the agent did not answer.
    pub view: Option<Arc<NodeView>>,
}

type Pending = Shared<BoxFuture<'static, Sighting>>;

struct Slot {
    endpoint: String,
    last: Option<Sighting>,
    /// The latest call in flight: its start sequence and its answer to be.
    pending: Option<(u64, Pending)>,
    /// Per program, the sequence number of the operator's last action on
    /// this node that `last` predates.
    acted: Vec<(String, u64)>,
    used: Instant,
}

impl Slot {
    fn new(endpoint: &str, now: Instant) -> Self {
        Slot {
            endpoint: endpoint.to_string(),
            last: None,
            pending: None,
            acted: Vec::new(),
            used: now,
        }
    }

    /// Sequence number of the last action for `program` still unobserved.
    fn acted(&self, program: &str) -> u64 {
        self.acted
            .iter()
            .find(|(p, _)| p == program)
            .map_or(0, |(_, s)| *s)
    }
}

#[derive(Default)]
struct State {
    seq: u64,
    slots: HashMap<String, Slot>,
    swept: Option<Instant>,
}

impl State {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.slots
            .retain(|_, s| s.pending.is_some() || now.duration_since(s.used) < IDLE_SLOT);
    }
}

struct Inner {
    max_age: Duration,
    fetch: Fetch,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panicking holder
        // cannot leave half an update behind that matters here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `s` as the node's latest sighting unless a later call already
    /// answered; actions it postdates no longer hold anything back.
    fn store(&self, node: &str, endpoint: &str, s: &Sighting) {
        let mut st = self.state();
        let Some(slot) = st.slots.get_mut(node) else {
            return;
        };
        if slot.endpoint != endpoint {
            return;
        }
        if slot.pending.as_ref().is_some_and(|(seq, _)| *seq == s.seq) {
            slot.pending = None;
        }
        if slot.last.as_ref().is_none_or(|l| l.seq < s.seq) {
            slot.acted.retain(|(_, a)| *a > s.seq);
            slot.last = Some(s.clone());
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct NodeCache {
    inner: Arc<Inner>,
}

enum Lookup {
    Ready(Sighting),
    Wait(Pending),
}

impl NodeCache {
    pub fn new(max_age: Duration, fanout: usize, fetch: Fetch) -> Self {
        NodeCache {
            inner: Arc::new(Inner {
                max_age,
                fetch,
                permits: Arc::new(Semaphore::new(fanout.max(1))),
                state: Mutex::default(),
            }),
        }
    }

    /// What the agents of `nodes` (name, endpoint) hold, in that order, as
    /// `program`'s reconcile may use it: no older than `max_age`, and
    /// asked after the operator's last action for `program` on that node.
    pub async fn observe(&self, program: &str, nodes: &[(&str, &str)]) -> Vec<Sighting> {
        let lookups: Vec<Lookup> = {
            let now = Instant::now();
            let mut st = self.inner.state();
            st.sweep(now);
            nodes
                .iter()
                .map(|&(node, endpoint)| self.lookup(&mut st, program, node, endpoint, now))
                .collect()
        };
        futures::future::join_all(lookups.into_iter().map(|l| async move {
            match l {
                Lookup::Ready(s) => s,
                Lookup::Wait(p) => p.await,
            }
        }))
        .await
    }

    fn lookup(
        &self,
        st: &mut State,
        program: &str,
        node: &str,
        endpoint: &str,
        now: Instant,
    ) -> Lookup {
        if st.slots.get(node).is_none_or(|s| s.endpoint != endpoint) {
            // New node, or its agent moved: nothing known of the new one.
            st.slots.insert(node.to_string(), Slot::new(endpoint, now));
        }
        if let Some(slot) = st.slots.get_mut(node) {
            slot.used = now;
            let after = slot.acted(program);
            if let Some(last) = &slot.last
                && last.seq > after
                && now.saturating_duration_since(last.at) < self.inner.max_age
            {
                return Lookup::Ready(last.clone());
            }
            if let Some((started, pending)) = &slot.pending
                && *started > after
            {
                return Lookup::Wait(pending.clone());
            }
        }
        let seq = st.next();
        let pending = self.call(seq, node, endpoint);
        if let Some(slot) = st.slots.get_mut(node) {
            slot.pending = Some((seq, pending.clone()));
        }
        Lookup::Wait(pending)
    }

    /// Starts the call numbered `seq` on its own task, so that it finishes
    /// (and is kept) even if the reconcile that wanted it goes away.
    fn call(&self, seq: u64, node: &str, endpoint: &str) -> Pending {
        let inner = self.inner.clone();
        let (node, endpoint) = (node.to_string(), endpoint.to_string());
        let task = tokio::spawn(async move {
            let view = {
                // The semaphore is never closed; without a permit the call
                // would only lose its bound, so go on either way.
                let _permit = inner.permits.clone().acquire_owned().await.ok();
                (inner.fetch)(node.clone(), endpoint.clone()).await
            };
            let s = Sighting {
                seq,
                at: Instant::now(),
                view: view.map(Arc::new),
            };
            inner.store(&node, &endpoint, &s);
            s
        });
        async move {
            task.await.unwrap_or_else(|_| Sighting {
                seq,
                at: Instant::now(),
                view: None,
            })
        }
        .boxed()
        .shared()
    }

    /// The operator acted on `node` for `program` (the call returned or was
    /// abandoned): what was seen of the node before no longer counts for
    /// `program`.
    pub fn acted(&self, node: &str, program: &str) {
        let mut st = self.inner.state();
        let seq = st.next();
        let Some(slot) = st.slots.get_mut(node) else {
            return;
        };
        match slot.acted.iter_mut().find(|(p, _)| p == program) {
            Some((_, s)) => *s = seq,
            None => slot.acted.push((program.to_string(), seq)),
        }
    }

    /// Nodes with a slot (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.state().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
