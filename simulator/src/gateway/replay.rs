//! A session's replay buffer: the frames `(seq, event, d)` it sent or will
//! send, oldest first, with every `d` copied into one byte ring.
//!
//! # Why a byte ring
//! Keeping each frame's `Arc<str>` made trimming the oldest frame (thousands
//! of frames after it was made, so cold in cache) cost a reference-count
//! miss and a `free` of a cold chunk per dispatch: about a sixth of the
//! simulator's CPU at 256 busy sessions. Copying `d` once into a ring that
//! is written and trimmed sequentially is cheaper, and the world's payload
//! is freed while still hot.

use std::collections::VecDeque;
use std::ops::Range;

/// One frame's header; its `d` is `bytes[start - base..][..len]`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u64,
    event: &'static str,
    /// Absolute position of `d` in the stream of bytes ever pushed.
    start: u64,
    len: u32,
}

/// Frames of one session, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    meta: VecDeque<Meta>,
    bytes: VecDeque<u8>,
    /// Absolute position of `bytes[0]`.
    base: u64,
}

/// Frames copied out of a [`Replay`] for a connection to write.
#[derive(Debug, Default)]
pub(crate) struct Pulled {
    frames: Vec<(u64, &'static str, Range<usize>)>,
    bytes: Vec<u8>,
}

impl Pulled {
    pub(crate) fn clear(&mut self) {
        self.frames.clear();
        self.bytes.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Seq of the last frame.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.frames.last().map(|f| f.0)
    }

    /// `(seq, event, d)` of every frame, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &'static str, &[u8])> + '_ {
        self.frames
            .iter()
            .map(|(seq, event, r)| (*seq, *event, self.bytes.get(r.clone()).unwrap_or_default()))
    }
}

impl Replay {
    pub(crate) fn len(&self) -> usize {
        self.meta.len()
    }

    /// Seq of the oldest frame kept.
    pub(crate) fn front_seq(&self) -> Option<u64> {
        self.meta.front().map(|m| m.seq)
    }

    pub(crate) fn push(&mut self, seq: u64, event: &'static str, d: &str) {
        let start = self.base + self.bytes.len() as u64;
        self.bytes.extend(d.as_bytes());
        self.meta.push_back(Meta {
            seq,
            event,
            start,
            len: d.len() as u32,
        });
    }

    /// Drops the oldest frame.
    pub(crate) fn pop_front(&mut self) {
        if let Some(m) = self.meta.pop_front() {
            let end = (m.start - self.base) as usize + m.len as usize;
            let end = end.min(self.bytes.len());
            self.bytes.drain(..end);
            self.base += end as u64;
        }
    }

    /// Appends up to `max` frames from index `from` (0 = oldest) to `out`.
    pub(crate) fn copy_to(&self, from: usize, max: usize, out: &mut Pulled) {
        let (front, back) = self.bytes.as_slices();
        for m in self.meta.range(from.min(self.meta.len())..).take(max) {
            let at = (m.start - self.base) as usize;
            let end = at + m.len as usize;
            let begin = out.bytes.len();
            if end <= front.len() {
                out.bytes.extend_from_slice(&front[at..end]);
            } else if at >= front.len() {
                out.bytes
                    .extend_from_slice(&back[at - front.len()..end - front.len()]);
            } else {
                out.bytes.extend_from_slice(&front[at..]);
                out.bytes.extend_from_slice(&back[..end - front.len()]);
            }
            out.frames.push((m.seq, m.event, begin..out.bytes.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pulled(r: &Replay, from: usize, max: usize) -> Vec<(u64, String)> {
        let mut p = Pulled::default();
        r.copy_to(from, max, &mut p);
        p.iter()
            .map(|(seq, _, d)| (seq, String::from_utf8(d.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn frames_come_back_in_order_across_the_ring_wrap() {
        let mut r = Replay::default();
        let mut expect = VecDeque::new();
        for seq in 1..=5000u64 {
            let d = format!("{{\"n\":{}}}", "x".repeat((seq * 7 % 300) as usize));
            r.push(seq, "E", &d);
            expect.push_back((seq, d));
            if r.len() > 40 {
                r.pop_front();
                expect.pop_front();
            }
            if seq % 97 == 0 {
                assert_eq!(r.front_seq(), Some(expect[0].0));
                let all: Vec<_> = expect.iter().cloned().collect();
                assert_eq!(pulled(&r, 0, usize::MAX), all);
                assert_eq!(pulled(&r, 10, 5), all[10..15].to_vec());
                assert_eq!(pulled(&r, 39, 5), all[39..].to_vec());
                assert!(pulled(&r, 40, 5).is_empty());
            }
        }
    }

    #[test]
    fn an_empty_replay_has_no_front_and_pulls_nothing() {
        let mut r = Replay::default();
        assert_eq!(r.front_seq(), None);
        r.pop_front();
        assert!(pulled(&r, 0, 10).is_empty());
        r.push(1, "READY", "");
        assert_eq!(pulled(&r, 0, 10), vec![(1, String::new())]);
    }
}
