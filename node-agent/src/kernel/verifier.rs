//! libbpf's log, routed through the agent's tracing, and the verifier log
//! cut out of it when a load fails. Owns the process-wide capture buffer;
//! touches nothing else.

use std::sync::{Mutex, MutexGuard, PoisonError};

use libbpf_rs::PrintLevel;

use crate::error::Error;

static CAPTURE: Mutex<Option<Vec<String>>> = Mutex::new(None);

fn print_cb(level: PrintLevel, msg: String) {
    if let Ok(mut c) = CAPTURE.lock()
        && let Some(buf) = c.as_mut()
    {
        buf.push(msg.clone());
    }
    match level {
        PrintLevel::Warn => tracing::debug!(target: "libbpf", "{}", msg.trim_end()),
        _ => tracing::trace!(target: "libbpf", "{}", msg.trim_end()),
    }
}

/// Routes libbpf's messages through the agent (once per process).
pub fn install_libbpf_log() {
    libbpf_rs::set_print(Some((PrintLevel::Info, print_cb)));
}

/// Collects libbpf's messages while it lives. The buffer is one per
/// process, so a capture is exclusive: a second load in the same process
/// (the agent's lock allows none, but tests and tools may run several
/// agents in one process) waits for the first's capture to end. Without
/// this, the second load's start emptied the buffer and its end dropped
/// it, and the first load's verifier log was lost: its rejection came
/// back as a bare kernel error.
pub(super) struct Capture {
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Held by the live capture.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

impl Capture {
    pub(super) fn start() -> Self {
        // A panic while capturing poisons nothing the next capture needs.
        let guard = EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(mut c) = CAPTURE.lock() {
            *c = Some(Vec::new());
        }
        Capture {
            _one_at_a_time: guard,
        }
    }
    pub(super) fn take(&self) -> Vec<String> {
        CAPTURE
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(mut c) = CAPTURE.lock() {
            *c = None;
        }
    }
}

/// Turns libbpf's messages around a failed load into a verifier error with
/// the end of the verifier log, when there was a verifier log.
pub(super) fn verifier_error(lines: &[String]) -> Option<Error> {
    let text: String = lines.concat();
    let begin = text.find("-- BEGIN PROG LOAD LOG --")?;
    let end = text[begin..]
        .find("-- END PROG LOAD LOG --")
        .map_or(text.len(), |e| begin + e);
    let log = &text[begin + "-- BEGIN PROG LOAD LOG --".len()..end];
    let program = text[..begin]
        .rfind("prog '")
        .and_then(|i| text[i + 6..].split('\'').next())
        .unwrap_or("?")
        .to_string();
    let kept: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = kept[kept.len().saturating_sub(20)..].join("\n");
    Some(Error::Verifier { program, log: tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_log_is_cut_out_of_libbpf_messages() {
        let lines = vec![
            "libbpf: prog 'count_getppid': BPF program load failed: Permission denied\n"
                .to_string(),
            "libbpf: prog 'count_getppid': -- BEGIN PROG LOAD LOG --\n0: R1=ctx()\n".to_string(),
            "12: (79) r1 = *(u64 *)(r0 +0)\nR0 invalid mem access 'map_value_or_null'\n"
                .to_string(),
            "processed 12 insns\n-- END PROG LOAD LOG --\n".to_string(),
        ];
        let Some(Error::Verifier { program, log }) = verifier_error(&lines) else {
            panic!("no verifier error")
        };
        assert_eq!(program, "count_getppid");
        assert!(log.contains("invalid mem access"), "{log}");
        assert!(!log.contains("END PROG"), "{log}");
        assert!(verifier_error(&["libbpf: failed to open\n".to_string()]).is_none());
    }

    /// Two loads in one process: the second capture waits for the first,
    /// so the first keeps every line logged while it was live.
    #[test]
    fn a_second_capture_waits_for_the_first() {
        let first = Capture::start();
        print_cb(PrintLevel::Warn, "first: BEGIN PROG LOAD LOG".into());
        let (started, second_started) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let c = Capture::start();
            let _ = started.send(());
            print_cb(PrintLevel::Warn, "second".into());
            c.take()
        });
        // The second load may not begin (and empty the buffer) meanwhile.
        assert!(
            second_started
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a second capture started while the first was live"
        );
        print_cb(PrintLevel::Warn, "first: END PROG LOAD LOG".into());
        assert_eq!(
            first.take(),
            ["first: BEGIN PROG LOAD LOG", "first: END PROG LOAD LOG"]
        );
        drop(first);
        assert_eq!(second.join().unwrap(), ["second"]);
    }
}
