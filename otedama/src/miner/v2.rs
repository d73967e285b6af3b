//! `otedama miner` over Stratum V2: the frame link (Noise over TCP, pinned to the pool's
//! authority key, or a QUIC stream), and the header-only device session on a standard
//! channel that relays work to the workers and their finds back as shares.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context};

use otedama_kernels::Target;
use otedama_shared::clock::now_s as unix_now_s;
use otedama_shared::limits::SV2_DEVICE_PAYLOAD_BYTES_MAX;
use otedama_shared::sv2::client::{ClientEvent, StandardClient};
use otedama_shared::sv2::noise::{NoiseClient, NoiseTransport};

use super::*;

/// The V2 transport a URL names: Noise over TCP, or QUIC.
pub(super) fn connect_v2(
    endpoint: &Endpoint,
    quic_client: Option<&quinn::ClientConfig>,
) -> anyhow::Result<Box<dyn FrameLink>> {
    Ok(match endpoint {
        Endpoint::V2 { address, authority } => Box::new(NoiseLink::connect(address, *authority)?),
        Endpoint::Quic { address } => Box::new(QuicLink::connect(
            address,
            quic_client.context("no QUIC client configuration")?,
        )?),
        Endpoint::V1 { .. } => bail!("a stratum+tcp URL is Stratum V1, not V2"),
    })
}

/// A transport carrying plaintext SV2 frames both ways.
pub(super) trait FrameLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()>;
    /// Waits a short while for bytes and hands each whole frame to `on_frame`.
    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
}

/// Noise over TCP.
pub(super) struct NoiseLink {
    stream: TcpStream,
    transport: NoiseTransport,
    buffer: Vec<u8>,
}

/// How long the Noise handshake may take once connected.
const NOISE_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

impl NoiseLink {
    fn connect(address: &str, authority: [u8; 32]) -> anyhow::Result<Self> {
        Self::connect_within(
            address,
            authority,
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            Duration::from_millis(NOISE_HANDSHAKE_TIMEOUT_MS),
        )
    }

    /// Connects and completes the Noise handshake, the pool proving it holds `authority`'s
    /// key, each step within its timeout.
    pub(super) fn connect_within(
        address: &str,
        authority: [u8; 32],
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut stream = connect_tcp_within(address, connect_timeout)?;
        let (mut noise, request) = NoiseClient::start(
            authority,
            SV2_DEVICE_PAYLOAD_BYTES_MAX,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        stream.write_all(&request)?;
        stream.set_read_timeout(Some(handshake_timeout))?;
        let mut buffer = vec![0u8; 64 * 1024];
        let transport = loop {
            let read = std::io::Read::read(&mut stream, &mut buffer)?;
            if read == 0 {
                bail!("the pool closed the connection during the Noise handshake");
            }
            if let Some(transport) = noise
                .feed(&buffer[..read], unix_now_s() as u32)
                .map_err(|e| anyhow::anyhow!("Noise handshake with {address}: {e}"))?
            {
                break transport;
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(NoiseLink {
            stream,
            transport,
            buffer,
        })
    }
}

impl FrameLink for NoiseLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(frames.len() + 64);
        self.transport.encrypt_frames(frames, &mut out);
        self.stream.write_all(&out)?;
        Ok(())
    }

    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match std::io::Read::read(&mut self.stream, &mut self.buffer) {
            Ok(0) => bail!("pool closed the connection"),
            Ok(read) => self.transport.feed(&self.buffer[..read]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        while let Some((header, payload)) = self
            .transport
            .next_frame()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            on_frame(&header, payload)?;
        }
        Ok(())
    }
}

/// SV2 frames on one bidirectional QUIC stream (quinn on a current-thread runtime that
/// runs while this thread waits for frames).
pub(super) struct QuicLink {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    receive: quinn::RecvStream,
    decoder: otedama_shared::sv2::FrameDecoder,
    buffer: Vec<u8>,
}

impl QuicLink {
    fn connect(address: &str, config: &quinn::ClientConfig) -> anyhow::Result<Self> {
        use std::net::ToSocketAddrs;
        let remote = address
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{address} resolves to nothing"))?;
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (endpoint, connection, send, receive) = runtime.block_on(async {
            let local: std::net::SocketAddr = if remote.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let mut endpoint = quinn::Endpoint::client(local)?;
            endpoint.set_default_client_config(config.clone());
            let connecting = endpoint.connect(remote, host)?;
            // A resumed session sends SetupConnection as 0-RTT data.
            let connection = match connecting.into_0rtt() {
                Ok((connection, _)) => connection,
                Err(connecting) => tokio::time::timeout(Duration::from_secs(10), connecting)
                    .await
                    .context("QUIC handshake timed out")??,
            };
            let (send, receive) = connection.open_bi().await?;
            anyhow::Ok((endpoint, connection, send, receive))
        })?;
        Ok(QuicLink {
            runtime,
            endpoint,
            connection,
            send,
            receive,
            decoder: otedama_shared::sv2::FrameDecoder::new(SV2_DEVICE_PAYLOAD_BYTES_MAX),
            buffer: vec![0u8; 64 * 1024],
        })
    }
}

impl Drop for QuicLink {
    /// Closes the connection so the pool frees it now, not at its idle timeout.
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"miner stopped");
        let endpoint = self.endpoint.clone();
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

impl FrameLink for QuicLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(self.send.write_all(frames))?;
        Ok(())
    }

    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let read = self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(50),
                self.receive.read(&mut self.buffer),
            )
            .await
        });
        match read {
            Err(_elapsed) => return Ok(()),
            Ok(Ok(Some(length))) => self.decoder.feed(&self.buffer[..length]),
            Ok(Ok(None)) => bail!("the pool ended the stream"),
            Ok(Err(error)) => return Err(error.into()),
        }
        while let Some(frame) = self
            .decoder
            .next_frame()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            on_frame(&frame.header, frame.payload)?;
        }
        Ok(())
    }
}

/// One Stratum V2 connection: a standard channel, work in, shares out.
pub(super) fn session_v2(
    link: &mut dyn FrameLink,
    address: &str,
    run: &mut Run<'_>,
) -> anyhow::Result<()> {
    let (args, shared, found) = (run.args, run.shared, run.found);
    // Finds on an earlier connection's work are not this connection's to submit.
    let session_start = shared.withdraw_work();
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    // The hash rate the pool sizes the first target for; vardiff corrects it.
    let nominal_hash_rate = args.declared_hashrate.unwrap_or(match args.algo {
        AlgoArg::Scrypt => 5_000.0 * args.threads as f32,
        AlgoArg::Sha256d | AlgoArg::Randomx => 5_000_000.0 * args.threads as f32,
    });
    let mut client = StandardClient::new(
        &args.user,
        nominal_hash_rate,
        host,
        port.parse().unwrap_or(0),
    );
    let mut published_generation = None;
    // Shares sent and shares the pool has answered (accepted or refused): a share waits
    // for its answer, as the setup does until the first work arrives.
    let (mut submitted, mut answered) = (0u64, 0u64);
    // As over V1: asked to reconnect (Reconnect), nothing more is submitted, and once every
    // share is answered the session ends and the miner connects to the same address again.
    let mut reconnect_asked = false;
    while run.running() {
        if reconnect_asked {
            while found.try_recv().is_ok() {}
            if submitted == answered {
                eprintln!("miner: the pool asked to reconnect: connecting again");
                return Ok(());
            }
        }
        while let Ok(share) = found.try_recv() {
            if share.generation <= session_start {
                continue;
            }
            if let WorkTemplate::V2 {
                channel_id, job_id, ..
            } = share.template
            {
                let work = otedama_shared::sv2::client::MiningWork {
                    header: [0; 80],
                    channel_id,
                    job_id,
                    target: Target::MAX,
                    generation: 0,
                };
                client.submit(&work, share.nonce, share.ntime, share.version);
                submitted += 1;
            }
        }
        link.send(client.transmit_pending())?;
        client.transmitted();
        run.report();
        run.check_pool(client.work().is_none() || submitted > answered)?;
        let mut heard = false;
        let received = link.receive(&mut |header, payload| {
            heard = true;
            match client
                .handle_frame(header, payload)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                ClientEvent::SharesAccepted { count, .. } => {
                    shared.accepted.fetch_add(count as u64, Relaxed);
                    answered += count as u64;
                }
                ClientEvent::ShareRejected { code, .. } => {
                    shared.rejected.fetch_add(1, Relaxed);
                    answered += 1;
                    eprintln!("miner: share rejected: {code}");
                }
                ClientEvent::Reconnect { .. } => {
                    reconnect_asked = true;
                    shared.withdraw_work();
                }
                _ => {}
            }
            Ok(())
        });
        let received = match received {
            Err(_) if reconnect_asked => {
                eprintln!("miner: the pool asked to reconnect and closed: connecting again");
                return Ok(());
            }
            received => received,
        };
        received?;
        if heard {
            run.heard();
        }
        if let Some(work) = client.work().filter(|_| !reconnect_asked) {
            if published_generation != Some(work.generation) {
                published_generation = Some(work.generation);
                let generation = shared.generation.fetch_add(1, Relaxed) + 1;
                *shared.work.lock().expect("work lock") = Some(Work {
                    template: WorkTemplate::V2 {
                        header: work.header,
                        channel_id: work.channel_id,
                        job_id: work.job_id,
                    },
                    target: work.target,
                    generation,
                });
            }
        }
    }
    Ok(())
}
