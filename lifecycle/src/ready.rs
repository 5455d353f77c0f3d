//! Waiting for caches to be ready. kube-runtime's `Store::wait_until_ready` wakes only the last task that
//! waited on it, so a second waiter (a controller also waits on its Store) could sleep forever: [`polled`]
//! tries again every so often instead of trusting the wake-up.

use std::future::Future;
use std::time::Duration;

/// How often [`polled`] tries again by default.
pub const POLL: Duration = Duration::from_millis(100);

/// Runs `attempt` until one run completes within `every`, and returns what it returned.
pub async fn polled<T, Fut: Future<Output = T>>(every: Duration, mut attempt: impl FnMut() -> Fut) -> T {
    loop {
        if let Ok(out) = tokio::time::timeout(every, attempt()).await {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_wake_up_that_never_comes_is_made_up_for_by_trying_again() {
        let tries = Arc::new(AtomicU32::new(0));
        let out = polled(Duration::from_millis(5), || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    // Never completes: a lost wake-up.
                    std::future::pending::<()>().await;
                }
                n
            }
        })
        .await;
        assert_eq!(out, 3);
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }
}
