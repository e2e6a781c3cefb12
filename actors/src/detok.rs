//! Incremental, UTF-8-safe detokenization as TGI and vLLM do it. A byte-level
//! BPE token can end in the middle of a character, and some tokenizers drop
//! or merge spaces depending on the neighbouring tokens, so decoding one token
//! at a time is wrong. Instead two offsets slide over the ids: text is decoded
//! from `prefix_offset` (a little left context) both up to `read_offset` (what
//! was already emitted) and up to the end; the difference is emitted only when
//! it does not end in U+FFFD (an incomplete character), and then both offsets
//! advance. Ids left of `prefix_offset` are dropped, so memory stays small.

/// Anything that turns token ids into text (the real tokenizer, or a fake in
/// tests).
pub trait Decode {
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}

/// The streaming decoder of one sequence.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    /// Ids from the current prefix offset on (earlier ones are dropped).
    ids: Vec<u32>,
    /// Start of the already emitted text that is decoded as left context.
    prefix_offset: usize,
    /// End of the already emitted text.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// `prompt_tail` is optional left context (a few of the prompt's last
    /// ids) for tokenizers that strip the leading space of the first token;
    /// it is never emitted.
    pub fn new(prompt_tail: &[u32]) -> Self {
        IncrementalDecoder {
            ids: prompt_tail.to_vec(),
            prefix_offset: 0,
            read_offset: prompt_tail.len(),
        }
    }

    /// Adds one generated id and returns the newly complete text (possibly
    /// empty while a character is still incomplete).
    pub fn push<D: Decode>(&mut self, d: &D, id: u32) -> Result<String, String> {
        self.ids.push(id);
        let prefix_text = d.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let new_text = d.decode(&self.ids[self.prefix_offset..])?;
        let emitted = prefix_text.chars().count();
        if new_text.chars().count() <= emitted || new_text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let out = suffix_after_chars(&new_text, emitted).to_string();
        self.advance();
        Ok(out)
    }

    /// Returns whatever text is still held back at the end of generation,
    /// even an incomplete character (as U+FFFD).
    pub fn flush<D: Decode>(&mut self, d: &D) -> Result<String, String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix_text = d.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let new_text = d.decode(&self.ids[self.prefix_offset..])?;
        let out = suffix_after_chars(&new_text, prefix_text.chars().count()).to_string();
        self.advance();
        Ok(out)
    }

    fn advance(&mut self) {
        // The old read offset becomes the new prefix offset; ids before it
        // are never decoded again.
        self.ids.drain(..self.read_offset);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
    }
}

/// `text` without its first `chars` characters (char-based like the Python
/// references, so a prefix that decodes differently in context cannot split
/// a character).
fn suffix_after_chars(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((at, _)) => &text[at..],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each id is one byte.
    struct Bytes;

    impl Decode for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            let bytes: Result<Vec<u8>, String> = ids
                .iter()
                .map(|&id| u8::try_from(id).map_err(|_| format!("bad id {id}")))
                .collect();
            Ok(String::from_utf8_lossy(&bytes?).into_owned())
        }
    }

    /// SentencePiece-like: ids index words, "▁" is a space, and the leading
    /// space of the decoded text is stripped.
    struct Words(Vec<&'static str>);

    impl Decode for Words {
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            let mut s = String::new();
            for &id in ids {
                s.push_str(self.0.get(id as usize).ok_or("bad id")?);
            }
            let s = s.replace('▁', " ");
            Ok(s.strip_prefix(' ').unwrap_or(&s).to_string())
        }
    }

    fn ids(text: &[u8]) -> Vec<u32> {
        text.iter().map(|&b| u32::from(b)).collect()
    }

    /// Streams `text` byte by byte; returns the pieces pushed and flushed.
    fn stream(prompt_tail: &[u32], text: &[u8]) -> Vec<String> {
        let mut dec = IncrementalDecoder::new(prompt_tail);
        let mut out: Vec<String> = ids(text)
            .into_iter()
            .map(|id| dec.push(&Bytes, id).unwrap())
            .collect();
        out.push(dec.flush(&Bytes).unwrap());
        out
    }

    #[test]
    fn multibyte_text_round_trips_without_split_characters() {
        let text = "héllo wörld — 世界 👨‍👩‍👧 family, ok? ñ";
        let pieces = stream(&[], text.as_bytes());
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // Nothing is emitted while a character is incomplete: the first two
        // bytes of the 4-byte emoji give nothing, the fourth gives it whole.
        let emoji = stream(&[], "👨".as_bytes());
        assert_eq!(emoji, vec!["", "", "", "👨", ""]);
        // Every byte of plain ASCII is emitted at once.
        assert_eq!(stream(&[], b"ab"), vec!["a", "b", ""]);
    }

    #[test]
    fn prompt_tail_is_context_not_output() {
        let prompt = "préfix ".as_bytes();
        let text = "世界!";
        let pieces = stream(&ids(&prompt[prompt.len() - 4..]), text.as_bytes());
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn flush_releases_an_incomplete_tail() {
        let mut bytes = b"ok ".to_vec();
        bytes.extend_from_slice(&"世".as_bytes()[..2]);
        let pieces = stream(&[], &bytes);
        assert_eq!(pieces.concat(), "ok \u{FFFD}");
        assert_eq!(pieces.last().map(String::as_str), Some("\u{FFFD}"));
    }

    #[test]
    fn invalid_bytes_inside_the_text_do_not_stall_the_stream() {
        let pieces = stream(&[], &[b'a', 0xFF, b'b', b'c']);
        // 0xFF is held while it is trailing, then released with 'b'.
        assert_eq!(pieces, vec!["a", "", "\u{FFFD}b", "c", ""]);
    }

    #[test]
    fn spaces_survive_a_space_stripping_decoder() {
        let words = Words(vec!["▁Hello", "▁world", "!", "▁The"]);
        let mut dec = IncrementalDecoder::new(&[]);
        let out: Vec<String> = [0, 1, 2]
            .iter()
            .map(|&id| dec.push(&words, id).unwrap())
            .collect();
        assert_eq!(out, vec!["Hello", " world", "!"]);
        // With prompt context, even the first generated word keeps its space.
        let mut dec = IncrementalDecoder::new(&[3]);
        assert_eq!(dec.push(&words, 1).unwrap(), " world");
        assert_eq!(dec.flush(&words).unwrap(), "");
    }

    #[test]
    fn decode_errors_are_reported() {
        let mut dec = IncrementalDecoder::new(&[]);
        assert_eq!(dec.push(&Bytes, 300), Err("bad id 300".to_string()));
    }
}
