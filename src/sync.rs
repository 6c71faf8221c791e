//! Locking a `std::sync::Mutex` the one way onair does it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if a thread panicked while holding it.
///
/// onair's mutexes guard data that each holder leaves consistent before it could panic (single
/// inserts and removes, plain assignments, whole-value swaps), so a poisoned lock carries no
/// half-done update: its data is used as it is, and one panic does not turn every later lock of
/// the same mutex into another panic. A mutex whose holders could leave it half-updated must not
/// use this function.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::lock;

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let mutex = Arc::new(Mutex::new(1));
        let holder = Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let _guard = holder.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            panic!("deliberate panic while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
