//! The Stratum V2 data types on the wire: little-endian integers, BOOL, U256, and the
//! length-prefixed types with their bounds (STR0_255, B0_32, B0_255, B0_64K, SEQ0_255,
//! SEQ0_64K, OPTION). Decoding borrows from the frame: strings, byte arrays and sequences
//! are slices of the received bytes, never copies.

use std::fmt;

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends inside field {field} (needs {needed} more bytes)")]
    Truncated { field: &'static str, needed: usize },
    #[error("{trailing} bytes after the last field")]
    TrailingBytes { trailing: usize },
    #[error("field {field} is {length} long; at most {max}")]
    TooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("field {field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("OPTION field {field} holds {count} values")]
    BadOption { field: &'static str, count: u8 },
    #[error("unknown message type {msg_type:#04x}")]
    UnknownMessageType { msg_type: u8 },
    #[error("message type {msg_type:#04x} with the channel_msg bit {found}, expected {expected}")]
    ChannelBit {
        msg_type: u8,
        found: bool,
        expected: bool,
    },
}

/// A value that is longer than its type allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{length} is longer than the {max} this type allows")]
pub struct LengthError {
    pub length: usize,
    pub max: usize,
}

/// Reads fields in order from one message's payload.
pub struct Reader<'a> {
    bytes: &'a [u8],
    /// Name of the field being read, for errors.
    pub field: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, field: "" }
    }

    pub fn take(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < length {
            return Err(DecodeError::Truncated {
                field: self.field,
                needed: length - self.bytes.len(),
            });
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            trailing => Err(DecodeError::TrailingBytes { trailing }),
        }
    }
}

/// A message field: how it is written and read.
pub trait Field<'a>: Sized {
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError>;
    fn write(&self, out: &mut Vec<u8>);
}

macro_rules! integer_fields {
    ($($ty:ty),*) => {$(
        impl<'a> Field<'a> for $ty {
            fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_le_bytes(reader.array()?))
            }
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
integer_fields!(u8, u16, u32, u64, f32);

impl<'a> Field<'a> for bool {
    /// Only the least significant bit counts; the spec keeps the others for future flags.
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(reader.array::<1>()?[0] & 1 == 1)
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

/// U256: 32 bytes, as on the wire (a hash's raw bytes, or a little-endian target).
impl<'a> Field<'a> for [u8; 32] {
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        reader.array()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

/// OPTION[U32]: a SEQ0_1, a count of 0 or 1 and then the value.
impl<'a> Field<'a> for Option<u32> {
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match u8::read(reader)? {
            0 => Ok(None),
            1 => Ok(Some(u32::read(reader)?)),
            count => Err(DecodeError::BadOption {
                field: reader.field,
                count,
            }),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.write(out);
            }
        }
    }
}

/// Writes a length prefix of `prefix_bytes` little-endian bytes.
fn write_length(out: &mut Vec<u8>, length: usize, prefix_bytes: usize) {
    out.extend_from_slice(&(length as u32).to_le_bytes()[..prefix_bytes]);
}

fn read_length(reader: &mut Reader<'_>, prefix_bytes: usize) -> Result<usize, DecodeError> {
    let mut bytes = [0u8; 4];
    bytes[..prefix_bytes].copy_from_slice(reader.take(prefix_bytes)?);
    Ok(u32::from_le_bytes(bytes) as usize)
}

/// Byte arrays with a length prefix: `$prefix` bytes of length, at most `$max` bytes.
macro_rules! byte_arrays {
    ($($(#[$doc:meta])* $name:ident, $prefix:literal, $max:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name<'a>(&'a [u8]);

        impl<'a> $name<'a> {
            pub const MAX: usize = $max;

            pub fn new(bytes: &'a [u8]) -> Result<Self, LengthError> {
                if bytes.len() > Self::MAX {
                    return Err(LengthError { length: bytes.len(), max: Self::MAX });
                }
                Ok($name(bytes))
            }

            pub fn as_bytes(&self) -> &'a [u8] {
                self.0
            }
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl<'a> Field<'a> for $name<'a> {
            fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                let length = read_length(reader, $prefix)?;
                if length > Self::MAX {
                    return Err(DecodeError::TooLong { field: reader.field, length, max: Self::MAX });
                }
                Ok($name(reader.take(length)?))
            }
            fn write(&self, out: &mut Vec<u8>) {
                write_length(out, self.0.len(), $prefix);
                out.extend_from_slice(self.0);
            }
        }
    )*};
}

byte_arrays! {
    /// B0_32: an extranonce or extranonce prefix.
    B032, 1, 32;
    /// B0_255.
    B0255, 1, 255;
    /// B0_64K: a coinbase prefix or suffix.
    B064K, 2, 65_535;
}

/// STR0_255: a string of at most 255 bytes. Otedama reads it as UTF-8 (ASCII in practice:
/// user identities, vendors, error codes) and refuses anything else.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Str0255<'a>(&'a str);

impl<'a> Str0255<'a> {
    pub const MAX: usize = 255;

    pub fn new(text: &'a str) -> Result<Self, LengthError> {
        if text.len() > Self::MAX {
            return Err(LengthError {
                length: text.len(),
                max: Self::MAX,
            });
        }
        Ok(Str0255(text))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for Str0255<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'a> Field<'a> for Str0255<'a> {
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let bytes = B0255::read(reader)?.as_bytes();
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 {
            field: reader.field,
        })?;
        Ok(Str0255(text))
    }
    fn write(&self, out: &mut Vec<u8>) {
        B0255(self.0.as_bytes()).write(out);
    }
}

/// Sequences of fixed-size items, kept as the raw bytes of their items: `$item` bytes per
/// item, a `$prefix`-byte count, at most `$max` items.
macro_rules! fixed_sequences {
    ($($(#[$doc:meta])* $name:ident, $item_ty:ty, $item:literal, $prefix:literal, $max:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name<'a>(&'a [u8]);

        impl<'a> $name<'a> {
            pub const MAX: usize = $max;

            /// From the items' bytes laid end to end.
            pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, LengthError> {
                assert!(bytes.len() % $item == 0, "whole items only");
                if bytes.len() / $item > Self::MAX {
                    return Err(LengthError { length: bytes.len() / $item, max: Self::MAX });
                }
                Ok($name(bytes))
            }

            pub fn len(&self) -> usize {
                self.0.len() / $item
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            pub fn as_bytes(&self) -> &'a [u8] {
                self.0
            }

            pub fn iter(&self) -> impl Iterator<Item = $item_ty> + 'a {
                self.0
                    .chunks_exact($item)
                    .map(|chunk| <$item_ty>::from_le_bytes(chunk.try_into().expect("exact chunk")))
            }
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.iter()).finish()
            }
        }

        impl<'a> Field<'a> for $name<'a> {
            fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                let count = read_length(reader, $prefix)?;
                if count > Self::MAX {
                    return Err(DecodeError::TooLong { field: reader.field, length: count, max: Self::MAX });
                }
                Ok($name(reader.take(count * $item)?))
            }
            fn write(&self, out: &mut Vec<u8>) {
                write_length(out, self.len(), $prefix);
                out.extend_from_slice(self.0);
            }
        }
    )*};
}

/// A 32-byte item read as a whole, for `fixed_sequences!`.
pub trait FromLeBytes32 {
    fn from_le_bytes(bytes: [u8; 32]) -> Self;
}

/// The raw 32 bytes of a U256.
pub type U256 = [u8; 32];

impl FromLeBytes32 for U256 {
    fn from_le_bytes(bytes: [u8; 32]) -> Self {
        bytes
    }
}

fixed_sequences! {
    /// SEQ0_255[U256]: a merkle path.
    Seq0255U256, U256, 32, 1, 255;
    /// SEQ0_64K[U32]: channel ids.
    Seq064KU32, u32, 4, 2, 65_535;
}
