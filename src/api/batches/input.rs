//! Parsing a submitted JSONL body into [`BatchLine`]s ("parse, don't validate"):
//! every line must be a JSON object with a unique string `custom_id` and an
//! object `body`; `method` (POST) and `url` are optional, the url defaulting
//! to the job's endpoint. Errors name the 1-based line number. Blank lines are
//! skipped. Error messages never echo request bodies.

use std::collections::HashMap;

use serde_json::Value;

use super::error::BatchError;
use super::types::{BatchLine, CHAT_COMPLETIONS, COMPLETIONS};

/// Longest accepted `custom_id`, in bytes (OpenAI's limit is similar).
pub const MAX_CUSTOM_ID_BYTES: usize = 512;

/// Checks that `endpoint` is one a batch may target.
pub fn parse_endpoint(endpoint: &str) -> Result<&'static str, String> {
    match endpoint {
        CHAT_COMPLETIONS => Ok(CHAT_COMPLETIONS),
        COMPLETIONS => Ok(COMPLETIONS),
        other => Err(format!(
            "unsupported url '{other}': expected '{CHAT_COMPLETIONS}' or '{COMPLETIONS}'"
        )),
    }
}

/// Parses the whole body; `max_lines` bounds the number of request lines.
pub fn parse_jsonl(
    body: &[u8],
    default_endpoint: &str,
    max_lines: usize,
) -> Result<Vec<BatchLine>, BatchError> {
    let text = std::str::from_utf8(body).map_err(|e| BatchError::InvalidInput {
        line: None,
        message: format!("body is not UTF-8 (at byte {})", e.valid_up_to()),
    })?;
    let mut lines = Vec::new();
    // custom_id -> the line number that first used it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if lines.len() == max_lines {
            return Err(BatchError::invalid(
                number,
                format!("too many requests: a batch holds at most {max_lines} lines"),
            ));
        }
        let line = parse_line(raw, default_endpoint).map_err(|m| BatchError::invalid(number, m))?;
        if let Some(first) = seen.insert(line.custom_id.clone(), number) {
            return Err(BatchError::invalid(
                number,
                format!(
                    "duplicate custom_id '{}' (first used on line {first})",
                    line.custom_id
                ),
            ));
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return Err(BatchError::InvalidInput {
            line: None,
            message: "empty batch: the body has no request lines".to_owned(),
        });
    }
    Ok(lines)
}

/// One line, either OpenAI's full form or the short `{custom_id, body}` form.
fn parse_line(raw: &str, default_endpoint: &str) -> Result<BatchLine, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("expected a JSON object".to_owned());
    };
    let custom_id = match fields.remove("custom_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_CUSTOM_ID_BYTES => id,
        Some(Value::String(_)) => {
            return Err(format!(
                "custom_id must be 1 to {MAX_CUSTOM_ID_BYTES} bytes long"
            ))
        }
        Some(_) => return Err("custom_id must be a string".to_owned()),
        None => return Err("missing custom_id".to_owned()),
    };
    match fields.remove("method") {
        None => {}
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => {}
        Some(_) => return Err("method must be \"POST\"".to_owned()),
    }
    let url = match fields.remove("url") {
        None => parse_endpoint(default_endpoint)?,
        Some(Value::String(url)) => parse_endpoint(&url)?,
        Some(_) => return Err("url must be a string".to_owned()),
    };
    let body = match fields.remove("body") {
        Some(body @ Value::Object(_)) => body,
        Some(_) => return Err("body must be a JSON object".to_owned()),
        None => return Err("missing body".to_owned()),
    };
    Ok(BatchLine {
        custom_id,
        url: url.to_owned(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_short_forms_parse() {
        let body = concat!(
            r#"{"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}"#,
            "\n\n",
            r#"{"custom_id":"b","body":{"messages":[]}}"#,
            "\r\n"
        );
        let lines = parse_jsonl(body.as_bytes(), CHAT_COMPLETIONS, 10).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].url, COMPLETIONS);
        assert_eq!(lines[1].url, CHAT_COMPLETIONS);
        assert_eq!(lines[1].custom_id, "b");
    }

    #[test]
    fn errors_name_the_line() {
        let body = "{\"custom_id\":\"a\",\"body\":{}}\n{\"custom_id\":\"a\",\"body\":{}}\n";
        let err = parse_jsonl(body.as_bytes(), CHAT_COMPLETIONS, 10).unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: duplicate custom_id"),
            "{err}"
        );
        let err = parse_jsonl(
            b"{\"custom_id\":\"a\",\"body\":{},\"url\":\"/v1/x\"}",
            CHAT_COMPLETIONS,
            10,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("line 1: unsupported url"),
            "{err}"
        );
        let err = parse_jsonl(
            b"{\"custom_id\":\"a\",\"body\":{}}\n{\"custom_id\":\"b\",\"body\":{}}",
            CHAT_COMPLETIONS,
            1,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: too many requests"),
            "{err}"
        );
        assert!(parse_jsonl(b" \n", CHAT_COMPLETIONS, 10).is_err());
    }
}
