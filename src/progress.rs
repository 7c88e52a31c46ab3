//! What a long call is doing, for a host that cannot be called back while it runs: a browser
//! page awaits one call into the library (a test of 10,000 pictures, say) and meanwhile polls
//! this, between its frames, to show how far the call has got. Set by the library where it
//! loops over batches; a thread's own (a page is one thread).
//!
//! Where a host watches (`watch`), the loops also read a few bytes back after each batch,
//! which lets a browser's event loop turn (its read-backs are awaited) and so the page repaint;
//! elsewhere they run as before.

use std::cell::{Cell, RefCell};

use serde::Serialize;

/// One long call's progress: `done` of `total` units (batches, steps) of `what`, within the
/// stage its host named (`stage`: "the epoch's test on 1,000 pictures", say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub stage: String,
    pub what: String,
    pub done: usize,
    pub total: usize,
}

thread_local! {
    static NOW: RefCell<Option<Progress>> = const { RefCell::new(None) };
    static STAGE: RefCell<String> = const { RefCell::new(String::new()) };
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Names what the host's current call is for (empty: nothing in particular).
pub fn stage(what: &str) {
    STAGE.with(|s| *s.borrow_mut() = what.to_string());
}

/// Says that a host polls progress (and that loops should let its event loop turn).
pub fn watch(on: bool) {
    WATCHED.with(|w| w.set(on));
}

/// Whether a host polls progress.
pub fn watched() -> bool {
    WATCHED.with(|w| w.get())
}

pub fn set(what: &str, done: usize, total: usize) {
    let stage = STAGE.with(|s| s.borrow().clone());
    NOW.with(|p| *p.borrow_mut() = Some(Progress { stage, what: what.to_string(), done, total }));
}

pub fn clear() {
    NOW.with(|p| *p.borrow_mut() = None);
}

/// The progress of the call running now, if it reports one.
pub fn get() -> Option<Progress> {
    NOW.with(|p| p.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear() {
        assert_eq!(get(), None);
        stage("the final test");
        set("testing", 3, 40);
        let want = Progress { stage: "the final test".into(), what: "testing".into(), done: 3, total: 40 };
        assert_eq!(get(), Some(want));
        clear();
        assert_eq!(get(), None);
        assert!(!watched());
        watch(true);
        assert!(watched());
    }
}
