//! A drop guard for anything held while an attempt runs: released exactly once, on completion
//! or on drop.

/// How a held resource ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The holder finished with it ([`Held::complete`]).
    Completed,
    /// The holder was dropped first: cancelled, timed out, abandoned.
    Dropped,
}

/// What a [`Held`] releases.
pub(crate) trait Release {
    /// Called exactly once.
    fn release(self, ending: Ending);
}

/// Holds `R` until [`complete`](Held::complete) or drop, and releases it exactly once.
#[derive(Debug)]
pub(crate) struct Held<R: Release> {
    resource: Option<R>,
}

impl<R: Release> Held<R> {
    pub(crate) fn new(resource: R) -> Self {
        Held {
            resource: Some(resource),
        }
    }

    /// The resource held.
    pub(crate) fn get(&self) -> &R {
        self.resource
            .as_ref()
            .expect("held until completed or dropped")
    }

    /// The resource held, to change before it is released.
    pub(crate) fn get_mut(&mut self) -> &mut R {
        self.resource
            .as_mut()
            .expect("held until completed or dropped")
    }

    /// Releases it as [`Ending::Completed`].
    pub(crate) fn complete(mut self) {
        if let Some(resource) = self.resource.take() {
            resource.release(Ending::Completed);
        }
    }
}

impl<R: Release> Drop for Held<R> {
    fn drop(&mut self) {
        if let Some(resource) = self.resource.take() {
            resource.release(Ending::Dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Log(Arc<Mutex<Vec<Ending>>>);

    impl Release for Log {
        fn release(self, ending: Ending) {
            self.0.lock().unwrap().push(ending);
        }
    }

    #[test]
    fn released_exactly_once() {
        let log = Arc::new(Mutex::new(Vec::new()));
        Held::new(Log(log.clone())).complete();
        drop(Held::new(Log(log.clone())));
        assert_eq!(*log.lock().unwrap(), [Ending::Completed, Ending::Dropped]);
    }
}
