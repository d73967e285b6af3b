//! Stratum V1 over TCP: reads lines into the session, stores accepted shares and waits for
//! durability before the reply, and writes what the session queues.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;

use otedama_shared::ipc::Upstream;
use otedama_shared::limits::{EXTRANONCE2_BYTES, STRATUM_LINE_BYTES_MAX};
use otedama_shared::sv1::{LineFramer, Outcome, Session, SessionConfig};
use otedama_shared::Job;

use crate::rt::Core;

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 4096;

/// One connection's state that the core's job broadcast can reach.
pub struct Connection {
    session: RefCell<Session>,
    outbound: LocalSender<Vec<u8>>,
}

impl Connection {
    pub fn send_job(&self, job: &Job, now_s: u64) {
        let mut session = self.session.borrow_mut();
        session.handle_new_job(job, now_s);
        self.flush(&mut session);
    }

    fn flush(&self, session: &mut Session) {
        if let Some(bytes) = session.poll_transmit() {
            // Fails only once the writer has gone, and then the reader is closing too.
            let _ = self.outbound.try_send(bytes);
        }
    }
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn serve_connection(core: Rc<Core>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(
        core.config.connection_idle_timeout_s,
    )));
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (outbound, outbound_rx) = local_channel::new_unbounded::<Vec<u8>>();
    let session = Session::new(SessionConfig {
        extranonce1: core.next_extranonce1(),
        extranonce2_size: EXTRANONCE2_BYTES,
        start_difficulty: core.config.start_difficulty,
        difficulty_min: core.config.difficulty_min,
        version_rolling_mask: core.config.version_rolling_mask,
        algorithm: core.config.algorithm,
        vardiff: core.config.vardiff,
    });
    let connection = Rc::new(Connection {
        session: RefCell::new(session),
        outbound,
    });
    let id = core.register(connection.clone());
    core.counters.connections.fetch_add(1, Relaxed);
    glommio::spawn_local(async move {
        while let Some(bytes) = outbound_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    })
    .detach();

    let reason = read_loop(&core, &connection, &mut reader).await;
    tracing::debug!(?peer, reason, "connection closed");
    core.unregister(id);
    core.counters.connections.fetch_sub(1, Relaxed);
}

async fn read_loop(
    core: &Core,
    connection: &Connection,
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
) -> &'static str {
    let mut framer = LineFramer::new(STRATUM_LINE_BYTES_MAX);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) => return "peer closed",
            Ok(read) => read,
            Err(_) => return "read error or idle timeout",
        };
        framer.push(&chunk[..read]);
        loop {
            let line = match framer.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => return "line too long",
            };
            let outcome = {
                let mut session = connection.session.borrow_mut();
                let jobs = core.jobs.borrow();
                let mut duplicates = core.duplicates.borrow_mut();
                let outcome = session.handle_line(line, now_s(), &jobs, &mut duplicates);
                connection.flush(&mut session);
                outcome
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Rejected(code) => core.counters.rejected(code),
                Outcome::Close(_) => return "not JSON",
                Outcome::ShareAccepted(accepted) => {
                    let stored = match core.share_log.append(&accepted.record) {
                        Ok(wait) => matches!(wait.await, Ok(Ok(()))),
                        Err(_) => false,
                    };
                    let mut session = connection.session.borrow_mut();
                    if stored {
                        session.handle_share_durable(
                            &accepted.request_id,
                            now_s(),
                            &core.jobs.borrow(),
                        );
                        core.counters.accepted(accepted.record.difficulty);
                        if let Some(block) = accepted.block {
                            core.counters.block_candidates.fetch_add(1, Relaxed);
                            if core
                                .upstream
                                .try_send(Upstream::BlockCandidate(block))
                                .is_err()
                            {
                                tracing::error!("upstream queue full: block candidate dropped");
                            }
                        }
                    } else {
                        session.handle_share_store_failed(&accepted.request_id);
                        core.counters
                            .rejected(otedama_shared::sv1::ErrorCode::Other);
                    }
                    connection.flush(&mut session);
                }
            }
        }
    }
}
