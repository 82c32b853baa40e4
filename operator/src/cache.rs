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
//! The program acted on asks the agent about itself alone unless the
//! node's calls about every program are being shared by other programs'
//! looks: at 5000 nodes x 50 programs, decoding answers of all 50 programs
//! after every action was a tenth of the operator's CPU, for one program's
//! use.
//! Calls are ordered by a sequence number taken under the cache's lock when
//! a call starts and when an action is recorded, so "started after" holds
//! without trusting clocks.
//!
//! The call itself is given in ([`Fetch`]), so this module holds no gRPC;
//! [`crate::agents::agent_fetch`] is the one over the agent pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::observe::NodeView;

/// Asks the agent of a node (name, endpoint) for its view of every
/// program, or of one program (`Some(name)`: the view then holds only
/// that one); None when it does not answer. The future is created only
/// once a fan-out permit is held, so nodes waiting their turn cost almost
/// nothing.
pub type Fetch = Arc<
    dyn Fn(String, String, Option<String>) -> BoxFuture<'static, Option<NodeView>> + Send + Sync,
>;

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
    /// None: the agent did not answer. An answer of one program's call
    /// holds only that program.
    pub view: Option<Arc<NodeView>>,
}

type Pending = Shared<BoxFuture<'static, Sighting>>;

/// The latest answer and the latest call in flight, of one kind of call.
#[derive(Default)]
struct Calls {
    last: Option<Sighting>,
    /// The latest call in flight: its start sequence and its answer to be.
    pending: Option<(u64, Pending)>,
}

impl Calls {
    /// `last` when it was asked after `after` and is younger than `max_age`.
    fn usable(&self, after: u64, now: Instant, max_age: Duration) -> Option<&Sighting> {
        self.last
            .as_ref()
            .filter(|l| l.seq > after && now.saturating_duration_since(l.at) < max_age)
    }

    /// The call in flight when it started after `after`.
    fn awaitable(&self, after: u64) -> Option<&Pending> {
        self.pending
            .as_ref()
            .filter(|(started, _)| *started > after)
            .map(|(_, p)| p)
    }

    /// Keeps `s` unless a later call already answered.
    fn store(&mut self, s: &Sighting) {
        if self.pending.as_ref().is_some_and(|(seq, _)| *seq == s.seq) {
            self.pending = None;
        }
        if self.last.as_ref().is_none_or(|l| l.seq < s.seq) {
            self.last = Some(s.clone());
        }
    }
}

/// What is known of one program on a node apart from the node's answers
/// of every program: the operator's last action for it, and the calls that
/// asked the agent about that program alone after it.
struct Scoped {
    program: String,
    /// Sequence number of the operator's last action for the program on
    /// this node that no answer of every program postdates (0: none).
    acted: u64,
    calls: Calls,
}

struct Slot {
    endpoint: String,
    /// Calls about every program.
    all: Calls,
    /// Programs acted on since `all.last` was asked, or asked about alone
    /// since; gone at the next answer of every program.
    scoped: Vec<Scoped>,
    /// Looks served by the latest call about every program (its answer,
    /// or waiting for it), the one that started it included.
    shared: u32,
    /// The same count of the call before it (final).
    shared_before: u32,
    used: Instant,
}

/// After an action, a program's look asks about every program only when
/// one of the node's last two such calls served at least this many looks:
/// otherwise other programs do not come by within `max_age` (a large fleet
/// busy rolling all of its programs out), and the program asks about
/// itself alone.
const SHARED: u32 = 3;

impl Slot {
    fn new(endpoint: &str, now: Instant) -> Self {
        Slot {
            endpoint: endpoint.to_string(),
            all: Calls::default(),
            scoped: Vec::new(),
            shared: 0,
            shared_before: 0,
            used: now,
        }
    }

    fn scoped(&self, program: &str) -> Option<&Scoped> {
        self.scoped.iter().find(|s| s.program == program)
    }

    fn scoped_mut(&mut self, program: &str) -> &mut Scoped {
        let i = match self.scoped.iter().position(|s| s.program == program) {
            Some(i) => i,
            None => {
                self.scoped.push(Scoped {
                    program: program.to_string(),
                    acted: 0,
                    calls: Calls::default(),
                });
                self.scoped.len() - 1
            }
        };
        &mut self.scoped[i]
    }

    /// An answer of every program: actions it postdates hold nothing back
    /// any more, and answers of one program it postdates are superseded.
    fn store_all(&mut self, s: &Sighting) {
        self.all.store(s);
        for sc in &mut self.scoped {
            if sc.acted < s.seq {
                sc.acted = 0;
            }
            if sc.calls.last.as_ref().is_some_and(|l| l.seq < s.seq) {
                sc.calls.last = None;
            }
        }
        self.scoped
            .retain(|sc| sc.acted > 0 || sc.calls.last.is_some() || sc.calls.pending.is_some());
    }

    /// An answer about `program` alone. The action it postdates stays
    /// recorded: an answer of every program asked before the action may
    /// still arrive, and must not serve `program` once this one is old.
    fn store_one(&mut self, program: &str, s: &Sighting) {
        self.scoped_mut(program).calls.store(s);
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
        self.slots.retain(|_, s| {
            s.all.pending.is_some()
                || s.scoped.iter().any(|sc| sc.calls.pending.is_some())
                || now.duration_since(s.used) < IDLE_SLOT
        });
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

    /// Keeps `s` as the node's latest answer (of every program, or of
    /// `program` alone) unless a later call of the same kind already
    /// answered.
    fn store(&self, node: &str, endpoint: &str, program: Option<&str>, s: &Sighting) {
        let mut st = self.state();
        let Some(slot) = st.slots.get_mut(node) else {
            return;
        };
        if slot.endpoint != endpoint {
            return;
        }
        match program {
            None => slot.store_all(s),
            Some(p) => slot.store_one(p, s),
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
    /// A view may hold only `program`.
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
        let max_age = self.inner.max_age;
        if st.slots.get(node).is_none_or(|s| s.endpoint != endpoint) {
            // New node, or its agent moved: nothing known of the new one.
            st.slots.insert(node.to_string(), Slot::new(endpoint, now));
        }
        // After an action for `program`, a look asks about that program
        // alone unless the node's calls about every program are being
        // shared ([`SHARED`]): the call then costs one program's answer,
        // not every program's, where an answer of every program would
        // serve none but the one that asked (a large fleet rolling all of
        // its programs out). Where they are shared, one answer serves the
        // programs that acted before it started and clears their actions,
        // so a node settles back to one call for all of its programs.
        let mut alone = false;
        if let Some(slot) = st.slots.get_mut(node) {
            slot.used = now;
            let scoped = slot.scoped(program);
            let after = scoped.map_or(0, |s| s.acted);
            let all = slot.all.usable(after, now, max_age);
            let one = scoped.and_then(|s| s.calls.usable(after, now, max_age));
            // The newer of the two usable answers.
            let (ready, of_all) = match (all, one) {
                (Some(a), Some(o)) if a.seq > o.seq => (Some(a), true),
                (_, Some(o)) => (Some(o), false),
                (a, None) => (a, a.is_some()),
            };
            if let Some(s) = ready {
                let s = s.clone();
                if of_all {
                    slot.shared += 1;
                }
                return Lookup::Ready(s);
            }
            if let Some(p) = slot.all.awaitable(after) {
                let p = p.clone();
                slot.shared += 1;
                return Lookup::Wait(p);
            }
            if let Some(p) = scoped.and_then(|s| s.calls.awaitable(after)) {
                return Lookup::Wait(p.clone());
            }
            alone = after > 0 && slot.shared.max(slot.shared_before) < SHARED;
        }
        let seq = st.next();
        let scope = alone.then(|| program.to_string());
        let pending = self.call(seq, node, endpoint, scope);
        if let Some(slot) = st.slots.get_mut(node) {
            if alone {
                slot.scoped_mut(program).calls.pending = Some((seq, pending.clone()));
            } else {
                slot.all.pending = Some((seq, pending.clone()));
                slot.shared_before = slot.shared;
                slot.shared = 1;
            }
        }
        Lookup::Wait(pending)
    }

    /// Starts the call numbered `seq` (about every program, or `scope`
    /// alone) on its own task, so that it finishes (and is kept) even if
    /// the reconcile that wanted it goes away.
    fn call(&self, seq: u64, node: &str, endpoint: &str, scope: Option<String>) -> Pending {
        let inner = self.inner.clone();
        let (node, endpoint) = (node.to_string(), endpoint.to_string());
        let task = tokio::spawn(async move {
            let view = {
                // The semaphore is never closed; without a permit the call
                // would only lose its bound, so go on either way.
                let _permit = inner.permits.clone().acquire_owned().await.ok();
                (inner.fetch)(node.clone(), endpoint.clone(), scope.clone()).await
            };
            let s = Sighting {
                seq,
                at: Instant::now(),
                view: view.map(Arc::new),
            };
            inner.store(&node, &endpoint, scope.as_deref(), &s);
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
        slot.scoped_mut(program).acted = seq;
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
