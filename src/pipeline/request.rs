//! How the pipeline cuts a batch for a sink: into runs of at most one of
//! the sink's requests, so each run's confirmation can be recorded and a
//! restart re-sends at most the runs that were unconfirmed.

use std::ops::Range;

use crate::event::Event;
use crate::sink::{BatchConfig, SinkConfig, SinkKind};

/// At most this many events and raw bytes per run handed to a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSize {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl RequestSize {
    /// The whole batch in one call (sinks without requests of their own).
    pub const WHOLE: RequestSize = RequestSize {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };

    /// The request size of a sink: its `batch` keys, else its type's
    /// defaults (kept in step with the sinks' own). Kafka, file and stdout
    /// confirm a whole call at once: one run per batch unless `batch` says.
    pub fn of(sink: &SinkConfig) -> Self {
        let (events, bytes) = match &sink.kind {
            // Raw bytes: HEC's 900,000 is of envelopes, ~25% larger.
            SinkKind::SplunkHec(_) => (1000, 700_000),
            SinkKind::Webhook(_) => (500, 4 << 20),
            SinkKind::Syslog(_) => (1000, 1 << 20),
            _ => (usize::MAX, usize::MAX),
        };
        Self::from_batch(&sink.common.batch, events, bytes)
    }

    pub fn from_batch(batch: &BatchConfig, events: usize, bytes: usize) -> Self {
        RequestSize {
            max_events: batch.max_events.unwrap_or(events).max(1),
            max_bytes: batch.max_bytes.unwrap_or(bytes).max(1),
        }
    }

    /// Consecutive runs of `events` within both limits; an event larger
    /// than `max_bytes` is a run of its own.
    pub fn runs(&self, events: &[Event]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0usize, 0usize);
        for (i, e) in events.iter().enumerate() {
            let size = e.raw.len() + 1;
            if i > start
                && (i - start >= self.max_events || bytes.saturating_add(size) > self.max_bytes)
            {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes = bytes.saturating_add(size);
        }
        if start < events.len() {
            out.push(start..events.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(n: usize) -> Event {
        Event {
            raw: Bytes::from(vec![b'x'; n]),
            id: None,
            time: None,
            kind: None,
        }
    }

    #[test]
    fn runs_respect_both_limits_and_cover_every_event_once() {
        let events: Vec<Event> = [10, 10, 10, 100, 10].into_iter().map(ev).collect();
        let size = RequestSize {
            max_events: 2,
            max_bytes: 40,
        };
        assert_eq!(size.runs(&events), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(RequestSize::WHOLE.runs(&events), vec![0..5]);
        assert!(size.runs(&[]).is_empty());
    }
}
