//! Stop sequences over streamed text. Text that might be the beginning of a
//! stop string is held back until it either completes one (then the text
//! before it is released, generation should end, and the stop string itself
//! never reaches the client) or stops matching (then it is released).

/// Matches a request's stop strings against the text stream of one sequence.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    held: String,
    /// Index into `stops` of the stop string that ended the stream.
    hit: Option<usize>,
}

/// The result of one `push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to send now.
    pub text: String,
    /// Index (into `StopMatcher::stops()`) of the stop string that was hit.
    pub stop: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
            hit: None,
        }
    }

    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// The stop string that ended the stream, if any.
    pub fn hit(&self) -> Option<&str> {
        self.hit.and_then(|i| self.stops.get(i)).map(String::as_str)
    }

    /// Feeds newly decoded text. After a stop was hit, further text is
    /// dropped and the same stop is reported again.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.hit.is_some() {
            return StopOutcome {
                text: String::new(),
                stop: self.hit,
            };
        }
        self.held.push_str(text);
        // Every possible start of a stop string lies inside `held` (a
        // released suffix could never begin one), so searching `held` is
        // enough. The earliest match wins; at equal starts the first listed.
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = first {
            self.hit = Some(i);
            self.held.truncate(at);
            return StopOutcome {
                text: std::mem::take(&mut self.held),
                stop: self.hit,
            };
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_match_len(&self.held, s))
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        StopOutcome {
            text: std::mem::replace(&mut self.held, rest),
            stop: None,
        }
    }

    /// Releases the held-back text at the end of generation (nothing after a
    /// stop was hit).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_match_len(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&k| stop.is_char_boundary(k))
        .find(|&k| text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes every piece; returns the released text, the stop index and
    /// what `finish` released.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>, String) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        let mut stop = None;
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            stop = stop.or(o.stop);
        }
        (out, stop, m.finish())
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(
            m.push("hello"),
            StopOutcome {
                text: "hello".into(),
                stop: None
            }
        );
        assert_eq!(m.finish(), "");
        // Empty stop strings are ignored.
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), None, "".into()));
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = StopMatcher::new(["</end>"]);
        assert_eq!(m.push("hi </").text, "hi ");
        assert_eq!(m.push("en").text, "");
        let o = m.push("d> more");
        assert_eq!(
            o,
            StopOutcome {
                text: "".into(),
                stop: Some(0)
            }
        );
        assert_eq!(m.hit(), Some("</end>"));
        assert_eq!(m.finish(), "");
        assert_eq!(m.push("later").text, "");
    }

    #[test]
    fn a_broken_partial_match_is_released() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("a ST").text, "a ");
        assert_eq!(m.push("OR").text, "STOR");
        assert_eq!(m.push("x ST").text, "x ");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn overlapping_prefixes() {
        // "aab" after "aa": the first 'a' cannot start "aab" once "aaa" came.
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b", "c"]),
            ("a".into(), Some(0), "".into())
        );
        // Overlapping stops: the earliest start among complete matches wins.
        assert_eq!(
            run(&["abcd", "bc"], &["xab", "cd"]),
            ("x".into(), Some(0), "".into())
        );
        assert_eq!(
            run(&["abcd", "bc"], &["xabc", "d"]),
            ("xa".into(), Some(1), "".into())
        );
        // A broken partial match that restarts inside itself.
        assert_eq!(
            run(&["abab"], &["ab", "a", "abab"]),
            ("aba".into(), Some(0), "".into())
        );
    }

    #[test]
    fn multiple_stops_first_occurrence_wins() {
        let stops = ["\n\n", "User:", "###"];
        assert_eq!(
            run(&stops, &["x ### y User:"]),
            ("x ".into(), Some(2), "".into())
        );
        assert_eq!(
            run(&stops, &["x Us", "er: ###"]),
            ("x ".into(), Some(1), "".into())
        );
        assert_eq!(
            run(&stops, &["x\n", "\ny"]),
            ("x".into(), Some(0), "".into())
        );
    }

    #[test]
    fn stop_at_the_very_start() {
        assert_eq!(
            run(&["<|im_end|>"], &["<|im_end|>", "x"]),
            ("".into(), Some(0), "".into())
        );
        assert_eq!(
            run(&["<|im_end|>"], &["<|im", "_end|>"]),
            ("".into(), Some(0), "".into())
        );
    }

    #[test]
    fn multibyte_stops_and_text() {
        assert_eq!(
            run(&["世界"], &["héllo 世", "界 x"]),
            ("héllo ".into(), Some(0), "".into())
        );
        assert_eq!(
            run(&["世界"], &["héllo 世"]),
            ("héllo ".into(), None, "世".into())
        );
        assert_eq!(
            run(&["é!"], &["caf", "é"]),
            ("caf".into(), None, "é".into())
        );
    }
}
