//! The shape of one trace: each span's depth and self time, from parent links that may be
//! incomplete (a parent not traced or not yet arrived) or even cyclic (bad input).
use std::collections::HashMap;

/// `spans`: (span id, parent id, start ns, end ns). Returns (depth, self time ns) per span.
pub fn shape(spans: &[(u64, Option<u64>, i64, i64)]) -> Vec<(u32, u64)> {
    let index: HashMap<u64, usize> = spans.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let parent_of = |i: usize| -> Option<usize> {
        spans[i]
            .1
            .and_then(|p| index.get(&p).copied())
            .filter(|&p| p != i)
    };

    let mut depth: Vec<Option<u32>> = vec![None; spans.len()];
    for i in 0..spans.len() {
        let mut path = Vec::new();
        let mut cur = Some(i);
        // Walk up to a span of known depth, a root, or a loop (treated as a root).
        while let Some(c) = cur {
            if depth[c].is_some() || path.contains(&c) || path.len() > spans.len() {
                break;
            }
            path.push(c);
            cur = parent_of(c);
        }
        let base = match cur {
            Some(c) if depth[c].is_some() => depth[c].map_or(0, |d| d + 1),
            _ => 0,
        };
        for (d, &c) in (base..).zip(path.iter().rev()) {
            depth[c] = Some(d);
        }
    }

    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    for i in 0..spans.len() {
        if let Some(p) = parent_of(i) {
            children[p].push(i);
        }
    }
    (0..spans.len())
        .map(|i| {
            let (_, _, start, end) = spans[i];
            let mut covered: Vec<(i64, i64)> = children[i]
                .iter()
                .map(|&c| (spans[c].2.max(start), spans[c].3.min(end)))
                .filter(|(s, e)| e > s)
                .collect();
            covered.sort_unstable();
            let mut busy = 0i64;
            let mut reach = start;
            for (s, e) in covered {
                let s = s.max(reach);
                if e > s {
                    busy += e - s;
                    reach = e;
                }
            }
            let total = (end - start).max(0);
            (depth[i].unwrap_or(0), (total - busy).max(0) as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_self_time_with_overlapping_children_and_missing_parent() {
        let spans = [
            (1, None, 0, 100),
            (2, Some(1), 10, 50),
            (3, Some(1), 40, 60), // overlaps 2: union 10..60
            (4, Some(3), 45, 55),
            (5, Some(99), 0, 10), // parent not in the trace
        ];
        let s = shape(&spans);
        assert_eq!(s, vec![(0, 50), (1, 40), (1, 10), (2, 10), (0, 10)]);
    }

    #[test]
    fn cycles_do_not_hang() {
        let spans = [(1, Some(2), 0, 10), (2, Some(1), 0, 10), (3, Some(3), 0, 5)];
        let s = shape(&spans);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], (0, 5));
    }
}
