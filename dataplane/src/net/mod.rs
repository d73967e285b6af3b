//! Network front ends: the glue between sockets and the sans-IO protocol sessions.

pub mod monero;
pub mod quic;
pub mod sv1;
pub mod sv2;
pub mod wire;

pub use otedama_shared::clock::now_s;

use std::rc::Rc;

use otedama_shared::ipc::Refusal;
use otedama_shared::limits::STRATUM_LINE_BYTES_MAX;
use otedama_shared::sv1::{LineFramer, LineStep};

use crate::rt::gate::Gate;
use crate::rt::Core;
use wire::Wire;

/// The read loop of the line-based front ends (Stratum V1, Monero's dialect): each line is
/// taken only while the connection and the core have room for another share in flight
/// (`Core::has_room`, and `gate` too if given); at a bound the rest of the read is held
/// and handled once there is room, before anything more is read. `handle_line` runs one
/// line (`Err` closes the connection with that reason); `is_mining` says whether the
/// miner has logged in (its login deadline then stops). Returns why the connection ended.
pub(crate) async fn read_lines(
    core: &Rc<Core>,
    wire: &Rc<Wire>,
    gate: Option<&Gate>,
    mut handle_line: impl FnMut(&[u8]) -> Result<(), &'static str>,
    is_mining: impl Fn() -> bool,
) -> &'static str {
    let mut framer = LineFramer::new(STRATUM_LINE_BYTES_MAX);
    let has_room = || core.has_room(&wire.awaiting_ack) && gate.is_none_or(Gate::has_room);
    loop {
        let mut close_reason = None;
        let mut on_line = |line: &[u8]| {
            if !has_room() {
                return LineStep::Pause;
            }
            match handle_line(line) {
                Ok(()) => LineStep::Next,
                Err(reason) => {
                    close_reason = Some(reason);
                    LineStep::Stop
                }
            }
        };
        let fed = if framer.held_bytes() > 0 {
            while !has_room() {
                wire.wait_for_room(core).await;
                if let Some(gate) = gate {
                    wire.wait_at(gate).await;
                }
            }
            if wire.is_closed() {
                return "closed by the pool";
            }
            framer.resume(&mut on_line)
        } else {
            let read = match wire.read_for_session(core).await {
                Ok(read) => read,
                Err(reason) => return reason,
            };
            let scratch = core.receive_buffer.borrow();
            framer.feed_pausable(&scratch[..read], &mut on_line)
        };
        match (fed, close_reason) {
            (Err(_), _) => {
                core.counters.refused(Refusal::Oversize, 1);
                return "line too long";
            }
            (Ok(_), Some(reason)) => return reason,
            (Ok(_), None) => {}
        }
        core.note_partial_line(wire, framer.buffered_bytes() > 0, now_s());
        if !wire.logged_in.get() && is_mining() {
            wire.logged_in.set(true);
        }
    }
}
