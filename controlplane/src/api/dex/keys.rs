//! Exchange API keys: the one-time challenges a miner signs with its payout address's key
//! (kept as no state per challenge), and the two routes that issue a challenge and turn
//! an answered one into a key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;
use serde_json::json;

use super::{body_json, dex_of, refusal, refuse_denied, with_dex};
use crate::api::{error, now_ms, ApiState};

/// Seconds a key challenge may be answered in.
pub const KEY_CHALLENGE_TTL_S: u64 = 600;

/// Issues and checks the one-time challenges a miner signs to get an exchange API key.
///
/// Nothing is stored per challenge: each carries its address, serial and expiry under a MAC
/// with a secret of this process, so asking for challenges (a public route) costs the pool
/// no memory and cannot crowd out anyone else's (a global table of open challenges could be
/// filled by one client). A challenge is single use because the key store keeps, per
/// address, the serial of the last challenge answered, and takes only a newer one
/// (`DexService::create_key`). A restart makes open challenges invalid (a new secret);
/// they are asked for again.
///
/// A serial is the exchange's start count (kept in its store, one more at each start) over
/// a count of challenges issued since: it grows across restarts whatever the wall clock
/// does, so a clock set wrong for a while can never leave an address unable to get a key.
pub struct KeyChallenges {
    /// The exchange's start these challenges belong to.
    start_count: u64,
    secret: [u8; 32],
    /// The serial the next challenge gets.
    next_serial: u128,
}

impl Default for KeyChallenges {
    /// Challenges of a pool without the exchange (nobody can answer them).
    fn default() -> Self {
        Self::new(0)
    }
}

/// A challenge that checked out: the serial the key store compares.
#[derive(Debug, PartialEq, Eq)]
pub struct AnsweredChallenge {
    pub serial: u128,
}

impl KeyChallenges {
    /// Challenges for this start of the exchange, its `start_count`-th
    /// (`DexService::start_count`).
    pub fn new(start_count: u64) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        KeyChallenges {
            start_count,
            secret,
            next_serial: (u128::from(start_count) << 64) + 1,
        }
    }

    /// Cluster mode: a control plane that takes over the exchange counts a start of its
    /// own, above every start of the former leader's, so its serials are above every
    /// serial the former leader issued; challenges issued before are void here.
    pub fn follow_start(&mut self, start_count: u64) {
        if start_count != self.start_count {
            *self = KeyChallenges::new(start_count);
        }
    }

    fn mac(&self, address: &str, serial: u128, expires_at_ms: u64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        mac.update(format!("{address}\n{serial}\n{expires_at_ms}").as_bytes());
        mac
    }

    fn message(address: &str, serial: u128, expires_at_ms: u64, tag: &str) -> String {
        format!(
            "Otedama API key\naddress: {address}\nserial: {serial}\nexpires: {expires_at_ms}\ncheck: {tag}"
        )
    }

    /// A new challenge for `address` and its expiry.
    pub fn issue(&mut self, address: &str, now_ms: u64) -> (String, u64) {
        let serial = self.next_serial;
        // 2^64 challenges in one start: never, at any rate a client can ask.
        self.next_serial += 1;
        let expires_at_ms = now_ms + KEY_CHALLENGE_TTL_S * 1000;
        use hmac::Mac;
        let tag = hex::encode(
            self.mac(address, serial, expires_at_ms)
                .finalize()
                .into_bytes(),
        );
        (
            Self::message(address, serial, expires_at_ms, &tag),
            expires_at_ms,
        )
    }

    /// The challenge `message` if this process issued it for `address` and it is
    /// unexpired. Whether it was answered before is the key store's to say.
    pub fn check(&self, address: &str, message: &str, now_ms: u64) -> Option<AnsweredChallenge> {
        let mut lines = message.split('\n');
        if lines.next()? != "Otedama API key" {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_string);
        let claimed_address = field("address: ")?;
        let serial: u128 = field("serial: ")?.parse().ok()?;
        let expires_at_ms: u64 = field("expires: ")?.parse().ok()?;
        let tag = field("check: ")?;
        // The message must be exactly what `issue` wrote (no extra lines, no other
        // spelling of a number or of the tag); the MAC is compared in constant time.
        use hmac::Mac;
        let genuine = claimed_address == address
            && message == Self::message(address, serial, expires_at_ms, &tag)
            && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && hex::decode(&tag).is_ok_and(|tag| {
                self.mac(address, serial, expires_at_ms)
                    .verify_slice(&tag)
                    .is_ok()
            });
        (genuine && expires_at_ms > now_ms).then_some(AnsweredChallenge { serial })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    address: String,
}

/// The exchange's start count, if this control plane runs the exchange (503 if not).
async fn leading_start(state: &ApiState) -> Result<u64, Response> {
    match with_dex(state, |dex, _| {
        dex.ensure_leads().map(|()| dex.start_count())
    })
    .await
    {
        Ok(Ok(start_count)) => Ok(start_count),
        Ok(Err(e)) => Err(refusal(e)),
        Err(response) => Err(response),
    }
}

pub(super) async fn key_challenge(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = dex_of(&state) {
        return response;
    }
    let mut request: ChallengeRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    request.address = match crate::api::canonical_account(&state, &request.address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    // Cluster mode: only the control plane that runs the exchange issues challenges, under
    // its own start.
    let start_count = match leading_start(&state).await {
        Ok(start_count) => start_count,
        Err(response) => return response,
    };
    let (message, expires_at_ms) = {
        let mut challenges = state.key_challenges.lock().expect("challenges lock");
        challenges.follow_start(start_count);
        challenges.issue(&request.address, now_ms())
    };
    Json(json!({
        "address": request.address,
        "message": message,
        "expires_at_ms": expires_at_ms,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    address: String,
    message: String,
    /// Base64 compact signature, as `signmessage` prints it.
    signature: String,
}

pub(super) async fn create_key(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    if let Err(response) = dex_of(&state) {
        return response;
    }
    let mut request: KeyRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    request.address = match crate::api::canonical_account(&state, &request.address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    if let Err(response) = refuse_denied(&state, &request.address) {
        return response;
    }
    let verified = otedama_chain::signed_message::verify(
        &state.address_rule,
        &otedama_chain::signed_message::message_magic(state.coin_name),
        &request.address,
        &request.message,
        &request.signature,
    );
    if let Err(e) = verified {
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    // Cluster mode: challenges another term of this process issued are void (their
    // serials are below the current start's).
    let start_count = match leading_start(&state).await {
        Ok(start_count) => start_count,
        Err(response) => return response,
    };
    // The challenge is spent only by a valid signature: a wrong guess cannot burn it.
    let checked = {
        let mut challenges = state.key_challenges.lock().expect("challenges lock");
        challenges.follow_start(start_count);
        challenges.check(&request.address, &request.message, now_ms())
    };
    let Some(challenge) = checked else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the message is not an open challenge for this address (POST /api/v1/dex/keys/challenge)",
        );
    };
    let address = request.address.clone();
    let created = with_dex(&state, move |dex, _| {
        dex.ensure_leads()?;
        dex.create_key(&address, challenge.serial, now_ms())
            .map_err(crate::dex::DexError::Internal)
    })
    .await;
    match created {
        Ok(Ok(None)) => error(
            StatusCode::UNAUTHORIZED,
            "this challenge, or a newer one for this address, was answered already: ask for a new one",
        ),
        Ok(Ok(Some(key))) => {
            crate::api::audit_from_async(
                &state,
                "miner",
                "dex.key.created",
                json!({"address": request.address}),
            )
            .await;
            Json(json!({"address": request.address, "api_key": key})).into_response()
        }
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_checks_only_for_its_address_unaltered_and_before_it_expires() {
        let mut challenges = KeyChallenges::default();
        let (message, expiry) = challenges.issue("addr", 1_000);
        assert!(challenges.check("addr", "another message", 1_001).is_none());
        assert!(challenges.check("other", &message, 1_001).is_none());
        let altered = message.replace("expires: ", "expires: 9");
        assert!(challenges.check("addr", &altered, 1_001).is_none());
        assert!(challenges
            .check("addr", &format!("{message}\n"), 1_001)
            .is_none());
        let (_, tag) = message.rsplit_once("check: ").unwrap();
        let upper = message.replace(tag, &tag.to_uppercase());
        assert!(challenges.check("addr", &upper, 1_001).is_none());
        let retargeted = message.replace("address: addr", "address: other");
        assert!(challenges.check("other", &retargeted, 1_001).is_none());
        assert!(
            challenges.check("addr", &message, expiry).is_none(),
            "expired at its edge"
        );
        assert!(challenges.check("addr", &message, expiry - 1).is_some());
        // Another process (or this one after a restart) has another secret.
        assert!(KeyChallenges::default()
            .check("addr", &message, 1_001)
            .is_none());
    }

    /// Issue 16: asking for challenges costs nothing kept, so no number of them can crowd
    /// out the owner's; serials only grow, which is what makes a challenge single use.
    #[test]
    fn challenges_keep_no_state_per_request_and_their_serials_grow() {
        let mut challenges = KeyChallenges::default();
        let (owners, _) = challenges.issue("addr", 1_000);
        let mut last = challenges.check("addr", &owners, 1_001).unwrap().serial;
        // Issue 15, point 8: a challenge asked for in the owner's name leaves the owner's
        // own as it was.
        let (anyones, _) = challenges.issue("addr", 1_000);
        assert_ne!(owners, anyones);
        for i in 0..100_000u64 {
            let (message, _) = challenges.issue(&(i % 7).to_string(), 1_000);
            let serial = challenges
                .check(&(i % 7).to_string(), &message, 1_001)
                .unwrap()
                .serial;
            assert!(serial > last);
            last = serial;
        }
        assert!(challenges.check("addr", &owners, 1_001).is_some());
        // The start, the secret and the next serial: nothing per request.
        assert_eq!(std::mem::size_of_val(&challenges), 64);
        // The next start's serials are above every one of this start's.
        let mut restarted = KeyChallenges::new(1);
        let (message, _) = restarted.issue("addr", 1_000);
        assert!(restarted.check("addr", &message, 1_001).unwrap().serial > last);
    }
}
