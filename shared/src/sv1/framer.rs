//! Splits a Stratum byte stream into lines, enforcing `STRATUM_LINE_BYTES_MAX`.

/// A line grew past the limit without a newline; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {0} bytes")]
pub struct LineTooLong(pub usize);

/// Buffers received bytes and yields complete lines without their `\n` (and `\r`).
#[derive(Debug)]
pub struct LineFramer {
    buffer: Vec<u8>,
    consumed: usize,
    scanned: usize,
    line_bytes_max: usize,
}

impl LineFramer {
    pub fn new(line_bytes_max: usize) -> Self {
        LineFramer {
            buffer: Vec::new(),
            consumed: 0,
            scanned: 0,
            line_bytes_max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete, non-blank line, `Ok(None)` if more bytes are needed, or an error
    /// once the pending line exceeds the limit.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        loop {
            let start = self.consumed;
            let search_from = self.scanned.max(start);
            match self.buffer[search_from..].iter().position(|&b| b == b'\n') {
                Some(offset) => {
                    let end = search_from + offset;
                    self.consumed = end + 1;
                    self.scanned = end + 1;
                    if end + 1 - start > self.line_bytes_max {
                        return Err(LineTooLong(self.line_bytes_max));
                    }
                    let mut line = &self.buffer[start..end];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Ok(Some(&self.buffer[start..start + line.len()]));
                }
                None => {
                    self.scanned = self.buffer.len();
                    if self.buffer.len() - start >= self.line_bytes_max {
                        return Err(LineTooLong(self.line_bytes_max));
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Bytes held that do not yet form a line.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_pushes_and_strips_cr() {
        let mut framer = LineFramer::new(64);
        framer.push(b"{\"a\":1}\r\n{\"b\"");
        assert_eq!(framer.next_line().unwrap(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(framer.next_line().unwrap(), None);
        framer.push(b":2}\n\n  \n");
        assert_eq!(framer.next_line().unwrap(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(framer.next_line().unwrap(), None);
        assert_eq!(framer.pending_bytes(), 0);
    }

    #[test]
    fn line_at_the_limit_passes_and_one_over_fails() {
        let limit = 16;
        let mut framer = LineFramer::new(limit);
        let mut exact = vec![b'x'; limit - 1];
        exact.push(b'\n');
        framer.push(&exact);
        assert_eq!(framer.next_line().unwrap().unwrap().len(), limit - 1);

        let mut over = vec![b'x'; limit];
        over.push(b'\n');
        framer.push(&over);
        assert_eq!(framer.next_line(), Err(LineTooLong(limit)));
    }

    #[test]
    fn unterminated_line_fails_once_it_reaches_the_limit() {
        let mut framer = LineFramer::new(16);
        framer.push(&[b'x'; 15]);
        assert_eq!(framer.next_line(), Ok(None));
        framer.push(b"x");
        assert_eq!(framer.next_line(), Err(LineTooLong(16)));
    }
}
