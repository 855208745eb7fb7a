//! Socket I/O: batched receives (GRO) into quinn-proto, and capped, round-robin
//! batches of datagrams out (GSO), with the one datagram the socket would not take.

use super::*;

/// Datagrams one connection may put in one send call (one GSO batch).
const MAX_DATAGRAMS_PER_CALL: usize = 10;
/// Datagrams sent per pass before going back to receiving.
const MAX_DATAGRAMS_PER_PASS: usize = 20;
/// Receive calls per pass.
const MAX_RECV_CALLS: usize = 8;

/// A datagram polled from quinn that the socket would not take yet.
pub(super) struct Stalled {
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
    contents: Vec<u8>,
}

/// The socket and what waits to go out on it.
pub(super) struct SocketIo {
    pub(super) socket: Socket,
    /// Datagrams polled from quinn.
    pub(super) send_buf: Vec<u8>,
    pub(super) stalled: Option<Stalled>,
    /// Connections that may have datagrams to send, in round-robin order.
    pub(super) sendq: VecDeque<ConnectionHandle>,
}

impl SocketIo {
    pub(super) fn new(socket: Socket) -> Self {
        Self {
            socket,
            send_buf: Vec::new(),
            stalled: None,
            sendq: VecDeque::new(),
        }
    }
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    /// Receives what the socket holds; true if every call filled its batch (more may be
    /// waiting).
    pub(super) fn receive(&mut self, now: StdInstant, bufs: &mut [Vec<u8>]) -> bool {
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        for _ in 0..MAX_RECV_CALLS {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self.io.socket.try_recv(&mut slices, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // An ICMP error for an earlier send, and the like: nothing to do.
                Err(_) => continue,
            };
            drop(slices);
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                // One allocation and copy per received batch, not per datagram: the
                // datagrams are views of it, decrypted in place, and the stream data
                // quinn hands over are views too.
                let mut data = BytesMut::from(&buf[..m.len]);
                let stride = m.stride.max(1);
                while !data.is_empty() {
                    let datagram = data.split_to(stride.min(data.len()));
                    self.datagram(now, m, datagram);
                }
            }
            if n < bufs.len() {
                return false;
            }
        }
        true
    }

    pub(super) fn datagram(&mut self, now: StdInstant, meta: &RecvMeta, datagram: BytesMut) {
        let ecn = meta
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        let mut buf = Vec::new();
        let event = self
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, datagram, &mut buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.quic.handle_event(event);
                    mark(&mut self.dirty, ch, conn);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming),
            Some(DatagramEvent::Response(t)) => self.send_now(&t, &buf),
            None => {}
        }
    }

    /// Sends a capped batch of datagrams, round-robin over connections that may have
    /// some; true if some are left for the next pass.
    pub(super) fn transmit(&mut self, now: StdInstant) -> bool {
        if self.io.stalled.is_some() {
            return false;
        }
        let per_call = self
            .io
            .socket
            .max_gso_segments()
            .clamp(1, MAX_DATAGRAMS_PER_CALL);
        let mut budget = MAX_DATAGRAMS_PER_PASS;
        let rounds = self.io.sendq.len();
        for _ in 0..rounds {
            if budget == 0 {
                break;
            }
            let Some(ch) = self.io.sendq.pop_front() else {
                break;
            };
            let Some(mut conn) = self.conns.remove(&ch) else {
                continue;
            };
            self.io.send_buf.clear();
            match conn
                .quic
                .poll_transmit(now, per_call.min(budget), &mut self.io.send_buf)
            {
                Some(t) => {
                    let segments = t.segment_size.map_or(1, |s| t.size.div_ceil(s.max(1)));
                    budget = budget.saturating_sub(segments);
                    let buf = std::mem::take(&mut self.io.send_buf);
                    self.send_now(&t, &buf);
                    self.io.send_buf = buf;
                    self.io.sendq.push_back(ch);
                    self.arm(now, ch, &mut conn);
                    self.conns.insert(ch, conn);
                    if self.io.stalled.is_some() {
                        return false;
                    }
                }
                None => {
                    conn.queued = false;
                    self.arm(now, ch, &mut conn);
                    if conn.quic.is_drained() {
                        self.remove(conn);
                    } else {
                        self.conns.insert(ch, conn);
                    }
                }
            }
        }
        !self.io.sendq.is_empty()
    }

    pub(super) fn send_now(&mut self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let contents = &buf[..t.size];
        let ecn = t
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8));
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn,
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.io.socket.try_send(&transmit) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.io.stalled = Some(Stalled {
                    destination: t.destination,
                    ecn,
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
                    contents: contents.to_vec(),
                });
            }
            // Anything else is a lost datagram; QUIC recovers.
            Err(_) => {}
        }
    }

    pub(super) fn retry_stalled(&mut self) {
        let Some(s) = self.io.stalled.take() else {
            return;
        };
        let transmit = quinn_udp::Transmit {
            destination: s.destination,
            ecn: s.ecn,
            contents: &s.contents,
            segment_size: s.segment_size,
            src_ip: s.src_ip,
        };
        match self.io.socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.stalled = Some(s),
            _ => {}
        }
    }
}
