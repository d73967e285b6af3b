//! Who may hold a TCP connection, and for how long before it must prove itself: the cap on
//! connections per peer address, and the deadlines on a connection's login and on a line
//! (or frame) it has started and not finished. These keep connection floods and slowloris
//! peers from holding descriptors and memory for the 900 s idle timeout.

use std::collections::VecDeque;
use std::rc::Weak;

pub use otedama_shared::bans::{AddressCounts, AddressSlot};

use crate::net::wire::Wire;

/// Seconds a Stratum connection has to log in (V1: subscribe and authorize; V2: the Noise
/// handshake, SetupConnection and a first channel). Real miners do it in well under a
/// second; a socket that has not by then is closed, whatever it is still sending.
pub const STRATUM_LOGIN_DEADLINE_S: u64 = 10;
/// Seconds a started line (V1) or frame (V2) may stay unfinished. A 4 KiB line arrives in
/// one or two segments; a peer trickling bytes to keep a socket open is closed.
pub const STRATUM_PARTIAL_LINE_DEADLINE_S: u64 = 10;

/// What a connection must have done by its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    Login,
    PartialLine,
}

/// One core's pending deadlines, kept in due order per kind (almost every entry is due
/// one fixed length from now and goes at the back; one due earlier is put in its place).
/// Entries hold the wire weakly: a closed connection costs nothing until its entry comes
/// due. A wire has at most one entry of each kind, so the queues never hold more than two
/// entries per connection.
#[derive(Default)]
pub struct Deadlines {
    login: VecDeque<(u64, Weak<Wire>)>,
    partial_line: VecDeque<(u64, Weak<Wire>)>,
}

impl Deadlines {
    pub fn push(&mut self, kind: Deadline, due_s: u64, wire: Weak<Wire>) {
        let queue = match kind {
            Deadline::Login => &mut self.login,
            Deadline::PartialLine => &mut self.partial_line,
        };
        // The clock may have stepped, or the deadline began earlier than now.
        let place = queue.partition_point(|(queued_s, _)| *queued_s <= due_s);
        queue.insert(place, (due_s, wire));
    }

    /// Takes every entry due at `now_s`.
    pub fn take_due(&mut self, now_s: u64) -> Vec<(Deadline, Weak<Wire>)> {
        let mut due = Vec::new();
        for (kind, queue) in [
            (Deadline::Login, &mut self.login),
            (Deadline::PartialLine, &mut self.partial_line),
        ] {
            while queue.front().is_some_and(|(due_s, _)| *due_s <= now_s) {
                let (_, wire) = queue.pop_front().expect("front exists");
                due.push((kind, wire));
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.login.len() + self.partial_line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_in_order_and_only_when_due() {
        let mut deadlines = Deadlines::default();
        deadlines.push(Deadline::Login, 10, Weak::new());
        deadlines.push(Deadline::Login, 11, Weak::new());
        deadlines.push(Deadline::PartialLine, 10, Weak::new());
        // One due earlier than the queue's back is still taken in time.
        deadlines.push(Deadline::Login, 5, Weak::new());
        assert_eq!(deadlines.take_due(5).len(), 1);
        assert!(deadlines.take_due(9).is_empty());
        let due: Vec<Deadline> = deadlines.take_due(10).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, vec![Deadline::Login, Deadline::PartialLine]);
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.take_due(11).len(), 1);
        assert!(deadlines.is_empty());
    }
}
