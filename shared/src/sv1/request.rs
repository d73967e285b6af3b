//! Request parsing without a `serde_json::Value`: the request id kept as the exact JSON the
//! miner sent (so it is echoed byte for byte), and `mining.submit` read in place, borrowing
//! its strings from the line. Everything else goes through the general parser.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest request id the pool echoes; ids are usually small integers.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

/// A JSON-RPC request id, kept as the miner wrote it. Integers, the common case, need no
/// allocation; strings and other values keep their exact JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestId {
    Null,
    Integer(i64),
    Json(Box<str>),
}

impl RequestId {
    /// From the raw JSON of an `id` member. `None` if it is too long to echo.
    pub fn from_json(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "null" {
            return Some(RequestId::Null);
        }
        if let Ok(integer) = text.parse::<i64>() {
            return Some(RequestId::Integer(integer));
        }
        (text.len() <= REQUEST_ID_BYTES_MAX).then(|| RequestId::Json(text.into()))
    }

    pub fn from_value(value: Option<&serde_json::Value>) -> Self {
        match value {
            None | Some(serde_json::Value::Null) => RequestId::Null,
            Some(value) => {
                let text = serde_json::to_string(value).expect("JSON values serialize");
                RequestId::from_json(&text).unwrap_or(RequestId::Null)
            }
        }
    }

    /// Appends the id's JSON text.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            RequestId::Null => out.extend_from_slice(b"null"),
            RequestId::Integer(integer) => {
                let mut buffer = itoa::Buffer::new();
                out.extend_from_slice(buffer.format(*integer).as_bytes());
            }
            RequestId::Json(text) => out.extend_from_slice(text.as_bytes()),
        }
    }
}

/// `mining.submit` has 5 params, or 6 with BIP310 version bits.
pub const SUBMIT_PARAMS_MAX: usize = 6;

/// A request whose params are all plain strings, borrowed from the line. Parsing fails (and
/// the caller falls back to the general parser) for escapes, non-string params or more than
/// `SUBMIT_PARAMS_MAX` of them.
pub struct BorrowedRequest<'a> {
    /// The id's JSON text exactly as sent (`None` when absent or `null`).
    pub id: Option<&'a str>,
    pub method: &'a str,
    pub params: StringParams<'a>,
}

/// `BorrowedRequest` as serde reads it.
#[derive(Deserialize)]
struct SerdeRequest<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: &'a str,
    #[serde(borrow)]
    params: StringParams<'a>,
}

/// Up to `SUBMIT_PARAMS_MAX` borrowed strings.
pub struct StringParams<'a> {
    values: [&'a str; SUBMIT_PARAMS_MAX],
    len: usize,
}

impl<'a> StringParams<'a> {
    pub fn as_slice(&self) -> &[&'a str] {
        &self.values[..self.len]
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StringParams<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamsVisitor;
        impl<'de> Visitor<'de> for ParamsVisitor {
            type Value = StringParams<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "at most {SUBMIT_PARAMS_MAX} strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut params = StringParams {
                    values: [""; SUBMIT_PARAMS_MAX],
                    len: 0,
                };
                while let Some(value) = seq.next_element::<&'de str>()? {
                    if params.len == SUBMIT_PARAMS_MAX {
                        return Err(de::Error::invalid_length(params.len + 1, &self));
                    }
                    params.values[params.len] = value;
                    params.len += 1;
                }
                Ok(params)
            }
        }
        deserializer.deserialize_seq(ParamsVisitor)
    }
}

/// Parses `line` in place if it is a request with only plain-string params.
pub fn parse_borrowed(line: &[u8]) -> Option<BorrowedRequest<'_>> {
    scan_request(line).or_else(|| parse_with_serde(line))
}

fn parse_with_serde(line: &[u8]) -> Option<BorrowedRequest<'_>> {
    let request: SerdeRequest<'_> = serde_json::from_slice(line).ok()?;
    Some(BorrowedRequest {
        id: request.id.map(RawValue::get),
        method: request.method,
        params: request.params,
    })
}

/// The shape nearly every share arrives in, read by a scanner instead of serde (which cost a
/// tenth of a share's time on one core, see BENCHMARKS.md): one object with the members
/// `id` (an integer, a plain string or `null`), `method` and `params` (at most
/// `SUBMIT_PARAMS_MAX` plain strings), in any order, with JSON whitespace anywhere between
/// tokens. A plain string is printable ASCII without quotes or backslashes.
///
/// Invariant: whatever this accepts, serde reads the same way (`the_scanner_agrees_with_serde`
/// checks it on seeded random lines); anything else (another member, an escape, a float id,
/// a duplicate member, non-ASCII) returns `None` and goes to serde, so the scanner can make
/// a request fail only where serde would have too.
fn scan_request(line: &[u8]) -> Option<BorrowedRequest<'_>> {
    let mut scanner = Scanner { line, at: 0 };
    scanner.expect(b'{')?;
    let (mut id, mut method, mut params) = (None, None, None);
    loop {
        let key = scanner.plain_string()?;
        scanner.expect(b':')?;
        match key {
            "id" if id.is_none() => id = Some(scanner.id()?),
            "method" if method.is_none() => method = Some(scanner.plain_string()?),
            "params" if params.is_none() => params = Some(scanner.string_params()?),
            _ => return None,
        }
        match scanner.next_token()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    scanner.skip_whitespace();
    if scanner.at != line.len() {
        return None;
    }
    Some(BorrowedRequest {
        id: id.flatten(),
        method: method?,
        params: params?,
    })
}

/// A request line read as JSON-RPC up to its method, as both line dialects (Stratum V1
/// and Monero's) read it before their own methods and params.
#[derive(Debug, PartialEq)]
pub enum Envelope {
    /// Not JSON at all: the connection closes.
    NotJson,
    /// Refused with this message, under this id.
    Refused(RequestId, &'static str),
    /// A reply to something the pool sent (it sends only notifications): nothing to do.
    Reply,
    /// A request; `params` is `Null` when absent.
    Request {
        id: RequestId,
        method: String,
        params: Value,
    },
}

pub fn read_envelope(line: &[u8]) -> Envelope {
    let Ok(message) = serde_json::from_slice::<Value>(line) else {
        return Envelope::NotJson;
    };
    let Value::Object(mut request) = message else {
        return Envelope::Refused(RequestId::Null, "request must be a JSON object");
    };
    let id = RequestId::from_value(request.get("id"));
    let method = match request.remove("method") {
        None => return Envelope::Reply,
        Some(Value::String(method)) => method,
        Some(_) => return Envelope::Refused(id, "method must be a string"),
    };
    Envelope::Request {
        id,
        method,
        params: request.remove("params").unwrap_or(Value::Null),
    }
}

/// The bytes a plain string holds: printable ASCII but the quote and the backslash. One
/// table load a byte instead of four comparisons.
const PLAIN_STRING_BYTES: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        plain[byte] = byte != b'"' as usize && byte != b'\\' as usize;
        byte += 1;
    }
    plain
};

/// How many bytes at the start of `bytes` a plain string may hold (`PLAIN_STRING_BYTES`),
/// eight at a time: a byte under 0x20 or over 0x7e, a quote or a backslash ends the run.
/// Each test below sets a byte's high bit where it fails; a borrow or carry between bytes
/// only spoils bytes after the first one set, so the lowest set bit is exact.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let below_space = word.wrapping_sub(ONES * 0x20) & !word;
        let above_tilde = word.wrapping_add(ONES) | word;
        let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
        let ends = (below_space | above_tilde | quote | backslash) & HIGH_BITS;
        if ends != 0 {
            return at + ends.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    let rest = &bytes[at..];
    at + rest
        .iter()
        .position(|&byte| !PLAIN_STRING_BYTES[usize::from(byte)])
        .unwrap_or(rest.len())
}

/// `bytes` as text, for bytes the scanner has already read as printable ASCII (a plain
/// run, its quotes, a sign and digits). Checking them as UTF-8 again cost about 3 % of a
/// SHA256d share's time on one core (BENCHMARKS.md, issue 19).
fn ascii_str(bytes: &[u8]) -> &str {
    debug_assert!(
        bytes.is_ascii(),
        "the scanner passed bytes that are not ASCII"
    );
    // SAFETY: every byte is below 0x80 (the callers' scans, checked again in debug
    // builds), and ASCII is UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

struct Scanner<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.line.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after any whitespace, consumed.
    fn next_token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.line.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next_token()? == wanted).then_some(())
    }

    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = plain_run(&self.line[start..]);
        // The closing quote right there: `expect` would skip whitespace before it.
        self.at = start + length + 1;
        if self.line.get(start + length) != Some(&b'"') {
            return None;
        }
        Some(ascii_str(&self.line[start..start + length]))
    }

    /// The id's JSON text, `None` inside for `null`.
    fn id(&mut self) -> Option<Option<&'a str>> {
        self.skip_whitespace();
        let rest = &self.line[self.at..];
        if rest.starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        if rest.first() == Some(&b'"') {
            let start = self.at;
            self.plain_string()?;
            // The quotes and the plain run between them.
            return Some(Some(ascii_str(&self.line[start..self.at])));
        }
        // An integer as JSON writes it: no leading zeros, no fraction or exponent.
        let sign = usize::from(rest.first() == Some(&b'-'));
        let digits = rest[sign..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let integer_ends = matches!(
            rest.get(sign + digits),
            Some(b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
        );
        if digits == 0 || (digits > 1 && rest[sign] == b'0') || !integer_ends {
            return None;
        }
        let text = &rest[..sign + digits];
        self.at += text.len();
        // A sign and digits.
        Some(Some(ascii_str(text)))
    }

    fn string_params(&mut self) -> Option<StringParams<'a>> {
        self.expect(b'[')?;
        let mut params = StringParams {
            values: [""; SUBMIT_PARAMS_MAX],
            len: 0,
        };
        self.skip_whitespace();
        if self.line.get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(params);
        }
        loop {
            if params.len == SUBMIT_PARAMS_MAX {
                return None;
            }
            params.values[params.len] = self.plain_string()?;
            params.len += 1;
            match self.next_token()? {
                b',' => {}
                b']' => return Some(params),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_echoed_exactly() {
        for text in ["1", "-7", "null", r#""abc""#, "1.5", r#"{"a":1}"#] {
            let id = RequestId::from_json(text).unwrap();
            let mut out = Vec::new();
            id.write_to(&mut out);
            assert_eq!(out, text.as_bytes());
        }
        // The limit counts the id's JSON text, quotes included: exactly that many bytes
        // are echoed, one more is not.
        let at_limit = format!("\"{}\"", "x".repeat(REQUEST_ID_BYTES_MAX - 2));
        let mut out = Vec::new();
        RequestId::from_json(&at_limit).unwrap().write_to(&mut out);
        assert_eq!(out, at_limit.as_bytes());
        let over = format!("\"{}\"", "x".repeat(REQUEST_ID_BYTES_MAX - 1));
        assert!(RequestId::from_json(&over).is_none());
    }

    #[test]
    fn submit_is_parsed_in_place_and_odd_shapes_fall_back() {
        let line = br#"{"params":["w","1a","00000001","65000000","00000002"],"id":9,"method":"mining.submit"}"#;
        let request = parse_borrowed(line).unwrap();
        assert_eq!(request.method, "mining.submit");
        assert_eq!(request.id, Some("9"));
        assert_eq!(request.params.as_slice()[1], "1a");
        assert!(parse_borrowed(br#"{"id":1,"method":"m","params":["a\n"]}"#).is_none());
        assert!(parse_borrowed(br#"{"id":1,"method":"m","params":[1]}"#).is_none());
        // `SUBMIT_PARAMS_MAX` (a BIP310 submit's six) are read in place; seven are not.
        let six =
            parse_borrowed(br#"{"id":1,"method":"m","params":["1","2","3","4","5","6"]}"#).unwrap();
        assert_eq!(six.params.as_slice().len(), SUBMIT_PARAMS_MAX);
        assert_eq!(six.params.as_slice()[5], "6");
        assert!(
            parse_borrowed(br#"{"id":1,"method":"m","params":["1","2","3","4","5","6","7"]}"#)
                .is_none()
        );
    }

    /// The eight-at-a-time run agrees with the byte table: every byte value at every place
    /// of a 20-byte plain string ends it there exactly when the table says it must.
    #[test]
    fn the_plain_run_ends_where_the_table_says() {
        for at in 0..20 {
            for byte in 0..=255u8 {
                let mut bytes = [b'a'; 20];
                bytes[at] = byte;
                let expected = if PLAIN_STRING_BYTES[usize::from(byte)] {
                    20
                } else {
                    at
                };
                assert_eq!(plain_run(&bytes), expected, "byte {byte:#x} at {at}");
                // And with a later non-plain byte, which must not move the end.
                bytes[19] = b'"';
                let expected = expected.min(19);
                assert_eq!(
                    plain_run(&bytes),
                    expected,
                    "byte {byte:#x} at {at}, quote at 19"
                );
            }
        }
    }

    /// A request as owned values, to compare.
    type Read = (Option<String>, String, Vec<String>);

    fn owned(request: Option<BorrowedRequest<'_>>) -> Option<Read> {
        request.map(|request| {
            let params = request.params.as_slice().iter().map(|s| s.to_string());
            (
                request.id.map(str::to_owned),
                request.method.to_owned(),
                params.collect(),
            )
        })
    }

    fn serde_reads(line: &[u8]) -> Option<Read> {
        owned(parse_with_serde(line))
    }

    fn scanner_reads(line: &[u8]) -> Option<Read> {
        owned(scan_request(line))
    }

    /// A random request line, mostly of the shapes miners send, with every variation the
    /// scanner must either read as serde does or leave to serde.
    fn random_line(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        use rand::Rng;
        let space = |rng: &mut rand::rngs::StdRng| -> &'static str {
            [" ", "", "", "", "\t", "\r\n", "  "][rng.gen_range(0..7)]
        };
        // Plain pieces first; an odd one (escape, non-ASCII, DEL) in about one string of six.
        let pieces = [
            "0", "a", "x y", "ff", "w.1", "\\", "\\n", "\\u0041", "é", "\"", "\u{7f}",
        ];
        let string = |rng: &mut rand::rngs::StdRng| -> String {
            let odd = rng.gen_bool(0.15);
            let parts: String = (0..rng.gen_range(0..4))
                .map(|_| pieces[rng.gen_range(0..if odd { pieces.len() } else { 5 })])
                .collect();
            format!("\"{parts}\"")
        };
        let ids = [
            "1",
            "-7",
            "0",
            "-0",
            "01",
            "1.5",
            "1e3",
            "null",
            "true",
            "[1]",
            "-",
            "99999999999999999999",
        ];
        let mut members: Vec<String> = Vec::new();
        if rng.gen_bool(0.9) {
            let id = if rng.gen_bool(0.3) {
                string(rng)
            } else {
                ids[rng.gen_range(0..ids.len())].to_owned()
            };
            members.push(format!("\"id\"{}:{}{id}", space(rng), space(rng)));
        }
        if rng.gen_bool(0.9) {
            let method = if rng.gen_bool(0.7) {
                "\"mining.submit\"".to_owned()
            } else {
                string(rng)
            };
            members.push(format!("\"method\":{}{method}", space(rng)));
        }
        if rng.gen_bool(0.9) {
            let count = rng.gen_range(0..=SUBMIT_PARAMS_MAX + 1);
            let params: Vec<String> = (0..count)
                .map(|_| match rng.gen_range(0..10) {
                    0 => "1".to_owned(),
                    1 => "null".to_owned(),
                    _ => string(rng),
                })
                .collect();
            let separator = format!(",{}", space(rng));
            members.push(format!(
                "\"params\":[{}{}]",
                space(rng),
                params.join(&separator)
            ));
        }
        if rng.gen_bool(0.1) {
            members.push("\"jsonrpc\":\"2.0\"".to_owned());
        }
        if rng.gen_bool(0.05) && !members.is_empty() {
            let again = members[rng.gen_range(0..members.len())].clone();
            members.push(again);
        }
        let shuffled = members.len();
        for i in (1..shuffled).rev() {
            members.swap(i, rng.gen_range(0..=i));
        }
        let separator = format!("{},{}", space(rng), space(rng));
        let mut line = format!(
            "{}{{{}}}{}",
            space(rng),
            members.join(&separator),
            space(rng)
        )
        .into_bytes();
        // Now and then a byte cut, changed or added anywhere.
        if rng.gen_bool(0.2) && !line.is_empty() {
            let at = rng.gen_range(0..line.len());
            match rng.gen_range(0..3) {
                0 => line.truncate(at),
                1 => line[at] = rng.gen(),
                _ => line.insert(at, rng.gen()),
            }
        }
        line
    }

    /// The scanner's invariant: what it reads, serde reads the same way. It must also read
    /// the usual submit itself, or the fast path is gone unnoticed.
    #[test]
    fn the_scanner_agrees_with_serde() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let (mut scanned, mut total) = (0, 0);
        for _ in 0..200_000 {
            let line = random_line(&mut rng);
            let serde = serde_reads(&line);
            if let Some(read) = scanner_reads(&line) {
                scanned += 1;
                assert_eq!(Some(read), serde, "{:?}", String::from_utf8_lossy(&line));
            }
            total += 1;
        }
        // Most generated lines are odd somewhere; a fair share must still be read here.
        assert!(
            scanned > total / 10,
            "the scanner read {scanned} of {total} lines"
        );
        for line in [
            &br#"{"id":4,"method":"mining.submit","params":["w.1","1a","00000001","65000000","00000002"]}"#[..],
            br#"{"params": ["w", "1a", "00000001", "65000000", "00000002", "20000000"], "id": 12, "method": "mining.submit"}"#,
            b"{\"id\":\"a\",\"method\":\"mining.submit\",\"params\":[]}\r",
        ] {
            assert!(scanner_reads(line).is_some(), "{:?}", String::from_utf8_lossy(line));
            assert_eq!(scanner_reads(line), serde_reads(line));
        }
    }
}
