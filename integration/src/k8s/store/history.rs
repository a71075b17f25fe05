//! Where watches start and what they read next: replay from a resourceVersion out of the
//! bounded history, 410 for versions older than it.

use super::{ApiError, FellBehind, HistoryEntry, Res, Store, WatchStart};

impl Store {
    /// Where a watch of `res` from `from_rv` starts; `None` = current state first (rv unset
    /// or "0"). 410 ([`ApiError::WatchExpired`]) if `from_rv` is older than the history.
    pub fn watch_start(
        &self,
        res: &Res,
        namespace: Option<&str>,
        from_rv: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        match from_rv {
            None => Ok(WatchStart {
                initial: self.list(res, namespace),
                cursor: self.next_seq,
                min_rv: self.rv,
            }),
            Some(rv) if rv < self.oldest_rv => Err(ApiError::WatchExpired {
                requested: rv,
                oldest: self.oldest_rv,
            }),
            Some(rv) => {
                let index = self.history.partition_point(|e| e.rv <= rv);
                let cursor = self
                    .history
                    .get(index)
                    .map_or(self.next_seq, |entry| entry.seq);
                Ok(WatchStart {
                    initial: Vec::new(),
                    cursor,
                    min_rv: rv,
                })
            }
        }
    }

    /// History entries of type `storage` from sequence `cursor` on, at most `max`; and the
    /// cursor to continue from. [`FellBehind`] if entries the watcher needed were evicted.
    pub fn read_from(
        &self,
        storage: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<HistoryEntry>, u64), FellBehind> {
        let first_seq = self.history.front().map_or(self.next_seq, |e| e.seq);
        if cursor < first_seq {
            return Err(FellBehind);
        }
        let skip = usize::try_from(cursor - first_seq)
            .unwrap_or(usize::MAX)
            .min(self.history.len());
        let mut next = cursor;
        let mut out = Vec::new();
        for entry in self.history.range(skip..).take(max) {
            next = entry.seq + 1;
            if entry.storage == storage {
                out.push(entry.clone());
            }
        }
        Ok((out, next.max(cursor)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pod, store};
    use super::*;
    use crate::k8s::meta::meta_str;
    use crate::k8s::store::object_rv;

    #[test]
    fn watch_replays_after_an_rv_and_expires_evicted_history() {
        let mut s = store();
        let first = s
            .upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        let rv = object_rv(&first);
        s.upsert(&Res::pods(), pod("b"))
            .unwrap_or_else(|e| panic!("{e}"));
        let start = s
            .watch_start(&Res::pods(), None, Some(rv))
            .unwrap_or_else(|e| panic!("{e}"));
        let (events, _) = s.read_from("/pods", start.cursor, 100).unwrap_or_default();
        assert_eq!(events.len(), 1);
        assert_eq!(meta_str(&events[0].object, "name"), Some("b"));
        for name in ["c", "d", "e", "f"] {
            s.upsert(&Res::pods(), pod(name))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            s.watch_start(&Res::pods(), None, Some(rv)),
            Err(ApiError::WatchExpired { .. })
        ));
        assert_eq!(
            s.read_from("/pods", start.cursor, 100).err(),
            Some(FellBehind)
        );
    }

    #[test]
    fn compact_expires_older_watches_only() {
        let mut s = store();
        s.upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        let rv = s.current_rv();
        s.compact(rv);
        assert!(s.watch_start(&Res::pods(), None, Some(rv)).is_ok());
        assert!(s.watch_start(&Res::pods(), None, Some(rv - 1)).is_err());
    }
}
