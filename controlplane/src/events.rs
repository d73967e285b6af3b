//! What happens in the pool that the live feed (`/ws`) tells, as the tasks that saw it
//! know it. Producers publish these facts; `api::views` decides how each looks, so the
//! payout thread and the chain tasks never render the API's JSON.

use otedama_chain::blocks::BlockRecord;
use otedama_ledger::ledger::PayoutIntent;

#[derive(Clone, Debug)]
pub enum PoolEvent {
    /// The node accepted a block the pool found.
    BlockAccepted(BlockRecord),
    /// A payout batch the payout thread wrote, or saw reach the node.
    Payment(PayoutIntent),
    /// The operator cancelled a batch the node had not taken.
    PayoutCancelled { batch_id: u64, reason: String },
    /// A message of the exchange's book and trade feed. The exchange service renders its
    /// own feed (`dex::views`, the shape its clients subscribe to), so it passes as it is.
    Exchange(serde_json::Value),
}
