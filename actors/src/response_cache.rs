//! The response cache: finished event streams of deterministic requests
//! (greedy, or seeded), replayed for an identical later request without
//! running the model. The key is every input that decides the output — model,
//! *version*, prompt ids, max tokens, all sampling parameters, stops and
//! ignore_eos — encoded to bytes and compared whole on a hit (no hash-only
//! matches), so a new version never sees an old version's answers. Bounded by
//! bytes, least recently used evicted first. Plain state: the router looks up,
//! the batcher inserts, both under one mutex held for microseconds.

use std::collections::{BTreeMap, HashMap};

use crate::request::{Event, GenerateRequest};

/// A request's identity for the cache (the encoded deciding inputs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Vec<u8>);

impl CacheKey {
    /// The key of `req` served by `version`, or `None` when its output is
    /// not a function of its inputs (unseeded sampling).
    pub fn of(req: &GenerateRequest, version: &str) -> Option<CacheKey> {
        let s = &req.sampling;
        let greedy = s.temperature <= 0.0;
        if !greedy && s.seed.is_none() {
            return None;
        }
        let mut b = Vec::with_capacity(64 + 4 * req.prompt.len());
        let put_str = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        put_str(&mut b, &req.model);
        put_str(&mut b, version);
        b.extend((req.prompt.len() as u64).to_le_bytes());
        req.prompt.iter().for_each(|t| b.extend(t.to_le_bytes()));
        b.extend((req.max_tokens as u64).to_le_bytes());
        for f in [
            s.temperature,
            s.top_p,
            s.min_p,
            s.repetition_penalty,
            s.presence_penalty,
            s.frequency_penalty,
        ] {
            b.extend(f.to_bits().to_le_bytes());
        }
        b.extend(s.top_k.map_or(u64::MAX, u64::from).to_le_bytes());
        // Greedy ignores the seed, so any seed (or none) shares the entry.
        let seed = if greedy { None } else { s.seed };
        b.extend(seed.map_or([0xff; 9], |x| {
            let mut a = [0u8; 9];
            a[..8].copy_from_slice(&x.to_le_bytes());
            a
        }));
        b.extend(s.logprobs.map_or(u32::MAX, |x| x).to_le_bytes());
        b.extend((s.logit_bias.len() as u64).to_le_bytes());
        for (t, v) in &s.logit_bias {
            b.extend(t.to_le_bytes());
            b.extend(v.to_bits().to_le_bytes());
        }
        b.extend((req.stop.len() as u64).to_le_bytes());
        for x in &req.stop {
            put_str(&mut b, x);
        }
        b.extend((req.stop_token_ids.len() as u64).to_le_bytes());
        req.stop_token_ids.iter().for_each(|t| b.extend(t.to_le_bytes()));
        b.push(u8::from(req.ignore_eos));
        Some(CacheKey(b))
    }

    fn bytes(&self) -> usize {
        self.0.len()
    }
}

struct Entry {
    events: Vec<Event>,
    bytes: usize,
    /// Position in `lru` (the last use).
    tick: u64,
}

/// Events of finished requests by key, within a byte budget.
pub struct ResponseCache {
    capacity_bytes: usize,
    used_bytes: usize,
    entries: HashMap<CacheKey, Entry>,
    /// Last-use tick -> key; the first is the least recently used.
    lru: BTreeMap<u64, CacheKey>,
    next_tick: u64,
    hits: u64,
    misses: u64,
}

/// Rough heap size of a stream, for the byte budget.
fn events_bytes(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| match e {
            Event::Token { text, top_logprobs, .. } => 48 + text.len() + 8 * top_logprobs.len(),
            Event::Done { model, version, .. } => 96 + model.len() + version.len(),
            Event::Error { message } => 32 + message.len(),
        })
        .sum()
}

impl ResponseCache {
    /// A cache of at most `capacity_bytes` (0 disables it).
    pub fn new(capacity_bytes: usize) -> ResponseCache {
        ResponseCache {
            capacity_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// The cached stream for `key`, marked as just used.
    pub fn get(&mut self, key: &CacheKey) -> Option<Vec<Event>> {
        let tick = self.next_tick;
        let Some(e) = self.entries.get_mut(key) else {
            self.misses += 1;
            return None;
        };
        self.next_tick += 1;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, key.clone());
        self.hits += 1;
        Some(e.events.clone())
    }

    /// Stores a finished stream (ending in `Done`; anything else is not a
    /// result and is ignored), evicting the least recently used entries to
    /// make room. A stream larger than the whole budget is not stored.
    pub fn insert(&mut self, key: CacheKey, events: Vec<Event>) {
        if !matches!(events.last(), Some(Event::Done { .. })) {
            return;
        }
        let bytes = events_bytes(&events) + key.bytes();
        if bytes > self.capacity_bytes {
            return;
        }
        self.remove(&key);
        while self.used_bytes + bytes > self.capacity_bytes {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used_bytes -= e.bytes;
            }
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, key.clone());
        self.entries.insert(key, Entry { events, bytes, tick });
        self.used_bytes += bytes;
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.tick);
            self.used_bytes -= e.bytes;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Finish, Usage};
    use crate::sampler::SamplingParams;
    use crate::sequence::Priority;

    fn req(prompt: &[u32]) -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            prompt: prompt.to_vec(),
            max_tokens: 4,
            sampling: SamplingParams::default(),
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            priority: Priority::Interactive,
            request_id: "r".into(),
            deadline: None,
            use_cache: false,
        }
    }

    fn stream(text: &str) -> Vec<Event> {
        vec![
            Event::Token { token: 1, text: text.into(), logprob: -0.5, top_logprobs: vec![] },
            Event::Done {
                finish: Finish::Length,
                usage: Usage { prompt_tokens: 2, completion_tokens: 1, cached_tokens: 0 },
                seed: 7,
                model: "m".into(),
                version: "v1".into(),
            },
        ]
    }

    #[test]
    fn unseeded_sampling_is_not_cacheable_but_greedy_and_seeded_are() {
        let mut r = req(&[1, 2]);
        assert!(CacheKey::of(&r, "v1").is_some());
        r.sampling.temperature = 0.7;
        assert!(CacheKey::of(&r, "v1").is_none());
        r.sampling.seed = Some(3);
        assert!(CacheKey::of(&r, "v1").is_some());
    }

    #[test]
    fn every_deciding_input_is_in_the_key() {
        let base = req(&[1, 2]);
        let k = CacheKey::of(&base, "v1");
        assert_ne!(k, CacheKey::of(&base, "v2"), "version");
        let mut r = base.clone();
        r.prompt.push(3);
        assert_ne!(k, CacheKey::of(&r, "v1"), "prompt");
        let mut r = base.clone();
        r.max_tokens = 5;
        assert_ne!(k, CacheKey::of(&r, "v1"), "max_tokens");
        let mut r = base.clone();
        r.stop = vec!["x".into()];
        assert_ne!(k, CacheKey::of(&r, "v1"), "stop");
        let mut r = base.clone();
        r.sampling.logprobs = Some(2);
        assert_ne!(k, CacheKey::of(&r, "v1"), "logprobs");
        let mut r = base.clone();
        r.ignore_eos = true;
        assert_ne!(k, CacheKey::of(&r, "v1"), "ignore_eos");
        // The request id and priority do not change the output.
        let mut r = base.clone();
        r.request_id = "other".into();
        r.priority = Priority::Batch;
        assert_eq!(k, CacheKey::of(&r, "v1"));
        // Greedy ignores the seed.
        let mut r = base.clone();
        r.sampling.seed = Some(9);
        assert_eq!(k, CacheKey::of(&r, "v1"));
    }

    #[test]
    fn hit_miss_and_versions_are_separate() {
        let mut c = ResponseCache::new(1 << 20);
        let r = req(&[1, 2]);
        let k1 = CacheKey::of(&r, "v1").unwrap();
        assert!(c.get(&k1).is_none());
        c.insert(k1.clone(), stream("a"));
        assert_eq!(c.get(&k1).map(|e| e.len()), Some(2));
        let k2 = CacheKey::of(&r, "v2").unwrap();
        assert!(c.get(&k2).is_none());
        assert_eq!((c.hits(), c.misses()), (1, 2));
    }

    #[test]
    fn failed_streams_are_not_stored() {
        let mut c = ResponseCache::new(1 << 20);
        let k = CacheKey::of(&req(&[1]), "v1").unwrap();
        c.insert(k.clone(), vec![Event::Error { message: "x".into() }]);
        assert!(c.get(&k).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn evicts_least_recently_used_within_the_byte_budget() {
        let k = |p: u32| CacheKey::of(&req(&[p]), "v1").unwrap();
        let one = events_bytes(&stream("a")) + k(1).bytes();
        let mut c = ResponseCache::new(3 * one);
        c.insert(k(1), stream("a"));
        c.insert(k(2), stream("a"));
        c.insert(k(3), stream("a"));
        assert!(c.get(&k(1)).is_some()); // 1 is now the most recent
        c.insert(k(4), stream("a"));
        assert!(c.get(&k(2)).is_none(), "2 was least recently used");
        assert!(c.get(&k(1)).is_some());
        assert!(c.get(&k(3)).is_some());
        assert!(c.get(&k(4)).is_some());
        assert!(c.used_bytes() <= 3 * one);
        // Too big for the whole budget: not stored, nothing evicted.
        let mut tiny = ResponseCache::new(10);
        tiny.insert(k(1), stream("a"));
        assert!(tiny.is_empty());
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut c = ResponseCache::new(0);
        assert!(!c.is_enabled());
        let k = CacheKey::of(&req(&[1]), "v1").unwrap();
        c.insert(k.clone(), stream("a"));
        assert!(c.get(&k).is_none());
    }
}
