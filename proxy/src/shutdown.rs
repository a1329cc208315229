//! Graceful shutdown: stop accepting, let calls in flight finish, then exit.
//!
//! Every accept loop and every connection task holds a [`Watch`]. [`Drain::drain`] signals them
//! all and waits until the last one is dropped; the caller bounds that wait with the configured
//! drain timeout, so a stuck tunnel cannot hold the process forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

/// The sending side: owned by whoever decides to stop.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<()>>,
}

/// The receiving side: one per accept loop or connection task.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A new drain with no watchers.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(());
        Self { tx: Arc::new(tx) }
    }

    /// A watcher for a new task.
    pub fn watch(&self) -> Watch {
        Watch { rx: self.tx.subscribe() }
    }

    /// How many tasks are still running.
    pub fn active(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Signals every watcher and waits until all of them are gone.
    pub async fn drain(&self) {
        self.tx.send_replace(());
        self.tx.closed().await;
    }
}

impl Watch {
    /// Completes when shutdown has been signalled.
    pub async fn signalled(&mut self) {
        // An error means the sender is gone, which is also a reason to stop.
        let _ = self.rx.changed().await;
    }

    /// Drives a connection to completion; on shutdown, asks it to finish gracefully (answer the
    /// request in flight, then close) by calling `graceful`, and keeps driving it.
    pub async fn serve<C, G>(mut self, conn: C, graceful: G) -> C::Output
    where
        C: Future,
        G: FnOnce(Pin<&mut C>),
    {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            out = conn.as_mut() => out,
            () = self.signalled() => {
                graceful(conn.as_mut());
                conn.await
            }
        }
    }
}
