//! queue::mailbox: a core's inbox for completions. Persisters deliver one message per batch;
//! the core's mail task hands each completion to its waiter.

use std::future::poll_fn;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

use super::event::Completion;
use super::waiters::Waiters;

#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<Vec<Completion>>,
    waker: AtomicWaker,
}

impl Mailbox {
    pub fn deliver(&self, completions: Vec<Completion>) {
        self.queue.push(completions);
        self.waker.wake();
    }

    /// Waits for the next message. Only the core's own mail task calls it.
    pub async fn next(&self) -> Vec<Completion> {
        poll_fn(|cx| {
            // Registered before looking, so a delivery between the look and the return of
            // `Pending` still wakes this task.
            self.waker.register(cx.waker());
            match self.queue.pop() {
                Some(batch) => Poll::Ready(batch),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// A core's mail task: completes waiters as their outcomes arrive, for as long as the core runs.
pub async fn deliver_mail(mailbox: &Mailbox, waiters: &Waiters) {
    loop {
        for c in mailbox.next().await {
            waiters.complete(c);
        }
    }
}
