//! `mining.configure` (BIP310). Only version rolling is offered; the negotiated mask is the
//! pool's mask ANDed with the miner's, and every other extension is answered `false`.

use serde_json::{Map, Value};

use super::session::{Outcome, Session};
use super::ErrorCode;

impl Session {
    pub(super) fn handle_configure(
        &mut self,
        id: &super::request::RequestId,
        params: &[Value],
    ) -> Outcome {
        let (Some(Value::Array(extensions)), options) = (params.first(), params.get(1)) else {
            return self.reject(
                id,
                ErrorCode::Other,
                "configure needs [extensions, options]",
            );
        };
        let empty = Map::new();
        let options = match options {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(options)) => options,
            Some(_) => {
                return self.reject(id, ErrorCode::Other, "configure options must be an object")
            }
        };
        let mut result = Map::new();
        for extension in extensions {
            let Some(name) = extension.as_str() else {
                return self.reject(id, ErrorCode::Other, "extension names must be strings");
            };
            if name != "version-rolling" {
                result.insert(name.to_string(), Value::Bool(false));
                continue;
            }
            let requested_mask = match options.get("version-rolling.mask") {
                None => u32::MAX,
                Some(Value::String(text)) => {
                    match crate::hex32::decode_u32_be(&format!("{text:0>8}")) {
                        Some(mask) if text.len() <= 8 => mask,
                        _ => {
                            return self.reject(
                                id,
                                ErrorCode::Other,
                                "version-rolling.mask must be hex",
                            )
                        }
                    }
                }
                Some(_) => {
                    return self.reject(id, ErrorCode::Other, "version-rolling.mask must be hex")
                }
            };
            let min_bit_count = match options.get("version-rolling.min-bit-count") {
                None => 0,
                Some(value) => match value.as_u64() {
                    Some(count) if count <= 32 => count as u32,
                    _ => return self.reject(id, ErrorCode::Other, "min-bit-count must be 0..=32"),
                },
            };
            let mask = requested_mask & self.config.front_end.version_rolling_mask;
            if mask.count_ones() < min_bit_count || mask == 0 {
                self.version_mask = None;
                result.insert(name.to_string(), Value::Bool(false));
            } else {
                self.version_mask = Some(mask);
                result.insert(name.to_string(), Value::Bool(true));
                result.insert(
                    "version-rolling.mask".to_string(),
                    Value::String(format!("{mask:08x}")),
                );
            }
        }
        self.reply(id, Value::Object(result));
        Outcome::Continue
    }
}
