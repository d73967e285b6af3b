//! Request parsing without a `serde_json::Value`: the request id kept as the exact JSON the
//! miner sent (so it is echoed byte for byte), and `mining.submit` read in place, borrowing
//! its strings from the line. Everything else goes through the general parser.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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
#[derive(Deserialize)]
pub struct BorrowedRequest<'a> {
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub method: &'a str,
    #[serde(borrow)]
    pub params: StringParams<'a>,
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
    serde_json::from_slice(line).ok()
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
        assert_eq!(request.id.unwrap().get(), "9");
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
}
