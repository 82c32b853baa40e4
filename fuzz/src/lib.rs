//! Bodies of bpfleet's fuzz targets, one module each, as plain functions
//! over bytes: `fuzz_targets/*.rs` hand them to libFuzzer, and
//! `tests/corpus.rs` replays every committed input through them on stable.
//!
//! Each body decodes the bytes into a sequence of calls on a public entry
//! point (`Connection::feed`, `Pipeline::handle_raw`, rules parsing, the
//! agent's request checks and admission), makes
//! them, and asserts what must hold whatever the input: no panic, and
//! results that stay within what was fed. A failed assertion is a crash to
//! libFuzzer, like a panic in the code under test.
//!
//! Every module also writes its input format ([`http_segments::Script`],
//! [`tracer_events::Script`], [`rules::input`], [`agent_requests::input`]),
//! used by the seeds and
//! the tests, so that nobody has to write the binary layouts by hand.

pub mod agent_replies;
pub mod agent_requests;
pub mod http_segments;
pub mod rules;
pub mod seeds;
pub mod tracer_events;

use std::sync::{Arc, LazyLock};

use bpfleet_httptrace::redact::Redactor;

/// The default redactor, compiled once per process: its regexes cost far
/// more than a run of `http_segments` or `tracer_events`.
pub(crate) fn builtin_redactor() -> Arc<Redactor> {
    static BUILTIN: LazyLock<Arc<Redactor>> = LazyLock::new(|| Arc::new(Redactor::builtin()));
    BUILTIN.clone()
}

/// Reads little-endian integers and byte runs off the front of the input;
/// every read fails (and the script ends) when the input runs out.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// Up to `n` bytes: whatever is left when fewer remain.
    pub(crate) fn up_to(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}
