//! The server side of the TCP protocol: serves any [`Broker`] (usually a [`crate::MemBroker`])
//! to [`crate::RemoteBroker`] clients, over tokio or turmoil streams.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_engine::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Producer, Subscription, SubscriptionSpec,
    SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::wire::{self, Req, Request, Resp, Response};

/// Something that accepts connections: a tokio `TcpListener`, or a turmoil one (so a
/// [`Server`] runs as a turmoil host).
pub trait Listener: Send + 'static {
    /// The connection type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send + '_;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Stream> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for turmoil::net::TcpListener {
    type Stream = turmoil::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Stream> {
        let (stream, _) = turmoil::net::TcpListener::accept(self).await?;
        Ok(stream)
    }
}

/// How a [`Server`] treats its connections.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Close a connection from which nothing (not even a keepalive ping) arrived for this
    /// long, as a broker notices a dead client. Set it above three times the clients'
    /// [`crate::ClientConfig::keepalive`] interval; `None` waits for the stream to fail.
    pub idle_timeout: Option<Duration>,
}

/// Serves one broker over any number of connections. Cheap to clone.
///
/// Each connection owns the producers and consumers it created; when it ends (closed, broken,
/// idle, or [`Server::disconnect_all`]) its consumers are closed, so their unacked deliveries
/// return to their subscriptions.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
/// use backstop_mem::{MemBroker, RemoteBroker, Server};
///
/// let broker = MemBroker::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let server = Server::new(Arc::new(broker.clone()));
/// tokio::spawn({ let server = server.clone(); async move { server.serve(listener).await } });
///
/// let remote = RemoteBroker::new(move || tokio::net::TcpStream::connect(addr));
/// let sub = remote.subscribe(&SubscriptionSpec::new("t", "s")).await.unwrap();
/// remote.producer("t").await.unwrap().send(OutgoingMessage::new("hi")).await.unwrap();
/// let m = sub.receive().await.unwrap();
/// sub.ack(&m.id).await.unwrap();
/// assert_eq!(broker.acked_ids("t", "s"), vec![m.id]);
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    broker: Arc<dyn Broker>,
    config: ServerConfig,
    next_conn: AtomicU64,
    /// Open connections: id → the switch that ends it.
    conns: Mutex<BTreeMap<u64, watch::Sender<bool>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Server {
    /// A server for `broker` with the default configuration.
    pub fn new(broker: Arc<dyn Broker>) -> Server {
        Server::with_config(broker, ServerConfig::default())
    }

    /// A server for `broker` configured by `config`.
    pub fn with_config(broker: Arc<dyn Broker>, config: ServerConfig) -> Server {
        Server {
            inner: Arc::new(ServerInner {
                broker,
                config,
                next_conn: AtomicU64::new(1),
                conns: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Accepts connections and serves each on its own task until accepting fails.
    pub async fn serve<L: Listener>(&self, mut listener: L) -> io::Result<()> {
        loop {
            let stream = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection(stream).await {
                    tracing::debug!(error = %e, "broker connection ended with an error");
                }
            });
        }
    }

    /// Serves one connection until it ends, then closes the consumers it opened.
    pub async fn serve_connection<S>(&self, stream: S) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = watch::channel(false);
        lock(&self.inner.conns).insert(conn_id, stop_tx);
        let result = Connection::new(self.inner.broker.clone(), self.inner.config.clone())
            .run(stream, stop_rx)
            .await;
        lock(&self.inner.conns).remove(&conn_id);
        result
    }

    /// A connection to this server over an in-memory pipe (`tokio::io::duplex`), served on a
    /// new task: the wire protocol without sockets, so it also runs under paused time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use backstop_engine::broker::{Broker, OutgoingMessage};
    /// use backstop_mem::{MemBroker, RemoteBroker, Server};
    ///
    /// let broker = MemBroker::new();
    /// let server = Server::new(Arc::new(broker.clone()));
    /// let remote = RemoteBroker::new(move || {
    ///     let stream = server.connect_in_memory();
    ///     async move { Ok(stream) }
    /// });
    /// remote.producer("t").await.unwrap().send(OutgoingMessage::new("x")).await.unwrap();
    /// assert_eq!(broker.topic_payloads("t"), vec![b"x".to_vec()]);
    /// # }
    /// ```
    pub fn connect_in_memory(&self) -> tokio::io::DuplexStream {
        let (client, server_end) = tokio::io::duplex(256 * 1024);
        let server = self.clone();
        tokio::spawn(async move {
            if let Err(e) = server.serve_connection(server_end).await {
                tracing::debug!(error = %e, "in-memory broker connection ended with an error");
            }
        });
        client
    }

    /// Ends every open connection, as a network failure would: their pending calls fail on
    /// the client side and their consumers are closed. New connections are accepted.
    pub fn disconnect_all(&self) {
        for stop in lock(&self.inner.conns).values() {
            stop.send_replace(true);
        }
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }
}

/// Serves `broker` on every connection `listener` accepts (see [`Server`]).
pub async fn serve<L: Listener>(broker: Arc<dyn Broker>, listener: L) -> io::Result<()> {
    Server::new(broker).serve(listener).await
}

/// Serves `broker` on one connection until it ends (see [`Server`]).
pub async fn serve_connection<S>(broker: Arc<dyn Broker>, stream: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Server::new(broker).serve_connection(stream).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The handles one connection created, shared with its request tasks.
#[derive(Default)]
struct Handles {
    next: u64,
    /// Ended: handles made by late tasks are closed at once.
    closed: bool,
    /// Producer handle → the queue of its sends (run in order by one task).
    producers: BTreeMap<u64, mpsc::UnboundedSender<(u64, OutgoingMessage)>>,
    subscriptions: BTreeMap<u64, Arc<dyn Subscription>>,
    /// Receive request id → the switch that cancels it.
    receives: BTreeMap<u64, oneshot::Sender<()>>,
}

/// Requests one connection may have in flight (each a task: a parked `receive`, a queued
/// `send`, ...). A client past it is hostile or broken: its connection is closed, so it cannot
/// make the server hold unbounded memory (frames themselves are bounded by the wire's
/// 64 MiB frame limit, and bytes are buffered only as they arrive).
pub const MAX_IN_FLIGHT: usize = 10_000;

/// One served connection.
struct Connection {
    broker: Arc<dyn Broker>,
    config: ServerConfig,
    handles: Arc<Mutex<Handles>>,
    tasks: JoinSet<()>,
}

/// Sends responses to the connection's writer.
#[derive(Clone)]
struct Replier(mpsc::UnboundedSender<Vec<u8>>);

impl Replier {
    fn send(&self, id: u64, result: Resp) {
        // A closed writer means the connection is ending; the answer has nowhere to go.
        let _ = self.0.send(wire::encode(&Response { id, result }));
    }

    fn send_result(&self, id: u64, result: Result<Resp, BrokerError>) {
        self.send(id, result.unwrap_or_else(|e| Resp::error(&e)));
    }
}

impl Connection {
    fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Connection {
        Connection {
            broker,
            config,
            handles: Arc::new(Mutex::new(Handles::default())),
            tasks: JoinSet::new(),
        }
    }

    async fn run<S>(mut self, stream: S, mut stop: watch::Receiver<bool>) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, mut writer) = tokio::io::split(stream);
        let mut reader = wire::FrameReader::new(reader);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let replier = Replier(out_tx);
        let (writer_failed_tx, mut writer_failed) = oneshot::channel::<io::Error>();
        let writer_task = tokio::spawn(async move {
            while let Some(mut frames) = out_rx.recv().await {
                while let Ok(more) = out_rx.try_recv() {
                    frames.extend_from_slice(&more);
                }
                if let Err(e) = wire::write_frames(&mut writer, &frames).await {
                    let _ = writer_failed_tx.send(e);
                    return;
                }
            }
        });

        let idle = self.config.idle_timeout;
        let mut last_heard = Instant::now();
        let result = loop {
            let idle_deadline = idle.map(|d| last_heard + d);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break Ok(()),
                e = &mut writer_failed => break e.map_or(Ok(()), Err),
                Some(_) = self.tasks.join_next() => {}
                _ = sleep_until_opt(idle_deadline) => {
                    break Err(io::Error::new(io::ErrorKind::TimedOut, "client went silent"));
                }
                frame = reader.next::<Request>() => match frame {
                    Ok(Some(request)) => {
                        last_heard = Instant::now();
                        if self.tasks.len() >= MAX_IN_FLIGHT {
                            break Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("more than {MAX_IN_FLIGHT} requests in flight on one connection"),
                            ));
                        }
                        self.handle(request, &replier);
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
            }
        };

        // Tear down: stop every task, then close every consumer this connection opened.
        self.tasks.shutdown().await;
        writer_task.abort();
        let subscriptions: Vec<Arc<dyn Subscription>> = {
            let mut h = lock(&self.handles);
            h.closed = true;
            h.producers.clear();
            h.receives.clear();
            std::mem::take(&mut h.subscriptions).into_values().collect()
        };
        for sub in subscriptions {
            let _ = sub.close().await;
        }
        result
    }

    /// Starts serving one request.
    fn handle(&mut self, request: Request, reply: &Replier) {
        let id = request.id;
        let broker = self.broker.clone();
        let handles = self.handles.clone();
        let reply = reply.clone();
        match request.op {
            Req::Ping => reply.send(id, Resp::Pong),
            Req::CreateProducer { topic } => {
                let (queue_tx, queue_rx) = mpsc::unbounded_channel();
                self.tasks.spawn(async move {
                    match broker.producer(&topic).await {
                        Ok(producer) => {
                            let handle = {
                                let mut h = lock(&handles);
                                if h.closed {
                                    return;
                                }
                                h.next += 1;
                                let handle = h.next;
                                h.producers.insert(handle, queue_tx);
                                handle
                            };
                            reply.send(id, Resp::Producer { handle });
                            run_producer(producer, queue_rx, reply).await;
                        }
                        Err(e) => reply.send(id, Resp::error(&e)),
                    }
                });
            }
            Req::Send { producer, message } => {
                let queue = lock(&handles).producers.get(&producer).cloned();
                match queue {
                    Some(queue) => {
                        if let Err(mpsc::error::SendError((id, _))) =
                            queue.send((id, message.into()))
                        {
                            reply.send(id, Resp::error(&gone("producer")));
                        }
                    }
                    None => reply.send(id, Resp::error(&unknown("producer", producer))),
                }
            }
            Req::Subscribe {
                topic,
                subscription,
                kind,
                nack_delay_nanos,
            } => {
                let kind: SubscriptionType = match kind.parse() {
                    Ok(kind) => kind,
                    Err(e) => {
                        reply.send(id, Resp::error(&BrokerError::new(ErrorKind::Invalid, e)));
                        return;
                    }
                };
                let spec = SubscriptionSpec {
                    topic,
                    subscription,
                    kind,
                    nack_redelivery_delay: Duration::from_nanos(nack_delay_nanos),
                };
                self.tasks.spawn(async move {
                    let result = broker.subscribe(&spec).await.map(|sub| {
                        let mut h = lock(&handles);
                        if h.closed {
                            drop(h);
                            // The connection ended meanwhile; closing is synchronous for the
                            // in-memory broker and best effort elsewhere.
                            tokio::spawn(async move { sub.close().await });
                            return Resp::Cancelled;
                        }
                        h.next += 1;
                        let handle = h.next;
                        h.subscriptions.insert(handle, sub);
                        Resp::Subscribed { handle }
                    });
                    reply.send_result(id, result);
                });
            }
            Req::Receive { subscription } => {
                let Some(sub) = lock(&handles).subscriptions.get(&subscription).cloned() else {
                    reply.send(id, Resp::error(&unknown("subscription", subscription)));
                    return;
                };
                let (cancel_tx, cancel_rx) = oneshot::channel();
                lock(&handles).receives.insert(id, cancel_tx);
                self.tasks.spawn(async move {
                    // Exactly one answer: the message, the error, or `cancelled` (the receive
                    // future is dropped, which a cancel-safe subscription allows).
                    let result = tokio::select! {
                        biased;
                        r = sub.receive() => r.map(|m| Resp::Message(m.into())),
                        _ = cancel_rx => Ok(Resp::Cancelled),
                    };
                    lock(&handles).receives.remove(&id);
                    reply.send_result(id, result);
                });
            }
            Req::Cancel { request } => {
                if let Some(cancel) = lock(&handles).receives.remove(&request) {
                    let _ = cancel.send(());
                }
            }
            Req::Ack {
                subscription,
                id: message,
            } => self.settle(id, subscription, MessageId(message), Settle::Ack, reply),
            Req::Nack {
                subscription,
                id: message,
            } => self.settle(id, subscription, MessageId(message), Settle::Nack, reply),
            Req::Close { subscription } => {
                let sub = lock(&handles).subscriptions.remove(&subscription);
                self.tasks.spawn(async move {
                    let result = match sub {
                        Some(sub) => sub.close().await.map(|()| Resp::Done),
                        // Closing twice is not an error.
                        None => Ok(Resp::Done),
                    };
                    reply.send_result(id, result);
                });
            }
        }
    }

    /// Starts an ack or nack.
    fn settle(
        &mut self,
        id: u64,
        subscription: u64,
        message: MessageId,
        how: Settle,
        reply: Replier,
    ) {
        let Some(sub) = lock(&self.handles)
            .subscriptions
            .get(&subscription)
            .cloned()
        else {
            reply.send(id, Resp::error(&unknown("subscription", subscription)));
            return;
        };
        self.tasks.spawn(async move {
            let result = match how {
                Settle::Ack => sub.ack(&message).await,
                Settle::Nack => sub.nack(&message).await,
            };
            reply.send_result(id, result.map(|()| Resp::Done));
        });
    }
}

/// Which way a delivery is settled.
#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
}

/// Runs a producer's sends one after the other, so they publish in request order.
async fn run_producer(
    producer: Arc<dyn Producer>,
    mut queue: mpsc::UnboundedReceiver<(u64, OutgoingMessage)>,
    reply: Replier,
) {
    while let Some((id, message)) = queue.recv().await {
        let result = producer.send(message).await;
        reply.send_result(id, result.map(|mid| Resp::Sent { id: mid.0 }));
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unknown(what: &str, handle: u64) -> BrokerError {
    BrokerError::new(
        ErrorKind::Invalid,
        format!("unknown {what} handle {handle} on this connection"),
    )
}

fn gone(what: &str) -> BrokerError {
    BrokerError::connection(format!("the server's {what} is gone"))
}
