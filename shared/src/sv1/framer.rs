//! Splits a Stratum byte stream into lines, enforcing `STRATUM_LINE_BYTES_MAX`.

use std::ops::ControlFlow;

/// A line grew past the limit without a newline; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {0} bytes")]
pub struct LineTooLong(pub usize);

/// What a line handler asks of the framer after a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineStep {
    /// The line is handled; go on.
    Next,
    /// The line was not handled: keep it and everything after it for `resume` (the pool
    /// is at a bound and waits for room before it takes more).
    Pause,
    /// Stop here; the rest is dropped (the connection is closing).
    Stop,
}

/// Cuts received bytes into complete lines without their `\n` (and `\r`), skipping blank
/// ones; it holds only the start of a line that has not ended yet, and, after a pause,
/// what was read and not yet handled.
#[derive(Debug)]
pub struct LineFramer {
    /// The unfinished line from earlier chunks; empty (and unallocated) between lines.
    buffer: Vec<u8>,
    /// Bytes read but not yet handled, from the line a handler paused at.
    held: Vec<u8>,
    line_bytes_max: usize,
}

impl LineFramer {
    pub fn new(line_bytes_max: usize) -> Self {
        LineFramer {
            buffer: Vec::new(),
            held: Vec::new(),
            line_bytes_max,
        }
    }

    /// Cuts a received chunk into lines for `on_line`, reading complete lines straight out
    /// of `chunk`. Only a line split across chunks is copied, into a buffer that is freed
    /// once the line completes, so an idle connection holds no receive buffer. Stops early
    /// when `on_line` breaks (the rest of the chunk is dropped: the connection is closing).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, LineTooLong> {
        let step = self.feed_pausable(chunk, |line| match on_line(line) {
            ControlFlow::Continue(()) => LineStep::Next,
            ControlFlow::Break(()) => LineStep::Stop,
        })?;
        Ok(if step == LineStep::Stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    /// `feed`, where the handler may also pause: the line it paused at and the rest of the
    /// chunk are held (`held_bytes`) until `resume`. Feed nothing new while bytes are held.
    pub fn feed_pausable(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> LineStep,
    ) -> Result<LineStep, LineTooLong> {
        debug_assert!(self.held.is_empty(), "resume before feeding more");
        let mut deliver = |raw: &[u8]| {
            let mut line = raw.strip_suffix(b"\n").unwrap_or(raw);
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                LineStep::Next
            } else {
                on_line(line)
            }
        };
        let mut rest = chunk;
        if !self.buffer.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.buffer.extend_from_slice(rest);
                if self.buffer.len() >= self.line_bytes_max {
                    return Err(LineTooLong(self.line_bytes_max));
                }
                return Ok(LineStep::Next);
            };
            self.buffer.extend_from_slice(&rest[..=end]);
            rest = &rest[end + 1..];
            if self.buffer.len() > self.line_bytes_max {
                return Err(LineTooLong(self.line_bytes_max));
            }
            let line = std::mem::take(&mut self.buffer);
            match deliver(&line) {
                LineStep::Next => {}
                LineStep::Pause => {
                    let mut held = line;
                    held.extend_from_slice(rest);
                    self.held = held;
                    return Ok(LineStep::Pause);
                }
                LineStep::Stop => return Ok(LineStep::Stop),
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if end + 1 > self.line_bytes_max {
                return Err(LineTooLong(self.line_bytes_max));
            }
            match deliver(&rest[..=end]) {
                LineStep::Next => {}
                LineStep::Pause => {
                    self.held = rest.to_vec();
                    return Ok(LineStep::Pause);
                }
                LineStep::Stop => return Ok(LineStep::Stop),
            }
            rest = &rest[end + 1..];
        }
        if rest.len() >= self.line_bytes_max {
            return Err(LineTooLong(self.line_bytes_max));
        }
        self.buffer.extend_from_slice(rest);
        Ok(LineStep::Next)
    }

    /// Goes on with the bytes held at a pause, as `feed_pausable` would.
    pub fn resume(
        &mut self,
        on_line: impl FnMut(&[u8]) -> LineStep,
    ) -> Result<LineStep, LineTooLong> {
        let held = std::mem::take(&mut self.held);
        self.feed_pausable(&held, on_line)
    }

    /// Bytes of a partial line held between chunks.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes read and held at a pause, not yet handled.
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks_and_strips_cr() {
        let mut framer = LineFramer::new(64);
        let lines = fed_lines(&mut framer, &[b"{\"a\":1}\r\n{\"b\""]).unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec()]);
        let lines = fed_lines(&mut framer, &[b":2}\n\n  \n"]).unwrap();
        assert_eq!(lines, vec![b"{\"b\":2}".to_vec()]);
        assert_eq!(framer.buffered_bytes(), 0);
    }

    #[test]
    fn line_at_the_limit_passes_and_one_over_fails() {
        // The pool's limit, newline included, then a small one.
        for limit in [crate::limits::STRATUM_LINE_BYTES_MAX, 16] {
            line_limit_holds_at(limit);
        }
    }

    fn line_limit_holds_at(limit: usize) {
        let mut framer = LineFramer::new(limit);
        let mut exact = vec![b'x'; limit - 1];
        exact.push(b'\n');
        let lines = fed_lines(&mut framer, &[&exact]).unwrap();
        assert_eq!(lines[0].len(), limit - 1);

        let mut over = vec![b'x'; limit];
        over.push(b'\n');
        assert_eq!(fed_lines(&mut framer, &[&over]), Err(LineTooLong(limit)));
    }

    #[test]
    fn unterminated_line_fails_once_it_reaches_the_limit() {
        let mut framer = LineFramer::new(16);
        assert_eq!(fed_lines(&mut framer, &[&[b'x'; 15]]), Ok(vec![]));
        assert_eq!(fed_lines(&mut framer, &[b"x"]), Err(LineTooLong(16)));
    }

    fn fed_lines(framer: &mut LineFramer, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        let mut lines = Vec::new();
        for chunk in chunks {
            let _ = framer.feed(chunk, |line| {
                lines.push(line.to_vec());
                ControlFlow::Continue(())
            })?;
        }
        Ok(lines)
    }

    #[test]
    fn feed_splits_lines_across_any_chunking_and_frees_the_carry() {
        let stream = b"{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}\n";
        for split in 0..stream.len() {
            let mut framer = LineFramer::new(64);
            let lines = fed_lines(&mut framer, &[&stream[..split], &stream[split..]]).unwrap();
            assert_eq!(
                lines,
                vec![
                    b"{\"a\":1}".to_vec(),
                    b"{\"b\":2}".to_vec(),
                    b"{\"c\":3}".to_vec()
                ]
            );
            assert_eq!(framer.buffered_bytes(), 0);
            assert_eq!(framer.buffer.capacity(), 0, "no buffer kept once idle");
        }
    }

    #[test]
    fn a_pause_keeps_the_line_and_the_rest_for_resume_under_any_chunking() {
        let stream = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n{\"d\"";
        for split in 0..stream.len() {
            let mut framer = LineFramer::new(64);
            let mut handled = Vec::new();
            let mut room = 1;
            let mut handler = |line: &[u8], room: &mut usize| {
                if *room == 0 {
                    return LineStep::Pause;
                }
                *room -= 1;
                handled.push(line.to_vec());
                LineStep::Next
            };
            for chunk in [&stream[..split], &stream[split..]] {
                let mut step = framer
                    .feed_pausable(chunk, |line| handler(line, &mut room))
                    .unwrap();
                // Room for one more line at a time until the held bytes are used up.
                while step == LineStep::Pause {
                    room = 1;
                    step = framer.resume(|line| handler(line, &mut room)).unwrap();
                }
                assert_eq!(framer.held_bytes(), 0);
            }
            assert_eq!(
                handled,
                vec![
                    b"{\"a\":1}".to_vec(),
                    b"{\"b\":2}".to_vec(),
                    b"{\"c\":3}".to_vec()
                ],
                "split at {split}"
            );
            assert_eq!(
                framer.buffered_bytes(),
                4,
                "the unfinished line stays buffered"
            );
        }
    }

    #[test]
    fn feed_enforces_the_limit_at_its_edge() {
        let limit = 16;
        let exact = [vec![b'x'; limit - 1], b"\n".to_vec()].concat();
        let over = [vec![b'x'; limit], b"\n".to_vec()].concat();
        assert_eq!(
            fed_lines(&mut LineFramer::new(limit), &[&exact])
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            fed_lines(&mut LineFramer::new(limit), &[&exact[..5], &exact[5..]])
                .unwrap()
                .len(),
            1
        );
        assert!(fed_lines(&mut LineFramer::new(limit), &[&over]).is_err());
        assert!(fed_lines(&mut LineFramer::new(limit), &[&over[..5], &over[5..]]).is_err());
        assert!(fed_lines(&mut LineFramer::new(limit), &[&over[..limit]]).is_err());
    }
}
