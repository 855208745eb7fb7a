//! Operator approval of a pairing: `Pending -> Approved | Rejected`, then
//! `Approved -> Completed`; a pending or approved pairing whose deadline passes is
//! `Expired`. Plain serde data the store persists (instants as milliseconds).

use serde::{Deserialize, Serialize};

use crate::time::Instant;

/// Where a pairing stands with the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApprovalState {
    /// Waiting for the operator.
    Pending,
    Approved,
    Rejected,
    /// The node holds its certificate.
    Completed,
    Expired,
}

/// A transition the state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalError {
    pub from: ApprovalState,
    pub to: ApprovalState,
}

impl core::fmt::Display for ApprovalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "a pairing cannot go from {:?} to {:?}",
            self.from, self.to
        )
    }
}

impl core::error::Error for ApprovalError {}

/// An approval record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub state: ApprovalState,
    /// From this instant on, an undecided or unfinished pairing is expired (stored as
    /// `deadline_ms`).
    #[serde(rename = "deadline_ms", with = "super::serde_instant")]
    pub deadline: Instant,
    /// When the state last changed (stored as `changed_ms`).
    #[serde(rename = "changed_ms", with = "super::serde_instant")]
    pub changed: Instant,
}

impl Approval {
    /// A pairing that waits for the operator. `required == false` starts it approved.
    pub fn new(now: Instant, deadline: Instant, required: bool) -> Self {
        Self {
            state: if required {
                ApprovalState::Pending
            } else {
                ApprovalState::Approved
            },
            deadline,
            changed: now,
        }
    }

    /// Moves to `to` if the state (after the deadline is applied) allows it; an error
    /// changes nothing but that expiry.
    fn go(&mut self, now: Instant, to: ApprovalState) -> Result<ApprovalState, ApprovalError> {
        self.tick(now);
        use ApprovalState::*;
        let ok = matches!(
            (self.state, to),
            (Pending, Approved) | (Pending, Rejected) | (Approved, Completed)
        );
        if !ok {
            return Err(ApprovalError {
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.changed = now;
        Ok(to)
    }

    pub fn approve(&mut self, now: Instant) -> Result<ApprovalState, ApprovalError> {
        self.go(now, ApprovalState::Approved)
    }

    pub fn reject(&mut self, now: Instant) -> Result<ApprovalState, ApprovalError> {
        self.go(now, ApprovalState::Rejected)
    }

    pub fn complete(&mut self, now: Instant) -> Result<ApprovalState, ApprovalError> {
        self.go(now, ApprovalState::Completed)
    }

    /// Applies the deadline; returns the state now.
    pub fn tick(&mut self, now: Instant) -> ApprovalState {
        if matches!(self.state, ApprovalState::Pending | ApprovalState::Approved)
            && now >= self.deadline
        {
            self.state = ApprovalState::Expired;
            self.changed = now;
        }
        self.state
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ApprovalState::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn transitions() {
        let mut a = Approval::new(at(0), at(100), true);
        assert_eq!(a.state, Pending);
        assert_eq!(
            a.complete(at(1)),
            Err(ApprovalError {
                from: Pending,
                to: Completed
            })
        );
        assert_eq!(a.approve(at(2)), Ok(Approved));
        assert_eq!(a.changed, at(2));
        assert_eq!(
            a.reject(at(3)),
            Err(ApprovalError {
                from: Approved,
                to: Rejected
            })
        );
        assert_eq!(a.complete(at(4)), Ok(Completed));
        assert_eq!(a.tick(at(1_000)), Completed);

        let mut r = Approval::new(at(0), at(100), true);
        assert_eq!(r.reject(at(5)), Ok(Rejected));
        assert!(r.approve(at(6)).is_err());

        let mut e = Approval::new(at(0), at(100), true);
        assert_eq!(
            e.approve(at(100)),
            Err(ApprovalError {
                from: Expired,
                to: Approved
            })
        );
        assert_eq!(Approval::new(at(0), at(100), false).state, Approved);
    }
}
