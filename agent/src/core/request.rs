//! Requests from the API to a capability's task ("remount now", "sync now"):
//! the caller waits a bounded time for the answer; work that takes longer goes
//! on in the task, and the caller says so instead of holding the connection.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Where the task answers one request.
pub type Reply<T> = oneshot::Sender<T>;

/// What a caller got to see.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked<T> {
    Answered(T),
    /// The task took the request and is still working on it.
    StillRunning,
    /// As many requests as the queue holds are waiting already.
    Busy,
    /// The task went away before answering.
    Gone,
}

pub struct Requests<T> {
    tx: mpsc::Sender<Reply<T>>,
    rx: Arc<Mutex<mpsc::Receiver<Reply<T>>>>,
}

impl<T> Clone for Requests<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), rx: self.rx.clone() }
    }
}

impl<T: Send + 'static> Requests<T> {
    /// At most `queue` requests wait for the task at once.
    pub fn new(queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        Self { tx, rx: Arc::new(Mutex::new(rx)) }
    }

    /// Asks the task and waits up to `wait` for its answer.
    pub async fn ask(&self, wait: Duration) -> Asked<T> {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self.tx.try_send(reply_tx).is_err() {
            return Asked::Busy;
        }
        match tokio::time::timeout(wait, reply_rx).await {
            Ok(Ok(answer)) => Asked::Answered(answer),
            Ok(Err(_)) => Asked::Gone,
            Err(_) => Asked::StillRunning,
        }
    }

    /// The task's side: the one receiver, held by the running task.
    pub fn inbox(&self) -> Arc<Mutex<mpsc::Receiver<Reply<T>>>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answered_still_running_busy_and_gone() {
        let requests: Requests<u32> = Requests::new(1);
        let inbox = requests.inbox();
        let answering = tokio::spawn(async move {
            let reply = inbox.lock().await.recv().await.unwrap();
            let _ = reply.send(7);
        });
        assert_eq!(requests.ask(Duration::from_secs(1)).await, Asked::Answered(7));
        answering.await.unwrap();

        // Nobody answers: the first waits its time out, the second finds the queue full.
        assert_eq!(requests.ask(Duration::from_secs(1)).await, Asked::StillRunning);
        assert_eq!(requests.ask(Duration::from_secs(1)).await, Asked::Busy);

        let requests: Requests<u32> = Requests::new(1);
        let inbox = requests.inbox();
        tokio::spawn(async move {
            drop(inbox.lock().await.recv().await);
        });
        assert_eq!(requests.ask(Duration::from_secs(1)).await, Asked::Gone);
    }
}
