//! Watch streams: catch up from the `events` table, then follow the writer's broadcast.
//!
//! The receiver is subscribed *before* the first catch-up read, so every event is either in the
//! table when it is read or arrives on the broadcast afterwards (the writer publishes only after
//! COMMIT). Events at or below the last revision yielded are skipped, which removes the overlap.
//! Revisions are contiguous (every committed write takes exactly the next one), so a jump on the
//! broadcast, or a lagging receiver, is repaired by re-reading the gap from the table.

use std::collections::VecDeque;
use std::sync::Arc;

use agentplane_store::{Revision, StoreError, WatchEvent, WatchQuery, WatchStream};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::read::{ReadPool, events_after};

/// Events read from the table per catch-up query.
pub(crate) const CATCH_UP_CHUNK: usize = 1_000;

struct State {
    pool: Arc<ReadPool>,
    events: broadcast::Receiver<Arc<WatchEvent>>,
    query: WatchQuery,
    /// The highest revision seen, delivered or filtered out.
    last: Revision,
    pending: VecDeque<WatchEvent>,
    catching_up: bool,
    done: bool,
}

impl State {
    /// Queue a chunk read from the table; returns whether the table may hold more.
    fn absorb(&mut self, chunk: Vec<WatchEvent>) -> bool {
        let full = chunk.len() >= CATCH_UP_CHUNK;
        for ev in chunk {
            if ev.revision <= self.last {
                continue;
            }
            self.last = ev.revision;
            if self.query.matches(&ev) {
                self.pending.push_back(ev);
            }
        }
        full
    }
}

/// Build the stream. The caller subscribed `events` before calling, and `first` is the first
/// catch-up chunk (read after subscribing).
pub(crate) fn stream(
    pool: Arc<ReadPool>,
    events: broadcast::Receiver<Arc<WatchEvent>>,
    query: WatchQuery,
    first: Vec<WatchEvent>,
) -> WatchStream {
    let mut state = State {
        pool,
        events,
        last: query.from_revision,
        query,
        pending: VecDeque::new(),
        catching_up: false,
        done: false,
    };
    state.catching_up = state.absorb(first);
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done {
                return None;
            }
            if st.catching_up {
                let after = st.last;
                match st.pool.run(move |conn| events_after(conn, after, CATCH_UP_CHUNK)).await {
                    Ok(chunk) => st.catching_up = st.absorb(chunk),
                    Err(StoreError::Closed) => return None,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
                continue;
            }
            match st.events.recv().await {
                Ok(ev) if ev.revision <= st.last => {}
                Ok(ev) if ev.revision > st.last + 1 => st.catching_up = true,
                Ok(ev) => {
                    st.last = ev.revision;
                    if st.query.matches(&ev) {
                        return Some((Ok(WatchEvent::clone(&ev)), st));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, after = st.last, "watch lagged behind the writer; re-reading the gap");
                    st.catching_up = true;
                }
                Err(RecvError::Closed) => st.done = true,
            }
        }
    }))
}
