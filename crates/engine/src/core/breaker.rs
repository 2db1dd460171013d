//! The circuit breaker state machine: closed, open and half-open, driven by results and `now`.
//!
//! The contract is on [`CircuitBreaker`].

use std::collections::VecDeque;
use std::time::Duration;

use super::config_error::{parse_duration, ConfigError};
use super::error::{ErrorKind, KindSet};
use super::time::Time;

/// The three states, with the gauge values of `circuit_breaker_state`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed = 0,
    /// Recovery timeout passed: a limited number of probe calls may go through.
    HalfOpen = 1,
    /// Calls fail fast until the recovery timeout passes.
    Open = 2,
}

impl BreakerState {
    /// The value of the `circuit_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub const fn gauge(self) -> i64 {
        self as i64
    }

    /// A lowercase label for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// An operator's override of a breaker ([`CircuitBreaker::force`]), as resilience4j's forced-open
/// and disabled states.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForcedState {
    /// Open until released: every call refused, no recovery timeout, no probe.
    Open,
    /// Closed until released: every call admitted, failures not counted.
    Closed,
}

/// Breaker settings; build with [`BreakerConfig::builder`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    failure_threshold: u32,
    recovery_timeout: Duration,
    half_open_probes: u32,
    counted: KindSet,
}

impl Default for BreakerConfig {
    /// 5 consecutive failures, 30 s recovery, one probe, Connection and Timeout counted.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            half_open_probes: 1,
            counted: KindSet::TRANSIENT,
        }
    }
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// use backstop_engine::core::BreakerConfig;
    /// use std::time::Duration;
    /// let cfg = BreakerConfig::builder()
    ///     .failure_threshold(3)
    ///     .recovery_timeout(Duration::from_secs(10))
    ///     .build()?;
    /// assert_eq!(cfg.failure_threshold(), 3);
    /// # Ok::<(), backstop_engine::core::ConfigError>(())
    /// ```
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            cfg: BreakerConfig::default(),
        }
    }

    /// Consecutive counted failures that open the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }
    /// Time spent open before half-open.
    pub fn recovery_timeout(&self) -> Duration {
        self.recovery_timeout
    }
    /// Probe calls admitted while half-open.
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }
    /// The error kinds that count as failures.
    pub fn counted(&self) -> KindSet {
        self.counted
    }
}

/// Builds a validated [`BreakerConfig`].
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder {
    cfg: BreakerConfig,
}

impl BreakerConfigBuilder {
    /// Consecutive counted failures that open the breaker (≥ 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.cfg.failure_threshold = n;
        self
    }
    /// Time in open before half-open (> 0).
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.cfg.recovery_timeout = d;
        self
    }
    /// Probes admitted in half-open (≥ 1; default 1).
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.cfg.half_open_probes = n;
        self
    }
    /// The error kinds that count (non-empty; default Connection and Timeout).
    pub fn counted(mut self, kinds: KindSet) -> Self {
        self.cfg.counted = kinds;
        self
    }

    /// Applies `CB_FAILURE_THRESHOLD` and `CB_RECOVERY_TIMEOUT` as read by `lookup` (the runtime
    /// passes the process environment; tests pass a map). Bad values are a [`ConfigError`]
    /// naming the variable.
    ///
    /// ```
    /// use backstop_engine::core::BreakerConfig;
    /// use std::time::Duration;
    /// let env = |k: &str| match k { "CB_RECOVERY_TIMEOUT" => Some("10".to_string()), _ => None };
    /// let cfg = BreakerConfig::builder().env_overrides(env)?.build()?;
    /// assert_eq!(cfg.recovery_timeout(), Duration::from_secs(10));
    /// assert_eq!(cfg.failure_threshold(), 5);
    /// # Ok::<(), backstop_engine::core::ConfigError>(())
    /// ```
    pub fn env_overrides(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(v) = lookup("CB_FAILURE_THRESHOLD") {
            self.cfg.failure_threshold = v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "CB_FAILURE_THRESHOLD",
                    format!("`{v}` is not a positive integer"),
                )
            })?;
            if self.cfg.failure_threshold == 0 {
                return Err(ConfigError::new(
                    "CB_FAILURE_THRESHOLD",
                    "must be at least 1",
                ));
            }
        }
        if let Some(v) = lookup("CB_RECOVERY_TIMEOUT") {
            self.cfg.recovery_timeout = parse_duration("CB_RECOVERY_TIMEOUT", &v)?;
            if self.cfg.recovery_timeout.is_zero() {
                return Err(ConfigError::new(
                    "CB_RECOVERY_TIMEOUT",
                    "must be greater than zero",
                ));
            }
        }
        Ok(self)
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        let c = self.cfg;
        if c.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if c.recovery_timeout.is_zero() {
            return Err(ConfigError::new(
                "recovery_timeout",
                "must be greater than zero",
            ));
        }
        if c.half_open_probes == 0 {
            return Err(ConfigError::new("half_open_probes", "must be at least 1"));
        }
        if c.counted.is_empty() {
            return Err(ConfigError::new(
                "counted",
                "must name at least one error kind",
            ));
        }
        Ok(c)
    }
}

/// Leave to make one call, issued by [`CircuitBreaker::try_acquire`]; hand it back with the
/// result so results from before a transition can be told apart and ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use = "a permit holds a breaker slot: report its result (or release it), else the slot is lost"]
pub struct Permit {
    generation: u32,
    probe: bool,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Why a call was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The breaker is open until the given time.
    Open {
        /// When it turns half-open.
        until: Time,
    },
    /// Half-open, and every probe slot is taken.
    ProbeBusy,
}

/// One state change, for metrics and logs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Consecutive counted failures at the moment of the change.
    pub failures: u32,
    /// When it happened.
    pub at: Time,
}

/// The circuit breaker.
///
/// Contract (docs/architecture.md, "What the core decides"): `failure_threshold` consecutive failures of a counted kind open
/// the breaker; after `recovery_timeout` it is half-open and admits `half_open_probes` probe
/// calls; a probe success closes it, a probe failure re-opens it for a fresh timeout. Failures of
/// other kinds neither count nor reset. A result whose [`Permit`] was issued before the last
/// transition is ignored. Every transition is queued as a [`Transition`] for metrics and logs.
///
/// ```
/// use backstop_engine::core::{BreakerConfig, BreakerState, CircuitBreaker, ErrorKind, Time};
/// use std::time::Duration;
/// let mut cb = CircuitBreaker::new(BreakerConfig::default());
/// let t0 = Time::ZERO;
/// for _ in 0..5 {
///     let p = cb.try_acquire(t0).unwrap();
///     cb.on_failure(t0, p, ErrorKind::Timeout);
/// }
/// assert_eq!(cb.state(), BreakerState::Open);
/// assert!(cb.try_acquire(t0).is_err()); // fails fast
/// let later = t0 + Duration::from_secs(30);
/// let probe = cb.try_acquire(later).unwrap(); // half-open: one probe
/// assert!(probe.is_probe() && cb.try_acquire(later).is_err());
/// cb.on_success(later, probe);
/// assert_eq!(cb.state(), BreakerState::Closed);
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    open_until: Time,
    generation: u32,
    probes_in_flight: u32,
    transitions: VecDeque<Transition>,
    forced: Option<ForcedState>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            open_until: Time::ZERO,
            generation: 0,
            probes_in_flight: 0,
            transitions: VecDeque::with_capacity(4),
            forced: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The current state (as of the last input; call [`handle_timeout`](Self::handle_timeout)
    /// to let an expired open state turn half-open).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive counted failures (the `circuit_breaker_failures` gauge).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Probe calls currently admitted in half-open.
    pub fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight
    }

    /// Bumped at every transition; permits from older generations are ignored.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether `permit` was issued since the last transition, so its result would count.
    pub fn is_current(&self, permit: Permit) -> bool {
        self.current(permit)
    }

    /// When the breaker next needs [`handle_timeout`](Self::handle_timeout): the end of the open
    /// period, or `None`.
    #[must_use = "a driver that ignores the next wake-up never moves an open breaker on"]
    pub fn poll_timeout(&self) -> Option<Time> {
        (self.state == BreakerState::Open && self.forced.is_none()).then_some(self.open_until)
    }

    /// Forces the breaker open or closed until released with `None` (an operator input; see
    /// [`ForcedState`]). Forcing moves to the state at once (a transition when it changes);
    /// releasing leaves it closed with no failures counted, as after a successful probe.
    ///
    /// ```
    /// use backstop_engine::core::{BreakerConfig, BreakerState, CircuitBreaker, ForcedState, Time};
    /// let mut cb = CircuitBreaker::new(BreakerConfig::default());
    /// cb.force(Time::ZERO, Some(ForcedState::Open));
    /// assert!(cb.try_acquire(Time::from_secs(3600)).is_err()); // no recovery while forced
    /// cb.force(Time::from_secs(3600), None);
    /// assert_eq!(cb.state(), BreakerState::Closed);
    /// ```
    pub fn force(&mut self, now: Time, forced: Option<ForcedState>) {
        self.forced = forced;
        let to = match forced {
            Some(ForcedState::Open) => BreakerState::Open,
            Some(ForcedState::Closed) | None => BreakerState::Closed,
        };
        self.failures = 0;
        if self.state != to {
            self.transition(now, to);
        }
    }

    /// The operator's override in force, if any.
    pub fn forced(&self) -> Option<ForcedState> {
        self.forced
    }

    /// Moves open → half-open once the recovery timeout has passed.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.state == BreakerState::Open && self.forced.is_none() && now >= self.open_until {
            self.transition(now, BreakerState::HalfOpen);
        }
    }

    /// Whether a call would be admitted now (without taking a slot).
    pub fn would_admit(&self, now: Time) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                self.forced.is_none() && now >= self.open_until && self.cfg.half_open_probes > 0
            }
            BreakerState::HalfOpen => self.probes_in_flight < self.cfg.half_open_probes,
        }
    }

    /// Asks leave for one call at `now`.
    pub fn try_acquire(&mut self, now: Time) -> Result<Permit, Refusal> {
        self.handle_timeout(now);
        match self.state {
            BreakerState::Closed => Ok(Permit {
                generation: self.generation,
                probe: false,
            }),
            BreakerState::Open => Err(Refusal::Open {
                until: self.open_until,
            }),
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.cfg.half_open_probes {
                    self.probes_in_flight += 1;
                    Ok(Permit {
                        generation: self.generation,
                        probe: true,
                    })
                } else {
                    Err(Refusal::ProbeBusy)
                }
            }
        }
    }

    /// Reports a successful call.
    pub fn on_success(&mut self, now: Time, permit: Permit) {
        if !self.current(permit) {
            return;
        }
        match self.state {
            BreakerState::Closed => {
                #[cfg(not(feature = "planted-bugs"))]
                {
                    self.failures = 0;
                }
                #[cfg(feature = "planted-bugs")]
                if !crate::core::planted::active(crate::core::planted::Bug::BreakerNoReset) {
                    self.failures = 0;
                }
            }
            BreakerState::HalfOpen => {
                self.failures = 0;
                self.transition(now, BreakerState::Closed);
            }
            BreakerState::Open => {}
        }
    }

    /// Reports a failed call of `kind`. Kinds outside the counted set change nothing, except
    /// that a half-open probe slot is released (the probe proved nothing either way).
    pub fn on_failure(&mut self, now: Time, permit: Permit, kind: ErrorKind) {
        if !self.current(permit) {
            return;
        }
        if !self.cfg.counted.contains(kind) || self.forced == Some(ForcedState::Closed) {
            if self.state == BreakerState::HalfOpen && permit.probe {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            }
            return;
        }
        match self.state {
            BreakerState::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.cfg.failure_threshold {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen => {
                self.failures = self.failures.saturating_add(1);
                self.open(now);
            }
            BreakerState::Open => {}
        }
    }

    /// Reports a failure of `kind` seen outside an admitted call: a consumer's DLQ, parking or
    /// retry-topic record publish that finally failed. It counts exactly as a failed call with a
    /// current, non-probe permit would: a counted kind adds to the consecutive failures in closed
    /// (opening at the threshold) and re-opens a half-open breaker; open, forced closed or an
    /// uncounted kind change nothing. There is no matching success: a confirmed record never
    /// resets or closes the breaker (only admitted calls do).
    ///
    /// ```
    /// use backstop_engine::core::{BreakerConfig, BreakerState, CircuitBreaker, ErrorKind, Time};
    /// let mut cb = CircuitBreaker::new(BreakerConfig::default());
    /// for _ in 0..5 {
    ///     cb.on_observed_failure(Time::ZERO, ErrorKind::Connection);
    /// }
    /// assert_eq!(cb.state(), BreakerState::Open);
    /// ```
    pub fn on_observed_failure(&mut self, now: Time, kind: ErrorKind) {
        let permit = Permit {
            generation: self.generation,
            probe: false,
        };
        self.on_failure(now, permit, kind);
    }

    /// Gives back a permit whose call never ran (e.g. cancelled by shutdown), so a probe slot is
    /// not held forever.
    pub fn release(&mut self, permit: Permit) {
        if self.current(permit) && permit.probe && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    /// The next queued transition, oldest first.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.transitions.pop_front()
    }

    fn current(&self, permit: Permit) -> bool {
        permit.generation == self.generation
    }

    fn open(&mut self, now: Time) {
        self.open_until = now + self.cfg.recovery_timeout;
        self.transition(now, BreakerState::Open);
    }

    fn transition(&mut self, now: Time, to: BreakerState) {
        let from = self.state;
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
        self.probes_in_flight = 0;
        self.transitions.push_back(Transition {
            from,
            to,
            failures: self.failures,
            at: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_states_hold_until_released() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        cb.force(secs(0), Some(ForcedState::Open));
        assert_eq!(cb.state(), BreakerState::Open);
        assert_eq!(cb.poll_timeout(), None);
        assert!(!cb.would_admit(secs(1000)));
        assert!(cb.try_acquire(secs(1000)).is_err());
        assert_eq!(cb.state(), BreakerState::Open, "no half-open while forced");
        let t = cb.poll_transition().unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));

        cb.force(secs(1000), Some(ForcedState::Closed));
        assert_eq!(cb.state(), BreakerState::Closed);
        for _ in 0..20 {
            fail(&mut cb, secs(1000), ErrorKind::Timeout);
        }
        assert_eq!(cb.state(), BreakerState::Closed, "failures not counted");
        assert_eq!(cb.failures(), 0);

        cb.force(secs(1001), None);
        assert_eq!(cb.forced(), None);
        for _ in 0..5 {
            fail(&mut cb, secs(1001), ErrorKind::Timeout);
        }
        assert_eq!(
            cb.state(),
            BreakerState::Open,
            "counting again after release"
        );
        assert_eq!(cb.poll_timeout(), Some(secs(1031)));
    }

    fn secs(s: u64) -> Time {
        Time::from_secs(s)
    }

    fn fail(cb: &mut CircuitBreaker, now: Time, kind: ErrorKind) {
        let p = cb.try_acquire(now).expect("admitted");
        cb.on_failure(now, p, kind);
    }

    fn drain(cb: &mut CircuitBreaker) -> Vec<(BreakerState, BreakerState, u32)> {
        std::iter::from_fn(|| cb.poll_transition())
            .map(|t| (t.from, t.to, t.failures))
            .collect()
    }

    #[test]
    fn opens_after_threshold_consecutive_expected_failures() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for i in 0..4 {
            fail(&mut cb, secs(i), ErrorKind::Connection);
            assert_eq!(cb.state(), BreakerState::Closed);
            assert_eq!(cb.failures(), i as u32 + 1);
        }
        fail(&mut cb, secs(4), ErrorKind::Timeout);
        assert_eq!(cb.state(), BreakerState::Open);
        assert_eq!(
            drain(&mut cb),
            vec![(BreakerState::Closed, BreakerState::Open, 5)]
        );
        assert_eq!(cb.poll_timeout(), Some(secs(34)));
        assert_eq!(
            cb.try_acquire(secs(10)),
            Err(Refusal::Open { until: secs(34) })
        );
    }

    #[test]
    fn success_in_closed_resets_the_count() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..4 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        let p = cb.try_acquire(secs(0)).unwrap();
        cb.on_success(secs(0), p);
        assert_eq!(cb.failures(), 0);
        for _ in 0..4 {
            fail(&mut cb, secs(1), ErrorKind::Timeout);
        }
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn other_kinds_neither_count_nor_reset() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..3 {
            fail(&mut cb, secs(0), ErrorKind::Connection);
        }
        for k in [
            ErrorKind::Handler,
            ErrorKind::Invalid,
            ErrorKind::Decode,
            ErrorKind::Panic,
        ] {
            fail(&mut cb, secs(0), k);
        }
        assert_eq!(cb.failures(), 3);
        assert_eq!(cb.state(), BreakerState::Closed);
        fail(&mut cb, secs(0), ErrorKind::Connection);
        fail(&mut cb, secs(0), ErrorKind::Connection);
        assert_eq!(cb.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_after_recovery_timeout_admits_exactly_one_probe() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        assert!(cb.try_acquire(secs(29)).is_err());
        cb.handle_timeout(secs(29));
        assert_eq!(cb.state(), BreakerState::Open);
        cb.handle_timeout(secs(30));
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        let probe = cb.try_acquire(secs(30)).unwrap();
        assert!(probe.is_probe());
        assert_eq!(cb.try_acquire(secs(30)), Err(Refusal::ProbeBusy));
        cb.on_success(secs(31), probe);
        assert_eq!(cb.state(), BreakerState::Closed);
        assert_eq!(cb.failures(), 0);
        assert_eq!(
            drain(&mut cb),
            vec![
                (BreakerState::Closed, BreakerState::Open, 5),
                (BreakerState::Open, BreakerState::HalfOpen, 5),
                (BreakerState::HalfOpen, BreakerState::Closed, 0),
            ]
        );
    }

    #[test]
    fn probe_failure_reopens_for_a_fresh_timeout() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        let probe = cb.try_acquire(secs(30)).unwrap();
        cb.on_failure(secs(31), probe, ErrorKind::Connection);
        assert_eq!(cb.state(), BreakerState::Open);
        assert_eq!(cb.poll_timeout(), Some(secs(61)));
        assert!(cb.try_acquire(secs(60)).is_err());
        assert!(cb.try_acquire(secs(61)).unwrap().is_probe());
    }

    #[test]
    fn inconclusive_probe_releases_its_slot_and_stays_half_open() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        let probe = cb.try_acquire(secs(30)).unwrap();
        cb.on_failure(secs(30), probe, ErrorKind::Invalid);
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        assert!(cb.try_acquire(secs(30)).unwrap().is_probe());
    }

    #[test]
    fn results_from_before_a_transition_are_ignored() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        let stale: Vec<_> = (0..3).map(|_| cb.try_acquire(secs(0)).unwrap()).collect();
        for _ in 0..5 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        assert_eq!(cb.state(), BreakerState::Open);
        let probe = cb.try_acquire(secs(30)).unwrap();
        // Old successes must not close the breaker, old failures must not re-open it.
        cb.on_success(secs(30), stale[0]);
        cb.on_failure(secs(30), stale[1], ErrorKind::Timeout);
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        assert_eq!(cb.probes_in_flight(), 1);
        cb.on_success(secs(30), probe);
        assert_eq!(cb.state(), BreakerState::Closed);
        cb.on_failure(secs(30), stale[2], ErrorKind::Timeout);
        assert_eq!(cb.failures(), 0);
    }

    #[test]
    fn release_frees_a_probe_slot() {
        let mut cb = CircuitBreaker::new(BreakerConfig::default());
        for _ in 0..5 {
            fail(&mut cb, secs(0), ErrorKind::Timeout);
        }
        let probe = cb.try_acquire(secs(30)).unwrap();
        cb.release(probe);
        assert!(cb.try_acquire(secs(30)).is_ok());
    }

    #[test]
    fn config_validation_names_the_setting() {
        let e = BreakerConfig::builder()
            .recovery_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "recovery_timeout");
        let e = BreakerConfig::builder()
            .half_open_probes(0)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "half_open_probes");
        let e = BreakerConfig::builder()
            .counted(KindSet::EMPTY)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "counted");
        let env = |k: &str| (k == "CB_FAILURE_THRESHOLD").then(|| "lots".to_string());
        let e = BreakerConfig::builder().env_overrides(env).unwrap_err();
        assert_eq!(e.setting(), "CB_FAILURE_THRESHOLD");
        let env = |k: &str| (k == "CB_RECOVERY_TIMEOUT").then(|| "0".to_string());
        let e = BreakerConfig::builder().env_overrides(env).unwrap_err();
        assert_eq!(e.setting(), "CB_RECOVERY_TIMEOUT");
        let env = |k: &str| match k {
            "CB_FAILURE_THRESHOLD" => Some("2".to_string()),
            "CB_RECOVERY_TIMEOUT" => Some("1m".to_string()),
            _ => None,
        };
        let cfg = BreakerConfig::builder()
            .env_overrides(env)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(cfg.failure_threshold(), 2);
        assert_eq!(cfg.recovery_timeout(), Duration::from_secs(60));
    }
}
