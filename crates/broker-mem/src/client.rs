//! The client side of the TCP protocol: [`RemoteBroker`] implements [`Broker`] over a stream
//! the caller knows how to open (tokio or turmoil), reconnecting after failures.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Producer, ReceivedMessage, Subscription,
    SubscriptionSpec,
};
use backstop_engine::core::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::wire::{self, Req, Request, Resp, Response};

/// How a [`RemoteBroker`] times its calls and watches its connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The limit for every call but the wait inside `receive`: connecting, creating a
    /// producer, subscribing, send, ack, nack, close. Past it the call fails with
    /// [`ErrorKind::Timeout`] (a send that timed out may still have been published). `None`
    /// waits as long as it takes, which on a partitioned stream can be forever.
    pub call_timeout: Option<Duration>,
    /// The limit for `receive`'s wait for a message; past it `receive` fails with
    /// [`ErrorKind::Timeout`] and no message is lost. `None` (the default) waits until a
    /// message comes or the connection is found dead.
    pub receive_timeout: Option<Duration>,
    /// Ping the server this often; a connection from which nothing arrived for three
    /// intervals is declared dead, failing its pending calls (receives included) with
    /// [`ErrorKind::Connection`]. `None` relies on the stream reporting failures.
    pub keepalive: Option<Duration>,
}

impl Default for ClientConfig {
    /// 10 s call timeout, no receive timeout, 1 s keepalive.
    fn default() -> Self {
        ClientConfig {
            call_timeout: Some(Duration::from_secs(10)),
            receive_timeout: None,
            keepalive: Some(Duration::from_secs(1)),
        }
    }
}

/// A stream the client can speak over.
trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

type BoxStream = Box<dyn AsyncStream>;
type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;
type ConnectFn = Box<dyn Fn() -> ConnectFuture + Send + Sync>;

/// A [`Broker`] served by a [`crate::Server`] at the other end of a stream.
///
/// It holds one connection at a time, opened by the `connect` function on first use and again
/// on the first call after it broke. Calls multiplex over it. When it breaks, pending calls fail
/// with [`ErrorKind::Connection`]; every call is bounded by [`ClientConfig::call_timeout`].
/// Producers and subscriptions survive a broken connection: their next call reconnects
/// (re-creating the producer, re-subscribing), while acks and nacks of deliveries received on
/// the broken connection fail with Connection — the server returned those deliveries to the
/// subscription when the connection ended, so they come again. A re-subscription refused as
/// Rejected (an Exclusive subscription whose old consumer the server has not closed yet) is
/// retried every 50 ms for up to 5 s, within the call timeout.
///
/// `receive` is cancel-safe here too: a message that arrives for a receive whose future was
/// dropped is kept and returned by the subscription's next `receive`.
///
/// ```no_run
/// # async fn example() {
/// use backstop_mem::RemoteBroker;
/// // tokio:
/// let remote = RemoteBroker::new(|| tokio::net::TcpStream::connect("127.0.0.1:6650"));
/// // inside a turmoil simulation, the same with turmoil's stream:
/// // let remote = RemoteBroker::new(|| turmoil::net::TcpStream::connect(("broker", 6650)));
/// # }
/// ```
#[derive(Clone)]
pub struct RemoteBroker {
    client: Arc<Client>,
}

impl fmt::Debug for RemoteBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBroker")
            .field("config", &self.client.config)
            .finish_non_exhaustive()
    }
}

impl RemoteBroker {
    /// A client that opens its connections with `connect`, with the default configuration.
    pub fn new<F, Fut, S>(connect: F) -> RemoteBroker
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        RemoteBroker::with_config(connect, ClientConfig::default())
    }

    /// A client that opens its connections with `connect`, configured by `config`.
    pub fn with_config<F, Fut, S>(connect: F, config: ClientConfig) -> RemoteBroker
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connect: ConnectFn = Box::new(move || {
            let fut = connect();
            Box::pin(async move { fut.await.map(|s| Box::new(s) as BoxStream) })
        });
        RemoteBroker {
            client: Arc::new(Client {
                connect,
                config,
                current: tokio::sync::Mutex::new(None),
                next_gen: AtomicU64::new(1),
            }),
        }
    }

    /// Drops the current connection, as if it broke (pending calls fail with Connection);
    /// the next call opens a new one.
    pub async fn disconnect(&self) {
        if let Some(conn) = self.client.current.lock().await.take() {
            conn.kill("disconnected by the client");
        }
    }

    /// Whether a live connection is open.
    pub async fn is_connected(&self) -> bool {
        self.client
            .current
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.is_dead())
    }
}

#[async_trait]
impl Broker for RemoteBroker {
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        let producer = RemoteProducer {
            client: self.client.clone(),
            topic: topic.to_owned(),
            bound: tokio::sync::Mutex::new(None),
        };
        within(
            self.client.config.call_timeout,
            "create producer",
            producer.bind(),
        )
        .await?;
        Ok(Arc::new(producer))
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        let subscription = RemoteSubscription {
            client: self.client.clone(),
            spec: spec.clone(),
            bound: tokio::sync::Mutex::new(None),
            stash: Arc::new(Stash::default()),
            held: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
        };
        within(
            self.client.config.call_timeout,
            "subscribe",
            subscription.bind(),
        )
        .await?;
        Ok(Arc::new(subscription))
    }
}

/// What every clone of a [`RemoteBroker`] and its handles share.
struct Client {
    connect: ConnectFn,
    config: ClientConfig,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_gen: AtomicU64,
}

impl Client {
    /// The live connection, opened if there is none.
    async fn connection(&self) -> Result<Arc<Conn>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref().filter(|c| !c.is_dead()) {
            return Ok(conn.clone());
        }
        let stream = (self.connect)()
            .await
            .map_err(|e| BrokerError::connection(format!("connecting to the broker: {e}")))?;
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let conn = Conn::start(stream, gen, self.config.keepalive);
        *current = Some(conn.clone());
        Ok(conn)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(conn) = self.current.get_mut().take() {
            conn.kill("client dropped");
        }
    }
}

/// Messages that arrived for receives nobody awaited any more, with their connection's
/// generation; a receive waiting meanwhile is woken to take them.
#[derive(Default)]
struct Stash {
    messages: Mutex<VecDeque<(u64, ReceivedMessage)>>,
    added: tokio::sync::Notify,
}

impl Stash {
    fn push(&self, gen: u64, message: ReceivedMessage) {
        lock(&self.messages).push_back((gen, message));
        self.added.notify_waiters();
    }

    /// A stashed message of connection `gen`; those of other (dead) connections are dropped:
    /// the server returned them to the subscription.
    fn pop(&self, gen: u64) -> Option<ReceivedMessage> {
        let mut messages = lock(&self.messages);
        while let Some((g, m)) = messages.pop_front() {
            if g == gen {
                return Some(m);
            }
        }
        None
    }
}

type Answer = Result<Resp, BrokerError>;

/// A call waiting for its answer.
struct Pending {
    tx: oneshot::Sender<Answer>,
    /// For receives: where a message goes if the caller is gone.
    stash: Option<Arc<Stash>>,
}

#[derive(Default)]
struct PendingMap {
    /// Why the connection died, once it did.
    dead: Option<String>,
    calls: BTreeMap<u64, Pending>,
}

/// One connection to the server and its two tasks (reader and writer).
struct Conn {
    /// Which connection of the client this is (1, 2, ...).
    gen: u64,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<PendingMap>,
    next_id: AtomicU64,
    stop: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn start(stream: BoxStream, gen: u64, keepalive: Option<Duration>) -> Arc<Conn> {
        let (out, out_rx) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        let conn = Arc::new(Conn {
            gen,
            out,
            pending: Mutex::new(PendingMap::default()),
            next_id: AtomicU64::new(1),
            stop,
        });
        let (reader, writer) = tokio::io::split(stream);
        tokio::spawn(read_loop(conn.clone(), reader, keepalive));
        tokio::spawn(write_loop(conn.clone(), writer, out_rx, keepalive));
        conn
    }

    fn is_dead(&self) -> bool {
        lock(&self.pending).dead.is_some()
    }

    /// Marks the connection dead, stops its tasks and fails every pending call.
    fn kill(&self, reason: &str) {
        let calls = {
            let mut p = lock(&self.pending);
            if p.dead.is_some() {
                return;
            }
            p.dead = Some(reason.to_owned());
            std::mem::take(&mut p.calls)
        };
        self.stop.send_replace(true);
        for (_, call) in calls {
            let _ = call
                .tx
                .send(Err(BrokerError::connection(reason.to_owned())));
        }
    }

    /// Sends a request whose answer will come on the returned channel.
    fn request(
        &self,
        op: Req,
        stash: Option<Arc<Stash>>,
    ) -> Result<(u64, oneshot::Receiver<Answer>), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = lock(&self.pending);
            if let Some(reason) = &p.dead {
                return Err(BrokerError::connection(reason.clone()));
            }
            p.calls.insert(id, Pending { tx, stash });
        }
        if self.out.send(wire::encode(&Request { id, op })).is_err() {
            lock(&self.pending).calls.remove(&id);
            return Err(BrokerError::connection("connection closed"));
        }
        Ok((id, rx))
    }

    /// Sends a request whose answer nobody awaits.
    fn fire(&self, op: Req) {
        let _ = self.out.send(wire::encode(&Request { id: 0, op }));
    }

    /// Hands an answer to its caller; a message for a receive whose caller is gone is
    /// stashed for the subscription's next receive, and a consumer subscribed for a caller
    /// that is gone (a subscribe that timed out or was dropped) is closed again.
    fn route(&self, response: Response) {
        let Some(call) = lock(&self.pending).calls.remove(&response.id) else {
            return; // a ping's answer, or a call that timed out
        };
        if let Err(answer) = call.tx.send(response.result.into_result()) {
            match (answer, call.stash) {
                (Ok(Resp::Message(m)), Some(stash)) => stash.push(self.gen, m.into()),
                // Nobody holds this consumer: left open it would stay subscribed as long as
                // the connection lives, owning Key_Shared keys and maybe the Failover active
                // slot, and never receive.
                (Ok(Resp::Subscribed { handle }), _) => self.fire(Req::Close {
                    subscription: handle,
                }),
                _ => {}
            }
        }
    }
}

async fn read_loop(
    conn: Arc<Conn>,
    reader: tokio::io::ReadHalf<BoxStream>,
    keepalive: Option<Duration>,
) {
    let mut reader = wire::FrameReader::new(reader);
    let mut stop = conn.stop.subscribe();
    let dead_after = keepalive.map(|d| d * 3);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = sleep_until_opt(dead_after.map(|d| last_heard + d)) => {
                conn.kill("the broker stopped answering keepalive pings");
                return;
            }
            frame = reader.next::<Response>() => match frame {
                Ok(Some(response)) => {
                    last_heard = Instant::now();
                    conn.route(response);
                }
                Ok(None) => {
                    conn.kill("connection closed by the broker");
                    return;
                }
                Err(e) => {
                    conn.kill(&format!("connection to the broker failed: {e}"));
                    return;
                }
            },
        }
    }
}

async fn write_loop(
    conn: Arc<Conn>,
    mut writer: tokio::io::WriteHalf<BoxStream>,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    keepalive: Option<Duration>,
) {
    let mut stop = conn.stop.subscribe();
    let mut ping = keepalive.map(|d| {
        let mut i = tokio::time::interval_at(Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let frames = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            frame = out.recv() => match frame {
                Some(mut frames) => {
                    while let Ok(more) = out.try_recv() {
                        frames.extend_from_slice(&more);
                    }
                    frames
                }
                None => return,
            },
            _ = tick(&mut ping) => wire::encode(&Request { id: 0, op: Req::Ping }),
        };
        if let Err(e) = wire::write_frames(&mut writer, &frames).await {
            conn.kill(&format!("writing to the broker failed: {e}"));
            return;
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A call in flight. Dropped before its answer (a timeout, or the caller's future dropped):
/// a receive is cancelled on the server and any message already on its way is stashed; a
/// subscribe waits for its late answer, and the consumer it made is closed; any other call is
/// forgotten (its late answer is discarded).
struct InFlight<'a> {
    conn: &'a Conn,
    id: u64,
    rx: Option<oneshot::Receiver<Answer>>,
    stash: Option<&'a Arc<Stash>>,
    /// A subscribe: its pending entry stays when dropped, so `route` closes what it made.
    subscribe: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        match self.stash {
            Some(stash) => {
                if let Ok(Ok(Resp::Message(m))) = rx.try_recv() {
                    stash.push(self.conn.gen, m.into());
                }
                // The pending entry stays: the server answers the cancel (or sends the
                // message it already had, which `route` stashes), and that answer removes it.
                self.conn.fire(Req::Cancel { request: self.id });
            }
            None => {
                if let Ok(Ok(Resp::Subscribed { handle })) = rx.try_recv() {
                    self.conn.fire(Req::Close {
                        subscription: handle,
                    });
                } else if !self.subscribe {
                    lock(&self.conn.pending).calls.remove(&self.id);
                }
            }
        }
    }
}

/// Makes a call and waits for its answer.
async fn call(conn: &Conn, op: Req, stash: Option<&Arc<Stash>>) -> Answer {
    let subscribe = matches!(op, Req::Subscribe { .. });
    let (id, rx) = conn.request(op, stash.cloned())?;
    let mut flight = InFlight {
        conn,
        id,
        rx: Some(rx),
        stash,
        subscribe,
    };
    let answer = flight.rx.as_mut().expect("set above").await;
    flight.rx = None;
    answer.unwrap_or_else(|_| Err(BrokerError::connection("connection closed")))
}

/// Bounds `fut` by `limit`, failing with Timeout.
async fn within<T>(
    limit: Option<Duration>,
    what: &str,
    fut: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
            Err(BrokerError::timeout(format!(
                "{what} timed out after {d:?}"
            )))
        }),
        None => fut.await,
    }
}

fn unexpected(what: &str, answer: Resp) -> BrokerError {
    BrokerError::new(
        ErrorKind::Fatal,
        format!("protocol error: unexpected answer to {what}: {answer:?}"),
    )
}

/// A server-side handle on a given connection.
type Binding = Option<(Arc<Conn>, u64)>;

/// A producer on the other end of the connection.
struct RemoteProducer {
    client: Arc<Client>,
    topic: String,
    bound: tokio::sync::Mutex<Binding>,
}

impl RemoteProducer {
    /// The server-side producer on the live connection, created if needed.
    async fn bind(&self) -> Result<(Arc<Conn>, u64), BrokerError> {
        let mut bound = self.bound.lock().await;
        if let Some((conn, handle)) = bound.as_ref().filter(|(c, _)| !c.is_dead()) {
            return Ok((conn.clone(), *handle));
        }
        let conn = self.client.connection().await?;
        let op = Req::CreateProducer {
            topic: self.topic.clone(),
        };
        match call(&conn, op, None).await? {
            Resp::Producer { handle } => {
                *bound = Some((conn.clone(), handle));
                Ok((conn, handle))
            }
            other => Err(unexpected("create producer", other)),
        }
    }
}

#[async_trait]
impl Producer for RemoteProducer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        within(self.client.config.call_timeout, "send", async {
            let (conn, producer) = self.bind().await?;
            let op = Req::Send {
                producer,
                message: message.into(),
            };
            match call(&conn, op, None).await? {
                Resp::Sent { id } => Ok(MessageId(id)),
                other => Err(unexpected("send", other)),
            }
        })
        .await
    }
}

/// How often, and how far apart, a re-subscription refused as Rejected is tried again.
const RESUBSCRIBE_TRIES: u32 = 100;
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

/// A consumer on the other end of the connection.
struct RemoteSubscription {
    client: Arc<Client>,
    spec: SubscriptionSpec,
    bound: tokio::sync::Mutex<Binding>,
    stash: Arc<Stash>,
    /// Deliveries handed out and not settled yet → the connection they came on.
    held: Mutex<BTreeMap<MessageId, u64>>,
    closed: AtomicBool,
}

impl RemoteSubscription {
    /// The server-side consumer on the live connection, subscribed again if needed.
    async fn bind(&self) -> Result<(Arc<Conn>, u64), BrokerError> {
        let mut bound = self.bound.lock().await;
        if let Some((conn, handle)) = bound.as_ref().filter(|(c, _)| !c.is_dead()) {
            return Ok((conn.clone(), *handle));
        }
        // Subscribing again after a broken connection, the server may not have closed the
        // old consumer yet (an Exclusive subscription then refuses the new one): retry a while
        // rather than report a permanent error for a transient state.
        let again = bound.is_some();
        let mut attempts = 0;
        loop {
            let conn = self.client.connection().await?;
            match call(&conn, Req::subscribe(&self.spec), None).await {
                Ok(Resp::Subscribed { handle }) => {
                    *bound = Some((conn.clone(), handle));
                    return Ok((conn, handle));
                }
                Ok(other) => return Err(unexpected("subscribe", other)),
                Err(e)
                    if again && e.kind() == ErrorKind::Rejected && attempts < RESUBSCRIBE_TRIES =>
                {
                    attempts += 1;
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::new(ErrorKind::Fatal, "consumer is closed"))
        } else {
            Ok(())
        }
    }

    /// Acks or nacks over the connection the delivery came on.
    async fn settle(&self, id: &MessageId, ack: bool) -> Result<(), BrokerError> {
        self.check_open()?;
        let what = if ack { "ack" } else { "nack" };
        let came_on = lock(&self.held).get(id).copied();
        let bound = self.bound.lock().await.clone();
        let live = bound.filter(|(c, _)| !c.is_dead());
        let Some((conn, subscription)) = live.filter(|(c, _)| came_on.is_none_or(|g| g == c.gen))
        else {
            lock(&self.held).remove(id);
            return Err(BrokerError::connection(format!(
                "{what}: delivery {id} was lost with its connection; it will be redelivered"
            )));
        };
        let op = if ack {
            Req::Ack {
                subscription,
                id: id.0.clone(),
            }
        } else {
            Req::Nack {
                subscription,
                id: id.0.clone(),
            }
        };
        let answer = within(self.client.config.call_timeout, what, call(&conn, op, None)).await?;
        match answer {
            Resp::Done => {
                lock(&self.held).remove(id);
                Ok(())
            }
            other => Err(unexpected(what, other)),
        }
    }
}

#[async_trait]
impl Subscription for RemoteSubscription {
    async fn receive(&self) -> Result<ReceivedMessage, BrokerError> {
        self.check_open()?;
        let config = &self.client.config;
        let (conn, subscription) = within(config.call_timeout, "subscribe", self.bind()).await?;
        let message = within(config.receive_timeout, "receive", async {
            loop {
                let stashed = self.stash.added.notified();
                tokio::pin!(stashed);
                stashed.as_mut().enable();
                if let Some(m) = self.stash.pop(conn.gen) {
                    return Ok(m);
                }
                // A message stashed meanwhile (one a cancelled receive had already taken on
                // the server) is taken from the stash; this receive is then cancelled, and
                // whatever it had taken is stashed in turn.
                let op = Req::Receive { subscription };
                tokio::select! {
                    biased;
                    answer = call(&conn, op, Some(&self.stash)) => {
                        return match answer? {
                            Resp::Message(m) => Ok(ReceivedMessage::from(m)),
                            other => Err(unexpected("receive", other)),
                        };
                    }
                    _ = &mut stashed => {}
                }
            }
        })
        .await?;
        lock(&self.held).insert(message.id.clone(), conn.gen);
        Ok(message)
    }

    async fn ack(&self, id: &MessageId) -> Result<(), BrokerError> {
        self.settle(id, true).await
    }

    async fn nack(&self, id: &MessageId) -> Result<(), BrokerError> {
        self.settle(id, false).await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.closed.store(true, Ordering::Release);
        let bound = self.bound.lock().await.take();
        if let Some((conn, subscription)) = bound.filter(|(c, _)| !c.is_dead()) {
            // If this fails the connection is broken, and the server closes the consumer.
            let _ = within(
                self.client.config.call_timeout,
                "close",
                call(&conn, Req::Close { subscription }, None),
            )
            .await;
        }
        Ok(())
    }
}

impl Drop for RemoteSubscription {
    fn drop(&mut self) {
        if let Some((conn, subscription)) = self.bound.get_mut().take() {
            conn.fire(Req::Close { subscription });
        }
    }
}
