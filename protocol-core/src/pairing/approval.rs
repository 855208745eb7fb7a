//! Operator approval of a pairing: `Pending -> Approved | Rejected`, then
//! `Approved -> Completed`; a pending or approved pairing whose deadline passes is
//! `Expired`. Plain serde data the store persists.

use serde::{Deserialize, Serialize};

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
    /// Unix milliseconds after which an undecided or unfinished pairing expires.
    pub deadline_ms: u64,
    /// When the state last changed.
    pub changed_ms: u64,
}

impl Approval {
    /// A pairing that waits for the operator. `required == false` starts it approved.
    pub fn new(now_ms: u64, deadline_ms: u64, required: bool) -> Self {
        Self {
            state: if required {
                ApprovalState::Pending
            } else {
                ApprovalState::Approved
            },
            deadline_ms,
            changed_ms: now_ms,
        }
    }

    fn go(&mut self, now_ms: u64, to: ApprovalState) -> Result<ApprovalState, ApprovalError> {
        self.tick(now_ms);
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
        self.changed_ms = now_ms;
        Ok(to)
    }

    pub fn approve(&mut self, now_ms: u64) -> Result<ApprovalState, ApprovalError> {
        self.go(now_ms, ApprovalState::Approved)
    }

    pub fn reject(&mut self, now_ms: u64) -> Result<ApprovalState, ApprovalError> {
        self.go(now_ms, ApprovalState::Rejected)
    }

    pub fn complete(&mut self, now_ms: u64) -> Result<ApprovalState, ApprovalError> {
        self.go(now_ms, ApprovalState::Completed)
    }

    /// Applies the deadline; returns the state now.
    pub fn tick(&mut self, now_ms: u64) -> ApprovalState {
        if matches!(self.state, ApprovalState::Pending | ApprovalState::Approved)
            && now_ms >= self.deadline_ms
        {
            self.state = ApprovalState::Expired;
            self.changed_ms = now_ms;
        }
        self.state
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ApprovalState::*;

    #[test]
    fn transitions() {
        let mut a = Approval::new(0, 100, true);
        assert_eq!(a.state, Pending);
        assert_eq!(
            a.complete(1),
            Err(ApprovalError {
                from: Pending,
                to: Completed
            })
        );
        assert_eq!(a.approve(2), Ok(Approved));
        assert_eq!(
            a.reject(3),
            Err(ApprovalError {
                from: Approved,
                to: Rejected
            })
        );
        assert_eq!(a.complete(4), Ok(Completed));
        assert_eq!(a.tick(1_000), Completed);

        let mut r = Approval::new(0, 100, true);
        assert_eq!(r.reject(5), Ok(Rejected));
        assert!(r.approve(6).is_err());

        let mut e = Approval::new(0, 100, true);
        assert_eq!(
            e.approve(100),
            Err(ApprovalError {
                from: Expired,
                to: Approved
            })
        );
        assert_eq!(Approval::new(0, 100, false).state, Approved);
    }
}
