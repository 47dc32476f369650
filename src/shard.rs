//! Sharding and cross-core hand-off.
//!
//! Owns which worker an endpoint lives on (a hash of its name) and the mailboxes that
//! carry messages between threads: a crossbeam channel plus a waker slot, so a monoio
//! task can `await` messages sent from any thread. A sender wakes the receiving task only
//! when it is parked, and the receiver drains everything queued per wake-up, so a burst of
//! hand-offs costs one cross-core wake-up, not one per message.
//!
//! It must not interpret messages; workers and the committer do.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// The worker that owns the endpoint called `name` (FNV-1a, stable across runs).
pub fn worker_for(name: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

struct WakeSlot {
    parked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The sending side of a mailbox; clone freely.
pub struct MailboxSender<T> {
    /// Dropped by hand, before the wake-up of [`Drop`], so the woken receiver finds the
    /// channel closed when this was its last sender.
    tx: ManuallyDrop<Sender<T>>,
    slot: Arc<WakeSlot>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender {
            tx: ManuallyDrop::new((*self.tx).clone()),
            slot: self.slot.clone(),
        }
    }
}

/// The receiving side, owned by one task.
pub struct Mailbox<T> {
    rx: Receiver<T>,
    slot: Arc<WakeSlot>,
}

/// An unbounded mailbox. Backpressure is applied by the producers' own credit limits
/// (connections cap their in-flight batches, the loader caps what it loads).
pub fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let slot = Arc::new(WakeSlot {
        parked: AtomicBool::new(false),
        waker: Mutex::new(None),
    });
    (
        MailboxSender {
            tx: ManuallyDrop::new(tx),
            slot: slot.clone(),
        },
        Mailbox { rx, slot },
    )
}

impl<T> MailboxSender<T> {
    /// Sends; returns `false` when the receiver is gone.
    pub fn send(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        self.wake();
        true
    }

    /// Wakes the receiving task if it is parked.
    fn wake(&self) {
        if self.slot.parked.swap(false, Ordering::AcqRel) {
            let waker = self.slot.waker.lock().map(|mut w| w.take()).ok().flatten();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A sender going away wakes a parked receiver: were it the last, the receiver's wait
/// ends with `None` ("every sender is gone"), where it slept on, for ever with no timer
/// of its own to wake it (a test's runtime hung so, the sender thread done). Senders go
/// seldom (a connection's end, a stop), and a wake-up that finds others left costs one
/// look at the channel.
impl<T> Drop for MailboxSender<T> {
    fn drop(&mut self) {
        // SAFETY: `tx` is dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.tx) };
        self.wake();
    }
}

impl<T> Mailbox<T> {
    /// Takes one message without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next message; `None` when every sender is gone.
    pub fn recv(&self) -> Recv<'_, T> {
        Recv { mb: self }
    }

    /// Blocks up to `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<T, bool> {
        self.rx
            .recv_timeout(timeout)
            .map_err(|e| e.is_disconnected())
    }
}

/// Future of [`Mailbox::recv`].
pub struct Recv<'a, T> {
    mb: &'a Mailbox<T>,
}

impl<T> Future for Recv<'_, T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.mb.rx.try_recv() {
            Ok(m) => return Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        if let Ok(mut w) = self.mb.slot.waker.lock() {
            match w.as_mut() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // A read-modify-write, as the sender's `swap` is, not a store: the two are then
        // ordered, and whichever comes second sees the other's side. A plain store could
        // wait in this core's store buffer while the look below found the channel empty
        // and the sender, pushing meanwhile, read `parked` still false: the wake-up lost,
        // the task parked with a message queued until something else woke the thread
        // (a worker's next timer; a runtime with none, for ever).
        self.mb.slot.parked.swap(true, Ordering::AcqRel);
        // A message sent between the first check and `parked` would find nobody to wake.
        match self.mb.rx.try_recv() {
            Ok(m) => {
                self.mb.slot.parked.store(false, Ordering::Release);
                Poll::Ready(Some(m))
            }
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_is_stable_and_spread() {
        assert_eq!(worker_for("a", 4), worker_for("a", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[worker_for(&format!("endpoint-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(worker_for("x", 0), 0);
    }

    /// The last sender dropped while the receiver is parked: its wait ends with `None`.
    #[test]
    fn the_last_sender_going_wakes_a_parked_receiver() {
        let (tx, rx) = mailbox::<u32>();
        let slot = tx.slot.clone();
        let t = std::thread::spawn(move || {
            while !slot.parked.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            drop(tx);
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (got, waited) = rt.block_on(async move {
            let start = std::time::Instant::now();
            // Without a wake-up only the timeout's timer would poll the wait again.
            let got = monoio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
            (got, start.elapsed())
        });
        t.join().unwrap();
        assert_eq!(got, Ok(None));
        assert!(
            waited < std::time::Duration::from_secs(4),
            "woken only by the timer: {waited:?}"
        );
    }

    #[test]
    fn wakes_a_parked_monoio_task_from_another_thread() {
        let (tx, rx) = mailbox::<u32>();
        let t = std::thread::spawn(move || {
            for i in 0..10_000 {
                tx.send(i);
            }
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let sum = rt.block_on(async move {
            let mut sum = 0u64;
            while let Some(v) = rx.recv().await {
                sum += v as u64;
            }
            sum
        });
        t.join().unwrap();
        assert_eq!(sum, (0..10_000u64).sum::<u64>());
    }
}
