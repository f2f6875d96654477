//! Group work for the database: requests that arrive while a batch runs wait for the next
//! one, which takes all of them in one statement. Under load, one statement serves hundreds
//! of requests; when idle, a request waits for nothing but its own statement.

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};

type Pending<Req, Resp> = (Req, oneshot::Sender<Result<Resp, BatchError>>);

/// Why a batch failed; `busy` when the database could not answer in time, which clients are
/// told to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchError {
    pub busy: bool,
    pub why: String,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<String> for BatchError {
    fn from(why: String) -> Self {
        BatchError { busy: false, why }
    }
}

impl BatchError {
    /// A database failure, `what` doing it.
    pub(crate) fn store(what: &str, e: &crate::store::StoreError) -> Self {
        BatchError {
            busy: e.is_busy(),
            why: format!("{what}: {e}"),
        }
    }
}

pub(crate) struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Pending<Req, Resp>>,
    /// What the batches do, for errors ("the nonce log").
    what: &'static str,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batch task on the current runtime. `run` answers a batch of at most
    /// `max_batch` requests with one answer per request, in order.
    pub(crate) fn start<F, Fut>(what: &'static str, max_batch: usize, mut run: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, BatchError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Pending<Req, Resp>>(16 * max_batch);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                let (requests, replies): (Vec<Req>, Vec<_>) =
                    std::mem::take(&mut batch).into_iter().unzip();
                let count = requests.len();
                // A panic in one batch (a bug, a driver's surprise) fails that batch's
                // requests; the task lives on, or every later request would fail too.
                let answered = std::panic::catch_unwind(AssertUnwindSafe(|| run(requests)));
                let answered = match answered {
                    Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                    Err(panic) => Err(panic),
                };
                let answered =
                    answered.unwrap_or_else(|_| Err(BatchError::from(format!("{what} failed"))));
                match answered {
                    Ok(answers) if answers.len() == count => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    result => {
                        let why = result.err().unwrap_or_else(|| {
                            format!("{what} answered a batch with the wrong number of results")
                                .into()
                        });
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        Batcher { tx, what }
    }

    /// Queues a request and waits for its batch's answer.
    pub(crate) async fn call(&self, request: Req) -> Result<Resp, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| BatchError::from(format!("{} has stopped", self.what)))?;
        answer
            .await
            .map_err(|_| BatchError::from(format!("{} dropped a request", self.what)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent requests share batches and each gets its own answer.
    #[tokio::test]
    async fn each_request_gets_its_own_answer_from_a_shared_batch() {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Batcher::start("the doubler", 64, move |xs: Vec<u64>| {
            if let Ok(mut s) = seen.lock() {
                s.push(xs.len());
            }
            async move { Ok(xs.iter().map(|x| x * 2).collect()) }
        });
        let answers = futures_util::future::join_all((0..500u64).map(|x| doubler.call(x))).await;
        for (x, answer) in (0..500u64).zip(answers) {
            assert_eq!(answer, Ok(x * 2));
        }
        let sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(sizes.iter().sum::<usize>(), 500);
        assert!(sizes.len() < 500, "no request shared a batch: {sizes:?}");
    }

    /// A batch that fails, or answers the wrong number of requests, fails each of them.
    #[tokio::test]
    async fn a_failed_batch_fails_every_request_in_it() {
        let failing: Batcher<u8, u8> = Batcher::start("the failing step", 8, |_| async {
            Err("disk full".to_owned().into())
        });
        assert_eq!(failing.call(1).await, Err("disk full".to_owned().into()));
        let short: Batcher<u8, u8> = Batcher::start("the short step", 8, |_| async { Ok(vec![]) });
        let why = short.call(1).await.unwrap_err().to_string();
        assert!(
            why.contains("the short step") && why.contains("wrong number"),
            "{why}"
        );
    }

    /// A batch that panics fails its requests, and later batches are still answered.
    #[tokio::test]
    async fn a_panicking_batch_fails_only_its_own_requests() {
        let fragile: Batcher<u8, u8> = Batcher::start("the fragile step", 8, |xs: Vec<u8>| {
            // One panic where the future is made, one where it runs.
            assert!(!xs.contains(&1), "cannot take 1");
            async move {
                assert!(!xs.contains(&2), "cannot take 2");
                Ok(xs)
            }
        });
        for poison in [1, 2] {
            let why = fragile.call(poison).await.unwrap_err().to_string();
            assert!(why.contains("the fragile step failed"), "{why}");
            assert_eq!(fragile.call(7).await, Ok(7));
        }
    }
}
