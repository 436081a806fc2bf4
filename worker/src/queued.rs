//! An AMQP operation whose frames are queued when it is created, not when
//! it is first awaited.
//!
//! lapin's `basic_publish` and `basic_ack` queue their frames for the
//! connection's I/O thread on their first poll, then wait until that thread
//! has written them. Awaited one after the other, each costs a round trip
//! between two threads: a wake-up of lapin's I/O thread and then one of
//! ours. The consumer used to pay that per clean event published and per
//! input acked (issue #23), and could not let its runtime thread sleep
//! between wake-ups, because every message then waited for a thread that
//! was asleep.
//!
//! # Algorithm
//! [`Queued::new`] polls the operation once, with a waker that does
//! nothing: the frames are queued now, in call order, so publishes keep
//! the order in which they were made. The result of that poll is kept if
//! it is already there; otherwise the operation is awaited later, when its
//! outcome is needed, with the real waker. One I/O wake-up then writes all
//! the frames queued meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// An operation started at creation; awaiting it yields its outcome.
pub(crate) enum Queued<F: Future> {
    Waiting(Pin<Box<F>>),
    Done(Option<F::Output>),
}

impl<F: Future> Queued<F> {
    /// Starts `op`: polls it once, so that what it does before its first
    /// wait (lapin queues its frames there) happens now.
    pub(crate) fn new(op: F) -> Self {
        let mut op = Box::pin(op);
        match op.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => Self::Done(Some(out)),
            Poll::Pending => Self::Waiting(op),
        }
    }
}

// The operation is boxed and its output is never pinned.
impl<F: Future> Unpin for Queued<F> {}

impl<F: Future> Future for Queued<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.get_mut() {
            Self::Waiting(op) => op.as_mut().poll(cx),
            Self::Done(out) => match out.take() {
                Some(out) => Poll::Ready(out),
                None => panic!("a Queued operation was polled after it completed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An operation that records its start before its first wait.
    async fn op(
        log: Arc<Mutex<Vec<u32>>>,
        id: u32,
        rx: tokio::sync::oneshot::Receiver<u32>,
    ) -> u32 {
        log.lock().unwrap().push(id);
        rx.await.unwrap_or(0) + id
    }

    #[tokio::test]
    async fn operations_start_at_creation_in_order_and_finish_when_awaited() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let a = Queued::new(op(log.clone(), 1, rx1));
        let b = Queued::new(op(log.clone(), 2, rx2));
        assert_eq!(*log.lock().unwrap(), vec![1, 2], "started at creation");
        assert!(matches!(a, Queued::Waiting(_)));
        tx2.send(20).unwrap();
        tx1.send(10).unwrap();
        assert_eq!(b.await, 22);
        assert_eq!(a.await, 11);
    }

    #[tokio::test]
    async fn an_operation_that_is_done_at_once_keeps_its_result() {
        let q = Queued::new(async { 7 });
        assert!(matches!(q, Queued::Done(Some(7))));
        assert_eq!(q.await, 7);
    }
}
