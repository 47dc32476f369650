//! Single-thread async primitives for tasks on one worker.
//!
//! Owns nothing but wake-ups between tasks of the same monoio runtime; nothing here is
//! `Send`. Cross-thread traffic goes through [`crate::shard`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A single-waiter notification: `notify` before `wait` is remembered once.
#[derive(Default)]
pub struct LocalNotify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait { n: self }
    }
}

/// Future of [`LocalNotify::wait`].
pub struct Wait<'a> {
    n: &'a LocalNotify,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.n.flag.replace(false) {
            return Poll::Ready(());
        }
        *self.n.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Yields to the scheduler once, so other ready tasks run first.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future of [`yield_now`].
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A cross-thread one-shot reply that a monoio task can await (used for DNS answers).
pub mod oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    struct Inner<T> {
        value: Option<T>,
        waker: Option<Waker>,
        closed: bool,
    }

    pub struct Sender<T>(Arc<Mutex<Inner<T>>>);
    pub struct Receiver<T>(Arc<Mutex<Inner<T>>>);

    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let inner = Arc::new(Mutex::new(Inner {
            value: None,
            waker: None,
            closed: false,
        }));
        (Sender(inner.clone()), Receiver(inner))
    }

    impl<T> Sender<T> {
        pub fn send(self, v: T) {
            let waker = {
                let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
                g.value = Some(v);
                g.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let waker = {
                let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
                g.closed = true;
                g.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    impl<T> Future for Receiver<T> {
        /// `None` when the sender was dropped without answering.
        type Output = Option<T>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = g.value.take() {
                return Poll::Ready(Some(v));
            }
            if g.closed {
                return Poll::Ready(None);
            }
            g.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
