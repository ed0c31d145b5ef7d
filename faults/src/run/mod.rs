//! One scenario's world and the verbs scenarios are written in: start
//! workers, produce the mix, kill, freeze, restart; `settle.rs` waits for
//! recovery and quiescence and asks the oracle.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use orderflow::config::Settings;
use orderflow_testkit::mix::{Input, Message, Mix, MixOptions};
use orderflow_testkit::registry::RegistryDouble;
use orderflow_testkit::{prom, Worker, World};
use rdkafka::consumer::BaseConsumer;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::drive::{self, Progress};
use crate::poison;
use crate::proxy::Proxy;
use orderflow_testkit::broker::Broker;

mod settle;

/// What every scenario shares.
#[derive(Clone)]
pub struct Options {
    pub events: usize,
    pub seed: u64,
    /// Events per second the mix is produced at.
    pub rate: u64,
    /// Shorter freezes, outages and holds, for CI.
    pub quick: bool,
    pub binary: PathBuf,
    pub base: Settings,
    pub workdir: PathBuf,
}

impl Options {
    /// `full`, or a third of it in quick runs.
    pub fn scaled(&self, full: Duration) -> Duration {
        if self.quick {
            full / 3
        } else {
            full
        }
    }
}

/// How a scenario's world is built.
#[derive(Default)]
pub struct Spec {
    pub workers: usize,
    /// Extra environment for every worker.
    pub env: Vec<(&'static str, String)>,
    /// Poison messages among the events, and how many of them are 10 MB.
    pub poison: usize,
    pub huge: usize,
    pub skewed_clocks: bool,
    /// A schema registry (the test double) and checkouts as Avro.
    pub avro: bool,
    /// Workers reach the broker (everyone does: it advertises the proxy) or
    /// PostgreSQL through a proxy the scenario controls.
    pub kafka_proxy: bool,
    pub pg_proxy: bool,
    /// Whether the fault must cause redeliveries (the outcome fails if none
    /// were seen).
    pub expect_redeliveries: bool,
    /// A broker on sqlite storage, which survives a restart, instead of
    /// memory storage. Only where the broker restarts: under 100,000
    /// messages Tansu's sqlite storage fell behind until its group
    /// coordinator answered no heartbeats, and it never serves a 10 MB
    /// record (docs/tansu.md).
    pub durable_broker: bool,
    /// Run the workers with orderflow's consumer defaults rather than the
    /// scripts' defaults on Tansu (a 10 s session; docs/tansu.md).
    pub default_consumer_settings: bool,
}

/// What the scripts give orderflow's consumers on Tansu (docs/tansu.md).
pub const TANSU_CONSUMER_CONFIG: &str = "session.timeout.ms=10000,heartbeat.interval.ms=2000";

pub struct Slot {
    pub worker: Option<Worker>,
    /// Messages handled by the workers that ran in this slot before.
    earlier: u64,
    /// And by the current one, at the last scrape.
    current: u64,
}

pub struct Run {
    pub name: &'static str,
    pub opts: Options,
    pub broker: Broker,
    pub world: World,
    pub pool: PgPool,
    pub mix: Mix,
    pub poison: Vec<Message>,
    pub messages: Arc<Vec<Message>>,
    pub progress: Arc<Progress>,
    pub workers: Vec<Slot>,
    pub registry: Option<RegistryDouble>,
    pub kafka_proxy: Option<Proxy>,
    pub pg_proxy: Option<Proxy>,
    pub faults: usize,
    pub recoveries: Vec<Duration>,
    pub notes: Vec<String>,
    expect_redeliveries: bool,
    worker_env: Vec<(&'static str, String)>,
    dir: PathBuf,
    producing: Option<JoinHandle<anyhow::Result<()>>>,
    /// Messages produced later, and how long after the start.
    held: Option<(Arc<Vec<Message>>, Duration)>,
    started: Instant,
    /// A consumer per input that reads its group's committed offsets.
    observers: Arc<Vec<(Input, String, BaseConsumer)>>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Run {
    pub async fn start(opts: &Options, name: &'static str, spec: Spec) -> anyhow::Result<Run> {
        let dir = opts
            .workdir
            .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        let port = free_port()?;
        let kafka_proxy = match spec.kafka_proxy {
            true => Some(Proxy::start(port).await?),
            false => None,
        };
        let advertised = kafka_proxy.as_ref().map_or(port, |p| p.port);
        let broker = Broker::start(&dir, port, advertised, spec.durable_broker).await?;
        let registry = match spec.avro {
            true => Some(RegistryDouble::start().await),
            false => None,
        };
        let mut base = opts.base.clone();
        base.kafka_brokers = format!("127.0.0.1:{advertised}");
        base.schema_registry_url = registry.as_ref().map(|r| r.url.clone());
        let world = World::create(&base, "faults", |_| {}).await?;
        let pool = orderflow::store::pool(&world.settings.database_url, 4)?;
        let avro_id = match &registry {
            Some(_) => Some(checkout_schema_id(&world.settings).await?),
            None => None,
        };
        let mix = Mix::generate(MixOptions {
            events: opts.events.saturating_sub(spec.poison),
            seed: opts.seed,
            prefix: "f-",
            skewed_clocks: spec.skewed_clocks,
        });
        let poison = poison::poison(spec.poison, spec.huge, opts.seed, avro_id);
        let mut messages = mix.messages.clone();
        poison::interleave(&mut messages, &poison, opts.seed);
        if let Some(id) = avro_id {
            poison::checkouts_as_avro(&mut messages, id)?;
        }
        let pg_proxy = match spec.pg_proxy {
            true => Some(Proxy::start(5432).await?),
            false => None,
        };
        let mut worker_env = vec![
            ("KAFKA_STATISTICS_INTERVAL_MS", "1000".to_owned()),
            ("INSTANCE_ID", String::new()),
        ];
        if let Some(proxy) = &pg_proxy {
            let url = world
                .settings
                .database_url
                .replace(":5432/", &format!(":{}/", proxy.port));
            worker_env.push(("DATABASE_URL", url));
        }
        if let Some(url) = &base.schema_registry_url {
            worker_env.push(("SCHEMA_REGISTRY_URL", url.clone()));
        }
        if !spec.env.iter().any(|(k, _)| *k == "KAFKA_CONSUMER_CONFIG") {
            // Set either way: the scripts may have exported one to this process.
            let config = match spec.default_consumer_settings {
                true => "",
                false => TANSU_CONSUMER_CONFIG,
            };
            worker_env.push(("KAFKA_CONSUMER_CONFIG", config.to_owned()));
        }
        worker_env.extend(spec.env);
        let mut observers = Vec::new();
        for input in Input::ALL {
            let topic = input.topic(&world.settings.topics).to_owned();
            let group = world.settings.group_for(&topic);
            let consumer: BaseConsumer = orderflow::kafka::observer_config(&world.settings, &group)
                .create()
                .context("failed to create a group observer")?;
            observers.push((input, topic, consumer));
        }
        let mut run = Run {
            name,
            opts: opts.clone(),
            broker,
            world,
            pool,
            mix,
            poison,
            messages: Arc::new(messages),
            progress: Arc::new(Progress::default()),
            workers: Vec::new(),
            registry,
            kafka_proxy,
            pg_proxy,
            faults: 0,
            recoveries: Vec::new(),
            notes: Vec::new(),
            expect_redeliveries: spec.expect_redeliveries,
            worker_env,
            dir,
            producing: None,
            held: None,
            started: Instant::now(),
            observers: Arc::new(observers),
        };
        for _ in 0..spec.workers {
            run.add_worker().await?;
        }
        Ok(run)
    }

    pub fn settings(&self) -> &Settings {
        &self.world.settings
    }

    /// Where the broker's and the workers' logs are.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Holds back the checkouts of one order in `every` whose payments or
    /// cancellations come first anyway, to produce them `hold` after the
    /// rest started: their payments wait parked that long.
    pub fn hold_back_checkouts(&mut self, every: usize, hold: Duration) {
        let mut messages = (*self.messages).clone();
        let held_orders: std::collections::HashSet<Vec<u8>> = messages
            .iter()
            .filter(|m| m.input != Input::Checkouts)
            .filter_map(|m| m.key.clone())
            .enumerate()
            .filter(|(i, _)| i % every == 0)
            .map(|(_, key)| key)
            .collect();
        let (held, rest): (Vec<Message>, Vec<Message>) = messages.drain(..).partition(|m| {
            m.input == Input::Checkouts && m.key.as_ref().is_some_and(|k| held_orders.contains(k))
        });
        self.messages = Arc::new(rest);
        self.held = Some((Arc::new(held), hold));
    }

    /// Starts one more worker; returns its slot.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let worker = self.spawn(self.workers.len()).await?;
        self.workers.push(Slot {
            worker: Some(worker),
            earlier: 0,
            current: 0,
        });
        Ok(self.workers.len() - 1)
    }

    async fn spawn(&self, slot: usize) -> anyhow::Result<Worker> {
        let instance = format!(
            "{}-w{slot}-{}",
            self.name,
            uuid::Uuid::new_v4().simple().to_string().split_at(6).0
        );
        let env: Vec<(&str, &str)> = self
            .worker_env
            .iter()
            .map(|(k, v)| match *k {
                "INSTANCE_ID" => (*k, instance.as_str()),
                _ => (*k, v.as_str()),
            })
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("worker-{slot}.log")))?;
        Worker::spawn_logging_to(&self.opts.binary, self.settings(), &env, Stdio::from(log))
            .await
            .with_context(|| format!("worker {slot} did not start (log: {})", self.dir.display()))
    }

    /// A rate that spreads the mix over at least `over`, so faults land
    /// mid-stream even in small runs.
    pub fn spread_over(&self, over: Duration) -> u64 {
        (self.total_messages() as u64 / over.as_secs().max(1)).clamp(50, self.opts.rate.max(50))
    }

    /// Starts producing the mix at the scenario's rate (or `rate`), then
    /// what was held back, when its time comes.
    pub fn produce(&mut self, rate: Option<u64>) {
        self.produce_range(0..self.messages.len(), rate);
    }

    /// Starts producing `range` of the messages (and, after the last
    /// message, what was held back).
    pub fn produce_range(&mut self, range: std::ops::Range<usize>, rate: Option<u64>) {
        let settings = self.settings().clone();
        let part = Arc::new(self.messages[range.clone()].to_vec());
        let last = range.end == self.messages.len();
        let held = if last { self.held.take() } else { None };
        let rate = rate.unwrap_or(self.opts.rate);
        let progress = self.progress.clone();
        let started = self.started;
        self.producing = Some(tokio::spawn(async move {
            drive::drive(settings.clone(), part, rate, progress.clone()).await?;
            if let Some((held, after)) = held {
                tokio::time::sleep(after.saturating_sub(started.elapsed())).await;
                drive::drive(settings, held, rate, progress).await?;
            }
            Ok(())
        }));
    }

    /// Waits for the producer started last to finish.
    pub async fn produced(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.producing.take() {
            task.await?.context("producing the mix failed")?;
        }
        Ok(())
    }

    /// Waits until `fraction` of the messages were sent.
    pub async fn wait_sent(&mut self, fraction: f64) -> anyhow::Result<()> {
        let target = (self.total_messages() as f64 * fraction) as usize;
        while self.progress.sent() < target {
            self.check_producer().await?;
            self.scrape().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Fails when the producer stopped with an error.
    pub async fn check_producer(&mut self) -> anyhow::Result<()> {
        if self.producing.as_ref().is_some_and(|t| t.is_finished()) {
            let result = self.producing.take().expect("checked").await?;
            result.context("producing the mix failed")?;
        }
        Ok(())
    }

    /// Reads every live worker's message counters of the three input
    /// topics ([`inputs_handled`]).
    pub async fn scrape(&mut self) {
        let settings = self.settings().clone();
        for slot in &mut self.workers {
            if let Some(worker) = &slot.worker {
                if let Ok(page) = worker.metrics_page().await {
                    slot.current = inputs_handled(&settings, &page, None) as u64;
                }
            }
        }
    }

    /// `OUTBOX_SHARDS` of the workers.
    pub fn outbox_shards(&self) -> u32 {
        self.settings().outbox_shards as u32
    }

    pub fn worker(&self, slot: usize) -> anyhow::Result<&Worker> {
        self.workers[slot]
            .worker
            .as_ref()
            .context("that worker is not running")
    }

    pub fn signal(&mut self, slot: usize, signal: Signal) -> anyhow::Result<()> {
        self.faults += 1;
        self.worker(slot)?.signal(signal)
    }

    /// SIGKILL, and the slot is empty until [`Run::restart`].
    pub async fn kill(&mut self, slot: usize) -> anyhow::Result<()> {
        self.scrape().await;
        self.faults += 1;
        let s = &mut self.workers[slot];
        let mut worker = s.worker.take().context("that worker is not running")?;
        worker.kill().await?;
        s.earlier += std::mem::take(&mut s.current);
        Ok(())
    }

    /// SIGTERM: a graceful stop.
    pub async fn stop(&mut self, slot: usize) -> anyhow::Result<()> {
        self.scrape().await;
        let s = &mut self.workers[slot];
        let worker = s.worker.take().context("that worker is not running")?;
        let status = worker.terminate().await?;
        s.earlier += std::mem::take(&mut s.current);
        if !status.success() {
            self.notes
                .push(format!("worker {slot} exited with {status} after SIGTERM"));
        }
        Ok(())
    }

    pub async fn restart(&mut self, slot: usize) -> anyhow::Result<()> {
        let worker = self.spawn(slot).await?;
        self.workers[slot].worker = Some(worker);
        Ok(())
    }
}

/// Registers the schemas with the registry; the id of the checkouts subject.
async fn checkout_schema_id(settings: &Settings) -> anyhow::Result<u32> {
    let registered = orderflow::schemas::register(settings).await?;
    let subject = format!("{}-value", settings.topics.checkouts);
    registered
        .into_iter()
        .find(|(s, _)| *s == subject)
        .map(|(_, id)| id)
        .context("no checkouts subject registered")
}

/// Messages of the three input topics on a worker's metrics `page`, of
/// `outcome` or of any: not `order-events`, which the analytics loop reads
/// (counting its messages made every scenario look redelivered).
pub fn inputs_handled(settings: &Settings, page: &str, outcome: Option<&str>) -> f64 {
    let t = &settings.topics;
    [&t.checkouts, &t.payment_confirmations, &t.cancellations]
        .into_iter()
        .map(|topic| {
            let mut wanted = vec![("topic", topic.as_str())];
            wanted.extend(outcome.map(|o| ("outcome", o)));
            prom::sum(page, "orderflow_messages_total", &wanted)
        })
        .sum()
}
