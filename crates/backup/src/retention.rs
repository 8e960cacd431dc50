//! Which backups to keep, with restic's `forget` rules.
//!
//! Backups are taken newest first. Each rule counts on its own: `last` keeps the N newest;
//! `daily`, `weekly` and `monthly` keep the newest backup of each of the N most recent UTC
//! days, ISO weeks and months that have one. A backup is kept if any rule keeps it, and is
//! then listed once with every reason; the others are removed. As in restic, one backup can
//! use up a slot of several rules (the newest is usually the last, the daily, the weekly and
//! the monthly one at once).

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::BackupError;

/// How many to keep under each rule; 0 turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Last,
    Daily,
    Weekly,
    Monthly,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Last => "last",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        })
    }
}

impl Reason {
    /// The bucket a backup falls in under this rule; `position` makes every backup its own
    /// bucket for `last`.
    fn bucket(self, time: Timestamp, position: usize) -> i64 {
        let date = time.to_zoned(TimeZone::UTC).date();
        match self {
            Self::Last => i64::try_from(position).unwrap_or(i64::MAX),
            Self::Daily => {
                i64::from(date.year()) * 10_000
                    + i64::from(date.month()) * 100
                    + i64::from(date.day())
            }
            Self::Weekly => {
                let week = date.iso_week_date();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            Self::Monthly => i64::from(date.year()) * 100 + i64::from(date.month()),
        }
    }
}

impl Retention {
    /// For each of `times` (in any order), the reasons to keep it; empty means remove.
    /// Refuses to decide without a rule, so that a forgotten flag never removes everything.
    pub fn decide(&self, times: &[Timestamp]) -> Result<Vec<Vec<Reason>>, BackupError> {
        let rules = [
            (Reason::Last, self.last),
            (Reason::Daily, self.daily),
            (Reason::Weekly, self.weekly),
            (Reason::Monthly, self.monthly),
        ];
        if rules.iter().all(|(_, n)| *n == 0) {
            return Err(BackupError::NoRetentionRule);
        }
        let mut order: Vec<usize> = (0..times.len()).collect();
        // Newest first; on equal times, the later index (stored later) first.
        order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));
        let mut left: Vec<u32> = rules.iter().map(|(_, n)| *n).collect();
        let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
        let mut reasons = vec![Vec::new(); times.len()];
        for (position, &index) in order.iter().enumerate() {
            for (rule, (reason, _)) in rules.iter().enumerate() {
                if left[rule] == 0 {
                    continue;
                }
                let bucket = reason.bucket(times[index], position);
                if last_bucket[rule] != Some(bucket) {
                    last_bucket[rule] = Some(bucket);
                    left[rule] -= 1;
                    reasons[index].push(*reason);
                }
            }
        }
        Ok(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// One backup a day at 03:00 UTC for `days` days ending on 2026-11-25 (a Wednesday).
    fn nightly(days: i64) -> Vec<Timestamp> {
        let end = at("2026-11-25T03:00:00Z");
        (0..days)
            .rev()
            .map(|d| end - jiff::SignedDuration::from_hours(24 * d))
            .collect()
    }

    fn kept(policy: Retention, times: &[Timestamp]) -> Vec<String> {
        policy
            .decide(times)
            .unwrap()
            .iter()
            .zip(times)
            .filter(|(r, _)| !r.is_empty())
            .map(|(_, t)| t.to_string())
            .collect()
    }

    #[test]
    fn no_rule_removes_nothing() {
        assert!(matches!(
            Retention::default().decide(&nightly(3)),
            Err(BackupError::NoRetentionRule)
        ));
    }

    #[test]
    fn keep_last_keeps_the_newest_whatever_their_days() {
        let mut times = nightly(5);
        times.push(at("2026-11-25T15:00:00Z"));
        let policy = Retention {
            last: 2,
            ..Retention::default()
        };
        assert_eq!(
            kept(policy, &times),
            ["2026-11-25T03:00:00Z", "2026-11-25T15:00:00Z"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let times = [
            at("2026-11-23T03:00:00Z"),
            at("2026-11-24T01:00:00Z"),
            at("2026-11-24T23:59:59Z"),
            // Same instant as a local evening elsewhere: days are UTC days.
            at("2026-11-25T00:30:00Z"),
        ];
        let policy = Retention {
            daily: 2,
            ..Retention::default()
        };
        assert_eq!(
            kept(policy, &times),
            ["2026-11-24T23:59:59Z", "2026-11-25T00:30:00Z"]
        );
    }

    #[test]
    fn weekly_uses_iso_weeks_and_monthly_calendar_months() {
        let times = nightly(70);
        let weekly = Retention {
            weekly: 3,
            ..Retention::default()
        };
        // 2026-11-25 is in ISO week 48; the newest of weeks 47 and 46 are their Sundays.
        assert_eq!(
            kept(weekly, &times),
            [
                "2026-11-15T03:00:00Z",
                "2026-11-22T03:00:00Z",
                "2026-11-25T03:00:00Z"
            ]
        );
        let monthly = Retention {
            monthly: 3,
            ..Retention::default()
        };
        assert_eq!(
            kept(monthly, &times),
            [
                "2026-09-30T03:00:00Z",
                "2026-10-31T03:00:00Z",
                "2026-11-25T03:00:00Z"
            ]
        );
    }

    #[test]
    fn an_iso_week_spans_new_year() {
        // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 2026-W53.
        let times = [
            at("2026-12-28T03:00:00Z"),
            at("2026-12-31T03:00:00Z"),
            at("2027-01-03T03:00:00Z"),
            at("2027-01-04T03:00:00Z"),
        ];
        let policy = Retention {
            weekly: 2,
            ..Retention::default()
        };
        assert_eq!(
            kept(policy, &times),
            ["2027-01-03T03:00:00Z", "2027-01-04T03:00:00Z"]
        );
    }

    #[test]
    fn rules_count_independently_and_reasons_are_listed_once_per_backup() {
        let times = nightly(40);
        let policy = Retention {
            last: 2,
            daily: 3,
            weekly: 2,
            monthly: 2,
        };
        let reasons = policy.decide(&times).unwrap();
        let newest = reasons.last().unwrap();
        assert_eq!(
            newest,
            &[Reason::Last, Reason::Daily, Reason::Weekly, Reason::Monthly]
        );
        assert_eq!(
            kept(policy, &times),
            [
                // Monthly: the newest of October.
                "2026-10-31T03:00:00Z",
                // Weekly: the newest of ISO week 47.
                "2026-11-22T03:00:00Z",
                // Daily: the three newest days (two of them also the last two).
                "2026-11-23T03:00:00Z",
                "2026-11-24T03:00:00Z",
                "2026-11-25T03:00:00Z",
            ]
        );
        let removed = reasons.iter().filter(|r| r.is_empty()).count();
        assert_eq!(removed, 35);
    }

    #[test]
    fn the_order_of_the_input_does_not_matter() {
        let mut times = nightly(20);
        let policy = Retention {
            daily: 4,
            weekly: 2,
            ..Retention::default()
        };
        let sorted = kept(policy, &times);
        times.reverse();
        let mut reversed = kept(policy, &times);
        reversed.reverse();
        assert_eq!(sorted, reversed);
    }
}
