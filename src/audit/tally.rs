//! Aggregation as the census goes: counts and bytes per class, per reason and per row
//! (format x wrap x content x key x class x reason), plus a capped list of remaining objects.
//! Memory is bounded whatever the bucket size: rows are few (one per distinct combination) and
//! the list stops at its cap.

use std::collections::BTreeMap;

use super::Audited;
use super::classify::{Class, Reason};

/// Objects and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    pub objects: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Bytes per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassBytes {
    pub plaintext: u64,
    pub current: u64,
    pub remaining: u64,
}

/// One row of the table: a combination seen, and how many objects (bytes) had it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub format: &'static str,
    pub wrap: &'static str,
    pub content: &'static str,
    /// What wraps the content key (`target`, `kms:<id>`, `kms:unknown`, `aes`, `rsa`, `-`).
    pub key: String,
    pub class: Class,
    pub reason: Option<Reason>,
    pub objects: u64,
    pub bytes: u64,
}

/// A remaining object in the capped list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemainingObject {
    pub key: String,
    pub version_id: Option<String>,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

type RowKey = (
    Class,
    Option<Reason>,
    &'static str,
    &'static str,
    &'static str,
    String,
);

/// The running totals of one census.
#[derive(Debug, Clone)]
pub struct Tally {
    rows: BTreeMap<RowKey, Count>,
    classes: BTreeMap<Class, Count>,
    reasons: BTreeMap<Reason, u64>,
    listed: Vec<RemainingObject>,
    max_listed: usize,
    truncated: bool,
    /// Listed, then gone before their HEAD (deleted meanwhile): not counted.
    vanished: u64,
}

impl Tally {
    /// `max_listed`: how many remaining objects to keep by name.
    pub fn new(max_listed: usize) -> Self {
        Tally {
            rows: BTreeMap::new(),
            classes: BTreeMap::new(),
            reasons: BTreeMap::new(),
            listed: Vec::new(),
            max_listed,
            truncated: false,
            vanished: 0,
        }
    }

    pub fn add(&mut self, a: &Audited) {
        let v = &a.verdict;
        self.rows
            .entry((
                v.class,
                v.reason,
                v.format,
                v.wrap,
                v.content,
                v.key.clone(),
            ))
            .or_default()
            .add(a.size);
        self.classes.entry(v.class).or_default().add(a.size);
        if let Some(r) = v.reason {
            *self.reasons.entry(r).or_default() += 1;
            if self.listed.len() < self.max_listed {
                self.listed.push(RemainingObject {
                    key: a.key.clone(),
                    version_id: a.version_id.clone(),
                    reason: r,
                    detail: v.detail.clone(),
                });
            } else {
                self.truncated = true;
            }
        }
    }

    pub fn add_vanished(&mut self) {
        self.vanished += 1;
    }

    pub fn class(&self, c: Class) -> Count {
        self.classes.get(&c).copied().unwrap_or_default()
    }

    /// Remaining objects per reason, every reason present (0 when none).
    pub fn reasons(&self) -> BTreeMap<Reason, u64> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.reasons.get(r).copied().unwrap_or(0)))
            .collect()
    }

    /// The rows, remaining first, then current, then plaintext; most objects first within.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|((class, reason, format, wrap, content, key), c)| Row {
                format,
                wrap,
                content,
                key: key.clone(),
                class: *class,
                reason: *reason,
                objects: c.objects,
                bytes: c.bytes,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.class
                .cmp(&a.class)
                .then(b.objects.cmp(&a.objects))
                .then(a.reason.cmp(&b.reason))
        });
        rows
    }

    pub fn remaining_objects(&self) -> &[RemainingObject] {
        &self.listed
    }

    /// True when more remaining objects were found than the list keeps.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn max_listed(&self) -> usize {
        self.max_listed
    }

    pub fn vanished(&self) -> u64 {
        self.vanished
    }

    /// The JSON summary (`s3cse audit --json`).
    pub fn summary(&self, scope: Scope) -> Summary {
        let (p, c, r) = (
            self.class(Class::Plaintext),
            self.class(Class::Current),
            self.class(Class::Remaining),
        );
        Summary {
            scope,
            total: p.objects + c.objects + r.objects,
            plaintext: p.objects,
            current: c.objects,
            remaining: r.objects,
            bytes: ClassBytes {
                plaintext: p.bytes,
                current: c.bytes,
                remaining: r.bytes,
            },
            remaining_by_reason: self
                .reasons()
                .into_iter()
                .map(|(r, n)| (r.as_str(), n))
                .collect(),
            by_class: self.rows(),
            remaining_objects: self.listed.clone(),
            remaining_objects_truncated: self.truncated,
            max_listed: self.max_listed,
            vanished: self.vanished,
        }
    }
}

/// What was audited, against which key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    pub bucket: String,
    pub prefix: String,
    pub versions: bool,
    /// The target key's ARN (or id).
    pub target_key: String,
}

/// The `--json` document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub scope: Scope,
    pub total: u64,
    pub plaintext: u64,
    pub current: u64,
    pub remaining: u64,
    pub bytes: ClassBytes,
    pub remaining_by_reason: BTreeMap<&'static str, u64>,
    pub by_class: Vec<Row>,
    /// At most `max_listed` of the remaining objects.
    pub remaining_objects: Vec<RemainingObject>,
    pub remaining_objects_truncated: bool,
    pub max_listed: usize,
    pub vanished: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::classify::Verdict;

    fn audited(key: &str, size: u64, verdict: Verdict) -> Audited {
        Audited {
            key: key.into(),
            version_id: None,
            size,
            verdict,
        }
    }

    #[test]
    fn counts_rows_and_a_capped_list() {
        let mut t = Tally::new(2);
        t.add(&audited("a", 10, Verdict::plaintext()));
        t.add(&audited("b", 5, Verdict::unreadable("AccessDenied")));
        t.add(&audited("c", 7, Verdict::unreadable("AccessDenied")));
        t.add(&audited("d", 1, Verdict::orphan_instruction()));
        let s = t.summary(Scope {
            bucket: "b".into(),
            prefix: String::new(),
            versions: false,
            target_key: "k".into(),
        });
        assert_eq!((s.total, s.plaintext, s.current, s.remaining), (4, 1, 0, 3));
        assert_eq!(s.bytes.remaining, 13);
        assert_eq!(s.remaining_by_reason["unreadable"], 2);
        assert_eq!(s.remaining_by_reason["raw-key"], 0);
        assert_eq!(s.remaining_objects.len(), 2);
        assert!(s.remaining_objects_truncated);
        // Remaining rows first, the largest first.
        assert_eq!(s.by_class[0].reason, Some(Reason::Unreadable));
        assert_eq!((s.by_class[0].objects, s.by_class[0].bytes), (2, 12));
        assert_eq!(s.by_class.last().map(|r| r.class), Some(Class::Plaintext));
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["bucket"], "b");
        assert_eq!(json["by_class"][0]["class"], "remaining");
        assert_eq!(json["remaining_objects"][0]["reason"], "unreadable");
    }
}
