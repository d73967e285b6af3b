//! KYC holds: above a threshold of a coin paid to one address within a period, a payout
//! waits until the address is verified. Verification is set by an operator through the
//! admin API, or by an external provider calling back with a body signed by the secret
//! the pool shares with it; the pool tells the provider about each new hold the same way.
//!
//! Sans-IO: the rule, the records and the signatures are plain values and functions; the
//! ledger stores the records, the payout thread applies the rule, the API and a webhook
//! thread carry the messages.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Seconds a signed callback's timestamp may be away from the pool's clock.
pub const CALLBACK_CLOCK_SKEW_S_MAX: u64 = 300;
/// Bytes of a callback body the pool reads.
pub const CALLBACK_BYTES_MAX: usize = 4096;
/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>` both ways.
pub const SIGNATURE_HEADER: &str = "x-otedama-signature";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KycState {
    /// A payout is held; the miner has been asked to verify.
    Pending,
    Verified,
    /// The provider or the operator refused; payouts stay held.
    Rejected,
}

impl KycState {
    /// Whether the address's value is held: no payout, deposit or trade.
    pub fn holds(self) -> bool {
        matches!(self, KycState::Pending | KycState::Rejected)
    }
}

/// Where an address stands, and who put it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KycRecord {
    pub state: KycState,
    pub updated_at_ms: u64,
    /// `payouts` (a hold), `admin`, or `provider`.
    pub source: String,
    /// The provider's case id, or the operator's note.
    #[serde(default)]
    pub reference: Option<String>,
}

/// The threshold of the pool's coin (minor units) within a rolling period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KycRule {
    pub threshold: u64,
    pub period_ms: u64,
}

impl KycRule {
    /// Whether paying `amount` now, after `paid_in_period` within the period, needs
    /// verification the address does not have.
    pub fn holds(&self, paid_in_period: u64, amount: u64, record: Option<&KycRecord>) -> bool {
        let verified = record.is_some_and(|r| r.state == KycState::Verified);
        !verified && paid_in_period.saturating_add(amount) > self.threshold
    }
}

fn mac(secret: &[u8], timestamp_s: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp_s`: the timestamp is inside
/// what is signed, so an old message cannot be replayed as a new one.
pub fn sign(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp_s, body).finalize().into_bytes();
    format!("t={timestamp_s},v1={}", hex::encode(tag))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("the body is longer than {CALLBACK_BYTES_MAX} bytes")]
    TooLarge,
    #[error("the {SIGNATURE_HEADER} header is missing or not t=<seconds>,v1=<hex>")]
    MalformedSignature,
    #[error("the signature's timestamp is more than {CALLBACK_CLOCK_SKEW_S_MAX} s away")]
    Stale,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the body is not a callback: {0}")]
    BadBody(String),
}

/// Longest callback id accepted.
pub const CALLBACK_ID_BYTES_MAX: usize = 128;

/// What a provider says about an address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    /// The provider's id for this verdict: applied once, so a replay (within the
    /// signature's clock window) is refused.
    pub id: String,
    pub address: String,
    pub state: KycState,
    #[serde(default)]
    pub reference: Option<String>,
}

/// Checks a callback's signature header against its raw body, then reads the body.
pub fn verify_callback(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<Callback, CallbackError> {
    if body.len() > CALLBACK_BYTES_MAX {
        return Err(CallbackError::TooLarge);
    }
    let header = header.ok_or(CallbackError::MalformedSignature)?;
    let (mut timestamp_s, mut tag) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp_s = value.parse::<u64>().ok(),
            Some(("v1", value)) => tag = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp_s), Some(tag)) = (timestamp_s, tag) else {
        return Err(CallbackError::MalformedSignature);
    };
    if now_s.abs_diff(timestamp_s) > CALLBACK_CLOCK_SKEW_S_MAX {
        return Err(CallbackError::Stale);
    }
    // verify_slice compares in constant time.
    mac(secret, timestamp_s, body)
        .verify_slice(&tag)
        .map_err(|_| CallbackError::BadSignature)?;
    let callback: Callback =
        serde_json::from_slice(body).map_err(|e| CallbackError::BadBody(e.to_string()))?;
    if callback.id.is_empty() || callback.id.len() > CALLBACK_ID_BYTES_MAX {
        return Err(CallbackError::BadBody(format!(
            "id must be 1 to {CALLBACK_ID_BYTES_MAX} bytes"
        )));
    }
    if callback.state == KycState::Pending {
        return Err(CallbackError::BadBody(
            "a provider answers verified or rejected".into(),
        ));
    }
    Ok(callback)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"shared-with-the-provider";

    fn record(state: KycState) -> KycRecord {
        KycRecord {
            state,
            updated_at_ms: 0,
            source: "admin".into(),
            reference: None,
        }
    }

    #[test]
    fn the_threshold_is_inclusive_and_only_verification_lifts_it() {
        let rule = KycRule {
            threshold: 1_000,
            period_ms: 1,
        };
        assert!(!rule.holds(0, 1_000, None));
        assert!(rule.holds(0, 1_001, None));
        assert!(
            rule.holds(600, 401, None),
            "the period's earlier payouts count"
        );
        assert!(!rule.holds(600, 400, None));
        assert!(rule.holds(0, 1_001, Some(&record(KycState::Pending))));
        assert!(rule.holds(0, 1_001, Some(&record(KycState::Rejected))));
        assert!(!rule.holds(0, 1_001, Some(&record(KycState::Verified))));
        assert!(rule.holds(u64::MAX, 1, None), "no overflow");
    }

    #[test]
    fn callbacks_must_be_signed_fresh_and_well_formed() {
        let body =
            br#"{"id":"v-1","address":"rltc1qexample","state":"verified","reference":"case-7"}"#;
        let now_s = 1_800_000_000;
        let header = sign(SECRET, now_s, body);
        let callback = verify_callback(SECRET, Some(&header), body, now_s + 10).unwrap();
        assert_eq!(callback.state, KycState::Verified);
        assert_eq!(callback.reference.as_deref(), Some("case-7"));

        let edge = sign(SECRET, now_s - CALLBACK_CLOCK_SKEW_S_MAX, body);
        assert!(verify_callback(SECRET, Some(&edge), body, now_s).is_ok());
        let stale = sign(SECRET, now_s - CALLBACK_CLOCK_SKEW_S_MAX - 1, body);
        assert_eq!(
            verify_callback(SECRET, Some(&stale), body, now_s),
            Err(CallbackError::Stale)
        );
        // The same bound ahead of the pool's clock: a callback signed for later cannot be
        // held back and replayed once its time comes.
        let ahead = sign(SECRET, now_s + CALLBACK_CLOCK_SKEW_S_MAX, body);
        assert!(verify_callback(SECRET, Some(&ahead), body, now_s).is_ok());
        let too_far_ahead = sign(SECRET, now_s + CALLBACK_CLOCK_SKEW_S_MAX + 1, body);
        assert_eq!(
            verify_callback(SECRET, Some(&too_far_ahead), body, now_s),
            Err(CallbackError::Stale)
        );
        assert_eq!(
            verify_callback(b"another secret", Some(&header), body, now_s),
            Err(CallbackError::BadSignature)
        );
        let edited =
            br#"{"id":"v-1","address":"rltc1qattacker","state":"verified","reference":"case-7"}"#;
        assert_eq!(
            verify_callback(SECRET, Some(&header), edited, now_s),
            Err(CallbackError::BadSignature)
        );
        for malformed in [None, Some("v1=00"), Some("t=1"), Some("t=x,v1=zz")] {
            assert_eq!(
                verify_callback(SECRET, malformed, body, now_s),
                Err(CallbackError::MalformedSignature),
                "{malformed:?}"
            );
        }
        // The size limit at its edge: the longest body is read (and found not to be a
        // callback), one byte more is refused before anything else.
        let longest = vec![b' '; CALLBACK_BYTES_MAX];
        let signed = sign(SECRET, now_s, &longest);
        assert!(matches!(
            verify_callback(SECRET, Some(&signed), &longest, now_s),
            Err(CallbackError::BadBody(_))
        ));
        let too_long = vec![b' '; CALLBACK_BYTES_MAX + 1];
        let signed = sign(SECRET, now_s, &too_long);
        assert_eq!(
            verify_callback(SECRET, Some(&signed), &too_long, now_s),
            Err(CallbackError::TooLarge)
        );
        let pending = br#"{"id":"p-1","address":"a","state":"pending"}"#;
        let signed = sign(SECRET, now_s, pending);
        assert!(matches!(
            verify_callback(SECRET, Some(&signed), pending, now_s),
            Err(CallbackError::BadBody(_))
        ));
        // The id: required, and at most CALLBACK_ID_BYTES_MAX bytes (edge included).
        for (id, ok) in [
            (String::new(), false),
            ("x".repeat(CALLBACK_ID_BYTES_MAX), true),
            ("x".repeat(CALLBACK_ID_BYTES_MAX + 1), false),
        ] {
            let body = format!(r#"{{"id":"{id}","address":"a","state":"rejected"}}"#);
            let signed = sign(SECRET, now_s, body.as_bytes());
            let verdict = verify_callback(SECRET, Some(&signed), body.as_bytes(), now_s);
            assert_eq!(verdict.is_ok(), ok, "id of {} bytes: {verdict:?}", id.len());
        }
        let no_id = br#"{"address":"a","state":"rejected"}"#;
        let signed = sign(SECRET, now_s, no_id);
        assert!(matches!(
            verify_callback(SECRET, Some(&signed), no_id, now_s),
            Err(CallbackError::BadBody(_))
        ));
    }
}
