//! Which queues a member of a clustering group consumes.

/// RocketMQ's average allocation: the sorted queues are cut into contiguous blocks, one per
/// sorted member; the first `queues % members` members get one more. Members beyond the
/// number of queues get none. `me` not among `members` (the broker has not heard of it yet)
/// gets none.
pub fn allocate_averagely<Q: Clone>(queues: &[Q], members: &[String], me: &str) -> Vec<Q> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (n, m) = (queues.len(), members.len());
    if n == 0 {
        return Vec::new();
    }
    let rest = n % m;
    let size = if n <= m {
        1
    } else if rest > 0 && index < rest {
        n / m + 1
    } else {
        n / m
    };
    let start = if rest > 0 && index < rest {
        index * size
    } else {
        index * size + rest
    };
    let take = size.min(n.saturating_sub(start));
    (0..take).map(|i| queues[(start + i) % n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn every_queue_once_in_contiguous_blocks() {
        for queues in 0..20usize {
            for members in 1..8usize {
                let qs: Vec<usize> = (0..queues).collect();
                let cids = ids(members);
                let mut all = Vec::new();
                for (i, c) in cids.iter().enumerate() {
                    let mine = allocate_averagely(&qs, &cids, c);
                    assert!(mine.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
                    let expected = if queues <= members {
                        usize::from(i < queues)
                    } else {
                        queues / members + usize::from(i < queues % members)
                    };
                    assert_eq!(mine.len(), expected, "{queues} queues, {members} members");
                    all.extend(mine);
                }
                assert_eq!(all, qs, "{queues} queues, {members} members");
            }
        }
    }

    #[test]
    fn like_rocketmq() {
        let qs: Vec<u32> = (0..8).collect();
        let cids = ids(3);
        assert_eq!(allocate_averagely(&qs, &cids, "c0"), vec![0, 1, 2]);
        assert_eq!(allocate_averagely(&qs, &cids, "c1"), vec![3, 4, 5]);
        assert_eq!(allocate_averagely(&qs, &cids, "c2"), vec![6, 7]);
        assert!(allocate_averagely(&qs, &cids, "stranger").is_empty());
    }
}
