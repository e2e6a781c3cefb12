//! The batcher: one per loaded model replica, an async actor that owns the
//! replica's [`Scheduler`] and the per-request streaming state, and drives
//! continuous batching: schedule -> `Step` to the worker -> apply the sampled
//! tokens (incremental detokenization, stop strings, EOS, length) -> schedule
//! again, with exactly one step in flight. Requests whose stream receiver is
//! gone are aborted before each schedule, so their blocks are free for that
//! very step.
//!
//! Worker failure: a failed step fails exactly its requests. If the failure
//! is fatal the device's KV cache is gone, so the batcher reports it to the
//! supervisor, pauses, and once a new worker is handed over, every surviving
//! sequence is preempted to recompute (its sampler is re-created there).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::detok::{Decode, IncrementalDecoder};
use crate::engine::RequestId;
use crate::errors::ConfigError;
use crate::executor::{
    ExecError, NewSeq, ReplicaId, ReplicaInfo, StepRequest, StepResult, StepSeq, TextDecoder,
};
use crate::ids::SeqId;
use crate::metrics::{ErrorType, ReplicaMetrics};
use crate::request::{Event, Finish, GenerateRequest, ReplicaStats, Usage};
use crate::router::{ReplicaLoad, RequestIndex};
use crate::sampler::{Sampled, SamplingParams};
use crate::scheduler::{ScheduledBatch, Scheduler, SchedulerConfig};
use crate::sequence::{FinishReason, Sequence};
use crate::stop::StopMatcher;
use crate::supervisor::WorkerFailed;
use crate::worker::{Step, StepError};

/// Prompt ids given to the incremental decoder as left context (tokenizers
/// that strip a leading space need some; vLLM uses a handful too).
const DETOK_PROMPT_CONTEXT: usize = 5;
/// Start of the error message of a request whose deadline passed (the API
/// maps it to a timeout status).
pub const DEADLINE_EXCEEDED: &str = "deadline exceeded";
/// Retry delay when work exists but nothing could be scheduled (defensive:
/// `Scheduler::add` refuses what the pool can never hold).
const EMPTY_BATCH_RETRY: Duration = Duration::from_millis(5);

/// A new request routed to this replica.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    pub id: RequestId,
    pub req: GenerateRequest,
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// Cancel a request: its blocks are freed now, its stream gets an error.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel {
    pub id: RequestId,
}

/// The device's worker (its step queue) and which incarnation it is.
#[derive(Clone)]
pub struct WorkerLink {
    pub step: Recipient<Step>,
    /// Bumped by the supervisor on each restart of the device's worker.
    pub generation: u64,
}

/// From the supervisor: the replacement worker, with this replica reloaded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetWorker(pub WorkerLink);

/// From the supervisor: the worker could not be restarted or the replica not
/// reloaded; every request fails and the replica stops taking traffic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerLost {
    pub message: String,
}

#[derive(Message)]
#[rtype(result = "ReplicaStats")]
pub struct GetStats;

/// From the supervisor: the replica is being unloaded (drained first, so
/// normally nothing is left); any request left fails, and the batcher stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Everything a batcher is built from.
pub struct BatcherSetup {
    pub replica: ReplicaId,
    pub model: String,
    pub version: String,
    pub device: String,
    pub info: ReplicaInfo,
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    pub worker: WorkerLink,
    pub supervisor: Recipient<WorkerFailed>,
    pub gauge: Arc<ReplicaLoad>,
    pub index: RequestIndex,
}

/// One request's streaming state.
struct Live {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Ids ending the generation (model EOS unless ignored, plus stop ids).
    eos: Vec<u32>,
    max_tokens: usize,
    usage: Usage,
    /// Always set, so a random seed can be reported and a restart reproduces it.
    sampling: SamplingParams,
    prompt: Vec<u32>,
    /// Scheduled at least once (no longer in the admission queue).
    started: bool,
    /// The executor holds a sampler for it (created on its first step).
    has_sampler: bool,
    /// When the batcher got it (queue time, TTFT and end-to-end latency).
    arrived: Instant,
    /// When its previous token was streamed (inter-token latency).
    last_token: Option<Instant>,
    deadline: Option<Instant>,
}

/// How one sampled token leaves its request.
enum Outcome {
    Continue,
    Finished(Finish),
    Failed(String),
}

/// `IncrementalDecoder` wants a `Decode`; the replica offers a `TextDecoder`.
struct DecodeWith<'a>(&'a dyn TextDecoder);

impl Decode for DecodeWith<'_> {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.0.decode(ids)
    }
}

pub struct Batcher {
    setup: BatcherSetup,
    sched: Scheduler,
    live: HashMap<SeqId, Live>,
    /// Ended since the last step: the executor drops their samplers.
    released: Vec<SeqId>,
    /// A step is at the worker (exactly one at a time).
    stepping: bool,
    /// The worker died; waiting for the supervisor's `SetWorker`.
    paused: bool,
    /// A replacement worker handed over mid-step, applied between steps.
    pending_worker: Option<WorkerLink>,
    /// An `EMPTY_BATCH_RETRY` timer is armed.
    retry_armed: bool,
    /// The admission queue (requests never scheduled), for the gauge.
    queued: usize,
    queued_tokens: usize,
    steps: u64,
    forward_secs: f64,
    step_secs: f64,
    metrics: ReplicaMetrics,
    /// The block manager's and scheduler's running totals at the last step,
    /// so each step adds only its own share to the counters.
    seen_prefix: (u64, u64),
    seen_preemptions: u64,
}

/// How a request leaves the batcher.
enum Ending {
    /// Finished with a result: its `Event::Done`.
    Done(Event),
    /// Failed: the error event's message and its counter type.
    Error(ErrorType, String),
    /// The client is gone: nothing to send.
    Gone,
}

impl Batcher {
    pub fn new(setup: BatcherSetup) -> Result<Batcher, ConfigError> {
        let sched = Scheduler::new(SchedulerConfig {
            max_num_seqs: setup.max_num_seqs,
            max_batched_tokens: setup.max_batched_tokens,
            block_size: setup.info.block_size,
            num_blocks: setup.info.num_blocks,
            enable_prefix_caching: setup.enable_prefix_caching,
        })?;
        let metrics = ReplicaMetrics::new(&setup.model, &setup.version, &setup.device);
        Ok(Batcher {
            metrics,
            seen_prefix: (0, 0),
            seen_preemptions: 0,
            setup,
            sched,
            live: HashMap::new(),
            released: Vec::new(),
            stepping: false,
            paused: false,
            pending_worker: None,
            retry_armed: false,
            queued: 0,
            queued_tokens: 0,
            steps: 0,
            forward_secs: 0.0,
            step_secs: 0.0,
        })
    }

    fn publish(&self) {
        let g = &self.setup.gauge;
        g.publish(
            self.queued,
            self.queued_tokens,
            self.sched.num_running(),
            self.sched.kv_usage(),
        );
        self.metrics.set_load(
            self.sched.num_running(),
            self.sched.num_waiting(),
            self.sched.kv_usage(),
        );
    }

    /// Removes a request's state, sends its last event (if any) and counts it.
    fn end(&mut self, id: SeqId, ending: Ending) {
        let Some(st) = self.live.remove(&id) else {
            return;
        };
        let prompt = if st.started { st.usage.prompt_tokens } else { 0 };
        let generated = st.usage.completion_tokens;
        let last = match ending {
            Ending::Done(ev) => {
                if let Event::Done { finish, .. } = &ev {
                    self.metrics
                        .finished(*finish, st.arrived.elapsed(), prompt, generated);
                }
                Some(ev)
            }
            Ending::Error(kind, message) => {
                self.metrics.failed(kind, prompt, generated);
                Some(Event::Error { message })
            }
            Ending::Gone => {
                self.metrics
                    .failed(ErrorType::Disconnected, prompt, generated);
                None
            }
        };
        if let Some(ev) = last {
            // A closed receiver only means the client is gone.
            let _ = st.events.send(ev);
        }
        if st.has_sampler {
            self.released.push(id);
        }
        if !st.started {
            self.queued -= 1;
            self.queued_tokens -= st.prompt.len();
        }
        self.setup.index.remove(&RequestId(id.0));
    }

    /// Starts the next step unless one is in flight, the worker is down, or
    /// there is nothing to do.
    fn maybe_step(&mut self, ctx: &mut Context<Self>) {
        if self.stepping || self.paused {
            return;
        }
        if let Some(w) = self.pending_worker.take() {
            self.switch_worker(w);
        }
        self.reap_closed();
        self.reap_expired();
        if self.sched.is_idle() {
            self.metrics.step(0, 0, 0, 0);
            self.publish();
            return;
        }
        let batch = self.sched.schedule();
        if batch.is_empty() {
            self.publish();
            if !self.retry_armed {
                self.retry_armed = true;
                ctx.run_later(EMPTY_BATCH_RETRY, |act, ctx| {
                    act.retry_armed = false;
                    act.maybe_step(ctx);
                });
            }
            return;
        }
        let req = self.step_request(&batch);
        self.count_step(batch.seqs.len());
        self.publish();
        let ids: Vec<SeqId> = batch.seqs.iter().map(|s| s.id).collect();
        let generation = self.setup.worker.generation;
        let started = Instant::now();
        self.stepping = true;
        let step = Step {
            replica: self.setup.replica,
            req,
        };
        let fut = self
            .setup
            .worker
            .step
            .send(step)
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.stepping = false;
                // A worker thread that is gone never ran the step either.
                let res = res.unwrap_or_else(|e| {
                    Err(StepError::Down(ExecError::fatal(format!(
                        "worker gone: {e}"
                    ))))
                });
                act.step_secs += started.elapsed().as_secs_f64();
                match res {
                    Ok(result) => act.on_step_done(result),
                    Err(StepError::Failed(e)) => act.on_step_failed(&ids, generation, e),
                    Err(StepError::Down(_)) => act.on_worker_down(generation),
                }
                act.publish();
                act.maybe_step(ctx);
            });
        ctx.spawn(fut);
    }

    /// Aborts requests whose client is gone (blocks freed before scheduling).
    fn reap_closed(&mut self) {
        let gone: Vec<SeqId> = self
            .live
            .iter()
            .filter(|(_, st)| st.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.sched.abort(id);
            self.end(id, Ending::Gone);
        }
    }

    /// Ends requests whose deadline has passed (blocks freed before scheduling).
    fn reap_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<SeqId> = self
            .live
            .iter()
            .filter(|(_, st)| st.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.sched.abort(id);
            let message = format!("{DEADLINE_EXCEEDED}: the request's deadline passed before it finished");
            self.end(id, Ending::Error(ErrorType::Timeout, message));
        }
    }

    /// The executor's view of a batch: samplers to create first (a
    /// sequence's first step, or its first on a new worker) and to drop.
    fn step_request(&mut self, batch: &ScheduledBatch) -> StepRequest {
        let mut req = StepRequest {
            released: std::mem::take(&mut self.released),
            ..Default::default()
        };
        for s in &batch.seqs {
            // Every scheduled id is live: state and scheduler entries are
            // added and removed together.
            if let Some(st) = self.live.get_mut(&s.id) {
                if !st.started {
                    st.started = true;
                    self.metrics.queued(st.arrived.elapsed());
                    // The first chunk starts after the prefix-cache hit.
                    st.usage.cached_tokens = s.start_pos;
                    self.queued -= 1;
                    self.queued_tokens -= st.prompt.len();
                }
                if !st.has_sampler {
                    st.has_sampler = true;
                    req.added.push(NewSeq {
                        id: s.id,
                        sampling: st.sampling.clone(),
                        prompt: st.prompt.clone(),
                    });
                }
            }
            req.seqs.push(StepSeq {
                id: s.id,
                tokens: s.tokens.clone(),
                start_pos: s.start_pos,
                block_table: s.block_table.clone(),
                sample: s.sample,
            });
        }
        req
    }

    fn on_step_done(&mut self, result: StepResult) {
        self.steps += 1;
        self.forward_secs += result.forward_secs;
        self.metrics.step_timed(result.forward_secs, result.sample_secs);
        let mut ended: Vec<(SeqId, Outcome)> = Vec::new();
        for (id, sampled) in &result.sampled {
            match self.on_token(*id, sampled) {
                Outcome::Continue => {}
                outcome => ended.push((*id, outcome)),
            }
        }
        let results: Vec<(SeqId, Option<u32>)> = result
            .sampled
            .iter()
            .map(|(id, s)| (*id, Some(s.token)))
            .collect();
        for f in self.sched.on_step_done(&results) {
            // Length is already in `ended` (the same count reached max_tokens);
            // Failed means the executor skipped a sample it owed.
            if f.reason == FinishReason::Failed {
                ended.push((
                    f.id,
                    Outcome::Failed("the executor returned no token".into()),
                ));
            }
        }
        for (id, outcome) in ended {
            self.sched.finish(id); // no-op when on_step_done already removed it
            let ending = match outcome {
                Outcome::Finished(finish) => match self.live.get(&id) {
                    Some(st) => Ending::Done(Event::Done {
                        finish,
                        usage: st.usage,
                        // Always Some: set on Submit.
                        seed: st.sampling.seed.unwrap_or_default(),
                        model: self.setup.model.clone(),
                        version: self.setup.version.clone(),
                    }),
                    None => continue,
                },
                Outcome::Failed(message) => Ending::Error(ErrorType::Failed, message),
                Outcome::Continue => continue,
            };
            self.end(id, ending);
        }
    }

    /// Streams one sampled token and says whether its request ends here.
    fn on_token(&mut self, id: SeqId, s: &Sampled) -> Outcome {
        let decoder = DecodeWith(&*self.setup.info.decoder);
        let Some(st) = self.live.get_mut(&id) else {
            return Outcome::Continue; // cancelled while the step ran
        };
        st.usage.completion_tokens += 1;
        let now = Instant::now();
        match st.last_token.replace(now) {
            None => self.metrics.first_token(now - st.arrived),
            Some(prev) => self.metrics.next_token(now - prev),
        }
        let (mut text, mut finish) = if st.eos.contains(&s.token) {
            (String::new(), Some(Finish::Eos)) // the EOS id itself is not text
        } else {
            match st.decoder.push(&decoder, s.token) {
                Ok(piece) => {
                    let out = st.stop.push(&piece);
                    (out.text, out.stop.map(|_| Finish::Stop))
                }
                Err(e) => return Outcome::Failed(format!("detokenization failed: {e}")),
            }
        };
        if finish.is_none() && st.usage.completion_tokens >= st.max_tokens {
            finish = Some(Finish::Length);
        }
        if matches!(finish, Some(Finish::Eos | Finish::Length)) {
            // Release what the decoder and the stop matcher still hold.
            match st.decoder.flush(&decoder) {
                Ok(rest) => {
                    let out = st.stop.push(&rest);
                    text.push_str(&out.text);
                    if out.stop.is_some() {
                        finish = Some(Finish::Stop);
                    } else {
                        text.push_str(&st.stop.finish());
                    }
                }
                Err(e) => return Outcome::Failed(format!("detokenization failed: {e}")),
            }
        }
        let _ = st.events.send(Event::Token {
            token: s.token,
            text,
            logprob: s.logprob,
            top_logprobs: s.top_logprobs.clone(),
        });
        finish.map_or(Outcome::Continue, Outcome::Finished)
    }

    fn on_step_failed(&mut self, ids: &[SeqId], generation: u64, e: ExecError) {
        for f in self.sched.on_step_failed(ids) {
            self.end(
                f.id,
                Ending::Error(ErrorType::Failed, format!("step failed: {}", e.message)),
            );
        }
        if e.fatal {
            self.on_worker_down(generation);
        }
    }

    /// The KV cache on worker `generation` is gone. Sequences of a step that
    /// never ran keep going: they recompute on the replacement worker
    /// (`switch_worker`), as does everyone else.
    fn on_worker_down(&mut self, generation: u64) {
        // Drops the plan of a step that never ran; `switch_worker` redoes it.
        self.sched.preempt_all();
        // A replacement already handed over (another batcher reported first):
        // it is applied before the next step.
        if self
            .pending_worker
            .as_ref()
            .is_some_and(|w| w.generation > generation)
        {
            return;
        }
        // Still "ready": new requests queue here and run on the new worker.
        self.paused = true;
        self.setup.supervisor.do_send(WorkerFailed {
            device: self.setup.device.clone(),
            generation,
        });
    }

    /// The new worker has an empty KV pool and no samplers: recompute all.
    fn switch_worker(&mut self, w: WorkerLink) {
        self.sched.preempt_all();
        self.released.clear();
        for st in self.live.values_mut() {
            st.has_sampler = false;
        }
        self.setup.worker = w;
    }

    /// Counts a step of `seqs` sequences and what the block manager and
    /// scheduler did since the last one.
    fn count_step(&mut self, seqs: usize) {
        let bm = self.sched.block_manager();
        let prefix = (bm.prefix_query_tokens(), bm.prefix_hit_tokens());
        let preemptions = self.sched.num_preemptions();
        self.metrics.step(
            seqs,
            prefix.0.saturating_sub(self.seen_prefix.0),
            prefix.1.saturating_sub(self.seen_prefix.1),
            preemptions.saturating_sub(self.seen_preemptions),
        );
        self.seen_prefix = prefix;
        self.seen_preemptions = preemptions;
    }

    fn stats(&self) -> ReplicaStats {
        let bm = self.sched.block_manager();
        ReplicaStats {
            model: self.setup.model.clone(),
            version: self.setup.version.clone(),
            device: self.setup.device.clone(),
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            kv_usage: self.sched.kv_usage(),
            num_blocks: bm.num_total(),
            free_blocks: bm.num_free(),
            prefix_query_tokens: bm.prefix_query_tokens(),
            prefix_hit_tokens: bm.prefix_hit_tokens(),
            preemptions: self.sched.num_preemptions(),
            steps: self.steps,
            forward_secs: self.forward_secs,
            step_secs: self.step_secs,
            recent: self.metrics.recent(),
        }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.publish();
        self.metrics.set_loaded(true);
        self.setup.gauge.set_ready(true);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.metrics.set_loaded(false);
        self.metrics.set_load(0, 0, 0.0);
        self.metrics.step(0, 0, 0, 0);
    }
}

impl Handler<Submit> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        let Submit { id, req, events } = msg;
        let seq_id = SeqId(id.0);
        let prompt_len = req.prompt.len();
        let mut sampling = req.sampling;
        sampling.seed = Some(sampling.seed.unwrap_or_else(rand::random));
        let mut eos = req.stop_token_ids;
        if !req.ignore_eos {
            eos.extend(&self.setup.info.eos_token_ids);
        }
        let tail = &req.prompt[prompt_len.saturating_sub(DETOK_PROMPT_CONTEXT)..];
        let st = Live {
            events,
            decoder: IncrementalDecoder::new(tail),
            stop: StopMatcher::new(req.stop),
            eos,
            max_tokens: req.max_tokens,
            usage: Usage {
                prompt_tokens: prompt_len,
                ..Usage::default()
            },
            sampling,
            prompt: req.prompt.clone(),
            started: false,
            has_sampler: false,
            arrived: Instant::now(),
            last_token: None,
            deadline: req.deadline,
        };
        let added = self.sched.add(Sequence::new(
            seq_id,
            req.priority,
            req.prompt,
            req.max_tokens,
        ));
        match added {
            Ok(()) => {
                self.live.insert(seq_id, st);
                self.queued += 1;
                self.queued_tokens += prompt_len;
            }
            Err(e) => {
                // The router validates first, so this is a duplicate id or a
                // pool that shrank on reload.
                let _ = st.events.send(Event::Error {
                    message: e.to_string(),
                });
                crate::metrics::count_error(&self.setup.model, &self.setup.version, ErrorType::Invalid);
                self.setup.index.remove(&id);
            }
        }
        self.publish();
        self.setup.gauge.arrived(prompt_len);
        self.maybe_step(ctx);
    }
}

impl Handler<Cancel> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) {
        let id = SeqId(msg.id.0);
        self.sched.abort(id);
        self.end(id, Ending::Error(ErrorType::Cancelled, "cancelled".into()));
        self.publish();
    }
}

impl Handler<SetWorker> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: SetWorker, ctx: &mut Self::Context) {
        if msg.0.generation <= self.setup.worker.generation {
            return; // stale
        }
        self.pending_worker = Some(msg.0);
        self.paused = false;
        self.maybe_step(ctx);
    }
}

impl Handler<WorkerLost> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: WorkerLost, _: &mut Self::Context) {
        self.paused = true;
        self.fail_all(&format!("replica lost: {}", msg.message));
    }
}

impl Batcher {
    /// Take the replica out of service: every live request ends with
    /// `message` and its blocks are freed now.
    fn fail_all(&mut self, message: &str) {
        self.setup.gauge.set_ready(false);
        let ids: Vec<SeqId> = self.live.keys().copied().collect();
        for id in ids {
            self.sched.abort(id);
            self.end(id, Ending::Error(ErrorType::Failed, message.to_string()));
        }
        self.publish();
    }
}

impl Handler<Shutdown> for Batcher {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.fail_all("the model version was unloaded");
        ctx.stop();
    }
}

impl Handler<GetStats> for Batcher {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats())
    }
}
