//! One spool record per batch: the batch's id, source and events with their
//! extracted fields, so a spooled event is sent exactly as a direct one.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use crate::event::Event;

/// A batch as stored in the spool.
#[derive(Debug)]
pub struct SpooledBatch {
    pub id: u64,
    pub source: String,
    pub events: Vec<Event>,
}

const FORMAT: u8 = 1;
const HAS_ID: u8 = 1;
const HAS_TIME: u8 = 2;
const HAS_KIND: u8 = 4;

/// `[format u8][id u64][source]` then `[count u32]` events of
/// `[flags u8][id?][time? i64 s + u32 ns][kind?][raw]`, strings and raw
/// bytes as `[u32 length][bytes]`, all little-endian. The events' extracted
/// fields are kept, so a spooled event is sent exactly as a direct one.
pub fn encode_batch(id: u64, source: &str, events: &[Event]) -> Bytes {
    let size: usize = events
        .iter()
        .map(|e| {
            25 + e.raw.len()
                + e.id.as_ref().map_or(0, |s| s.len() + 4)
                + e.kind.as_ref().map_or(0, |s| s.len() + 4)
        })
        .sum();
    let mut b = BytesMut::with_capacity(17 + source.len() + size);
    b.put_u8(FORMAT);
    b.put_u64_le(id);
    put_bytes(&mut b, source.as_bytes());
    b.put_u32_le(events.len() as u32);
    for e in events {
        let mut flags = 0;
        if e.id.is_some() {
            flags |= HAS_ID;
        }
        if e.time.is_some() {
            flags |= HAS_TIME;
        }
        if e.kind.is_some() {
            flags |= HAS_KIND;
        }
        b.put_u8(flags);
        if let Some(id) = &e.id {
            put_bytes(&mut b, id.as_bytes());
        }
        if let Some(t) = e.time {
            b.put_i64_le(t.timestamp());
            b.put_u32_le(t.timestamp_subsec_nanos());
        }
        if let Some(kind) = &e.kind {
            put_bytes(&mut b, kind.as_bytes());
        }
        put_bytes(&mut b, &e.raw);
    }
    b.freeze()
}

fn put_bytes(b: &mut BytesMut, data: &[u8]) {
    b.put_u32_le(data.len() as u32);
    b.put_slice(data);
}

/// The inverse of [`encode_batch`]; event bytes are slices of `data`.
pub fn decode_batch(mut data: Bytes) -> Result<SpooledBatch, String> {
    fn need(data: &Bytes, n: usize, what: &str) -> Result<(), String> {
        if data.remaining() < n {
            Err(format!("the record ends inside {what}"))
        } else {
            Ok(())
        }
    }
    fn take(data: &mut Bytes, what: &str) -> Result<Bytes, String> {
        need(data, 4, what)?;
        let len = data.get_u32_le() as usize;
        need(data, len, what)?;
        Ok(data.split_to(len))
    }
    fn text(data: &mut Bytes, what: &str) -> Result<String, String> {
        String::from_utf8(take(data, what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    need(&data, 9, "the header")?;
    let format = data.get_u8();
    if format != FORMAT {
        return Err(format!("unknown record format {format}"));
    }
    let id = data.get_u64_le();
    let source = text(&mut data, "the source name")?;
    need(&data, 4, "the event count")?;
    let count = data.get_u32_le() as usize;
    // Each event takes at least 5 bytes: never trust the count for memory.
    let mut events = Vec::with_capacity(count.min(data.remaining() / 5));
    for i in 0..count {
        need(&data, 1, "an event")?;
        let flags = data.get_u8();
        let id = if flags & HAS_ID != 0 {
            Some(Arc::from(text(&mut data, "an event id")?))
        } else {
            None
        };
        let time = if flags & HAS_TIME != 0 {
            need(&data, 12, "an event time")?;
            let (secs, nanos) = (data.get_i64_le(), data.get_u32_le());
            Some(
                DateTime::<Utc>::from_timestamp(secs, nanos)
                    .ok_or_else(|| format!("event {i} has an impossible time"))?,
            )
        } else {
            None
        };
        let kind = if flags & HAS_KIND != 0 {
            Some(Arc::from(text(&mut data, "an event type")?))
        } else {
            None
        };
        let raw = take(&mut data, "an event")?;
        events.push(Event {
            raw,
            id,
            time,
            kind,
        });
    }
    if data.has_remaining() {
        return Err(format!("{} bytes follow the last event", data.remaining()));
    }
    Ok(SpooledBatch { id, source, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(ids: &[&str]) -> Vec<Event> {
        ids.iter()
            .map(|id| Event {
                raw: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
                id: Some((*id).into()),
                time: DateTime::from_timestamp(1_700_000_000, 123_456_789),
                kind: Some("auth.login".into()),
            })
            .collect()
    }

    #[test]
    fn batch_record_round_trips_and_never_panics_when_cut() {
        let mut evs = events(&["a", "b"]);
        evs.push(Event {
            raw: Bytes::from_static(b"{}"),
            id: None,
            time: None,
            kind: None,
        });
        let record = encode_batch(42, "veza_prod", &evs);
        let back = decode_batch(record.clone()).unwrap();
        assert_eq!((back.id, back.source.as_str()), (42, "veza_prod"));
        assert_eq!(back.events.len(), 3);
        for (a, b) in back.events.iter().zip(&evs) {
            assert_eq!(
                (&a.raw, &a.id, a.time, &a.kind),
                (&b.raw, &b.id, b.time, &b.kind)
            );
        }
        for cut in 0..record.len() {
            assert!(decode_batch(record.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = record.to_vec();
        longer.push(0);
        assert!(decode_batch(Bytes::from(longer)).is_err());
        let mut future = record.to_vec();
        future[0] = 9;
        assert!(decode_batch(Bytes::from(future))
            .unwrap_err()
            .contains("format 9"));
    }
}
