//! After the broadcast: following each sent batch on the node until it is final
//! (confirmed, replaced by a transaction that pays every output, or double-spent), and
//! the operator's cancel of a batch that can never be mined.

use std::sync::Mutex;

use otedama_shared::address::{script_for_address, AddressRule};

use crate::ledger::{IntentState, Ledger, PayoutIntent};

use super::*;

/// What following a sent payout found it should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowStep {
    /// Not final yet: record the confirmations seen (negative: conflicted, that deep).
    Wait(i64),
    /// Out of the mempool unmined: send the same raw transaction again.
    SendAgain,
    /// Final: under enough blocks, itself or through a replacement that pays every output.
    Confirm {
        confirmations: i64,
        paid_by_txid: Option<String>,
    },
    /// Double-spent, deeply, by a transaction that pays none of its outputs: give the
    /// amounts back.
    Fail { confirmations: i64, reason: String },
    /// Double-spent by a transaction that pays some of its outputs but not all: neither
    /// confirming nor failing it is right, so it waits for the operator.
    Hold { confirmations: i64, reason: String },
}

/// Decides what to do with one sent payout by asking the node (no ledger access, so the
/// ledger is not held while the node answers):
/// - under `confirmations_required` blocks: `Confirm`;
/// - out of the mempool and unmined: `SendAgain`;
/// - double-spent: the conflicting transaction that is mined decides. If it pays every
///   output exactly (a fee bump), the payout confirms with it; if it pays none, the payout
///   fails once it is `confirmations_required` deep; if it pays some, it is held for the
///   operator. While no conflict is mined, the payout waits.
pub fn judge_sent(
    wallet: &mut dyn Wallet,
    rule: &AddressRule,
    intent: &PayoutIntent,
    confirmations_required: u64,
) -> Result<FollowStep, PayoutError> {
    let required = confirmations_required as i64;
    let conflicts = match wallet.transaction_status(&intent.txid)? {
        TxStatus::Confirmed(depth) if depth as i64 >= required => {
            return Ok(FollowStep::Confirm {
                confirmations: depth as i64,
                paid_by_txid: None,
            })
        }
        TxStatus::Confirmed(depth) => return Ok(FollowStep::Wait(depth as i64)),
        TxStatus::InMempool => return Ok(FollowStep::Wait(0)),
        // Safe to send again: it is the only transaction that may pay these outputs.
        TxStatus::Dropped | TxStatus::Unknown => return Ok(FollowStep::SendAgain),
        TxStatus::Conflicted { conflicts, .. } => conflicts,
    };
    let mut mined = None;
    for conflict in &conflicts {
        if let TxStatus::Confirmed(depth) = wallet.transaction_status(conflict)? {
            mined = Some((conflict.clone(), depth as i64));
            break;
        }
    }
    let Some((winner, depth)) = mined else {
        return Ok(FollowStep::Wait(0));
    };
    let scripts = output_scripts(rule, intent)?;
    if wallet.pays_outputs(&winner, &scripts)? {
        return Ok(if depth >= required {
            FollowStep::Confirm {
                confirmations: depth,
                paid_by_txid: Some(winner),
            }
        } else {
            FollowStep::Wait(depth)
        });
    }
    let mut pays_some = false;
    for output in &scripts {
        pays_some |= wallet.pays_outputs(&winner, std::slice::from_ref(output))?;
    }
    if pays_some {
        let reason = format!(
            "double-spent by {winner}, which pays some of its outputs but not all: the operator must settle it"
        );
        return Ok(FollowStep::Hold {
            confirmations: -depth,
            reason,
        });
    }
    if depth < required {
        return Ok(FollowStep::Wait(-depth));
    }
    Ok(FollowStep::Fail {
        confirmations: -depth,
        reason: format!(
            "double-spent by {winner} ({depth} blocks deep); the amounts are back in the balances"
        ),
    })
}

/// Carries out what `judge_sent` decided for `intent`, locking the ledger only to write.
pub fn apply_follow_step(
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    intent: &PayoutIntent,
    step: FollowStep,
    now_ms: u64,
) -> Result<(), PayoutError> {
    let batch_id = intent.batch_id;
    match step {
        FollowStep::Wait(confirmations) => {
            locked(ledger).note_confirmations(batch_id, confirmations)?
        }
        FollowStep::SendAgain => match wallet.broadcast(&intent.raw_tx) {
            Ok(()) => {
                tracing::warn!(batch_id, txid = %intent.txid, "payout had left the mempool unmined; sent again")
            }
            Err(error) => {
                // If it can never be mined (its inputs went elsewhere, and no conflicting
                // transaction the node knows pays it), the miners were not paid although
                // the ledger says so: say it where the operator looks, every time.
                let never = wallet.never_minable(&intent.raw_tx).ok().flatten();
                match never {
                    Some(reason) => {
                        let reason = format!(
                            "sent but gone from the node and never minable ({reason}): the operator must settle it"
                        );
                        tracing::error!(batch_id, txid = %intent.txid, %reason, "payout lost");
                        locked(ledger).note_error(batch_id, &reason)?;
                    }
                    None => {
                        tracing::warn!(batch_id, txid = %intent.txid, %error, "payout left the mempool and cannot be sent again yet")
                    }
                }
            }
        },
        FollowStep::Confirm {
            confirmations,
            paid_by_txid,
        } => {
            locked(ledger).confirm_intent(batch_id, confirmations, paid_by_txid.clone(), now_ms)?;
            tracing::info!(batch_id, txid = %intent.txid, ?paid_by_txid, confirmations, "payout confirmed");
        }
        FollowStep::Fail {
            confirmations,
            reason,
        } => {
            locked(ledger).fail_intent(batch_id, confirmations, &reason, now_ms)?;
            tracing::error!(batch_id, txid = %intent.txid, %reason, "payout failed");
        }
        FollowStep::Hold {
            confirmations,
            reason,
        } => {
            locked(ledger).note_confirmations(batch_id, confirmations)?;
            tracing::error!(batch_id, txid = %intent.txid, %reason, "payout held for the operator");
        }
    }
    Ok(())
}

/// Follows every sent payout one step (`judge_sent`, then `apply_follow_step`), with the
/// ledger locked only to read the payouts and to record each step; one payout the node
/// cannot answer about does not stop the others.
pub fn follow_sent(
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    rule: &AddressRule,
    confirmations_required: u64,
    now_ms: u64,
) -> Result<(), PayoutError> {
    let sent = locked(ledger).sent_intents()?;
    for intent in sent {
        let step = match judge_sent(wallet, rule, &intent, confirmations_required) {
            Ok(step) => step,
            Err(error) => {
                tracing::warn!(batch_id = intent.batch_id, %error, "cannot follow a sent payout now");
                continue;
            }
        };
        apply_follow_step(ledger, wallet, &intent, step, now_ms)?;
    }
    Ok(())
}

/// The output scripts and amounts a payout's transaction must pay.
pub(super) fn output_scripts(
    rule: &AddressRule,
    intent: &PayoutIntent,
) -> Result<Vec<(Vec<u8>, u64)>, PayoutError> {
    intent
        .outputs
        .iter()
        .map(|(address, amount)| {
            script_for_address(rule, address)
                .map(|script| (script, *amount))
                .map_err(|e| PayoutError::Wallet(WalletError::Refused(e.to_string())))
        })
        .collect()
}

/// Why a pending payout cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelRefusal {
    #[error("no payout batch {0}")]
    NoSuchBatch(u64),
    #[error("batch {0} is not pending (only a batch the node never took can be cancelled)")]
    NotPending(u64),
    #[error(
        "batch {batch_id}'s transaction can still be mined; it is sent again until it is: {detail}"
    )]
    StillMinable { batch_id: u64, detail: String },
    #[error(transparent)]
    Payout(#[from] PayoutError),
}

/// Cancels a pending payout the node cannot take (issue 15: one that can never be
/// broadcast blocked every later run). Only when the node holds no transaction of it and
/// says it can never be mined, so the same outputs can never be paid twice; its amounts go
/// back to the balances once (`Ledger::cancel_intent`).
pub fn cancel_pending(
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    batch_id: u64,
    now_ms: u64,
) -> Result<String, CancelRefusal> {
    let intent = locked(ledger).intent(batch_id);
    let intent = intent
        .map_err(PayoutError::from)?
        .ok_or(CancelRefusal::NoSuchBatch(batch_id))?;
    if intent.state != IntentState::Open {
        return Err(CancelRefusal::NotPending(batch_id));
    }
    if wallet
        .knows_transaction(&intent.txid)
        .map_err(PayoutError::from)?
    {
        return Err(CancelRefusal::StillMinable {
            batch_id,
            detail: "the node holds it".into(),
        });
    }
    let Some(reason) = wallet
        .never_minable(&intent.raw_tx)
        .map_err(PayoutError::from)?
    else {
        return Err(CancelRefusal::StillMinable {
            batch_id,
            detail: "the node would accept it".into(),
        });
    };
    let reason = format!("cancelled by the operator: {reason}");
    let cancelled = locked(ledger)
        .cancel_intent(batch_id, &reason, now_ms)
        .map_err(PayoutError::from)?;
    if cancelled != crate::ledger::Applied::Done {
        return Err(CancelRefusal::NotPending(batch_id));
    }
    tracing::warn!(batch_id, txid = %intent.txid, %reason, "pending payout cancelled");
    Ok(reason)
}
