//! A minimal server-sent events reader: bytes in, complete events out. Handles `\n` and
//! `\r\n`, multi-line `data:`, comments, and events split across any chunk boundaries.

/// One event: its `event:` name (if any) and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Adds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            if let Some(e) = parse_block(&block[..end]) {
                events.push(e);
            }
        }
        events
    }

    /// What is left when the stream ends (an event without its final blank line).
    pub fn finish(&mut self) -> Option<Event> {
        let block = std::mem::take(&mut self.buf);
        parse_block(&block)
    }
}

fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i] == b'\n' && buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
            return Some((i, 3));
        }
        i += 1;
    }
    None
}

fn parse_block(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => data.push(value),
            "event" => event = Some(value.to_owned()),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(Event {
        event,
        data: data.join("\n"),
    })
}

/// Formats one `data:` event.
pub fn data(payload: &str) -> bytes::Bytes {
    let mut out = bytes::BytesMut::with_capacity(payload.len() + 8);
    put_data(&mut out, payload);
    out.freeze()
}

/// Appends one `data:` event to `out`.
pub fn put_data(out: &mut bytes::BytesMut, payload: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_chunk_boundaries_and_line_endings() {
        let mut p = Parser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        let e = p.push(b":1}\n\nevent: ping\r\ndata: x\r\n\r\n: comment\n\ndata: [DO");
        assert_eq!(
            e,
            vec![
                Event {
                    event: None,
                    data: "{\"a\":1}".into()
                },
                Event {
                    event: Some("ping".into()),
                    data: "x".into()
                },
            ]
        );
        assert!(p.push(b"NE]").is_empty());
        assert_eq!(
            p.finish(),
            Some(Event {
                event: None,
                data: "[DONE]".into()
            })
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut p = Parser::default();
        let e = p.push(b"data: a\ndata: b\n\n");
        assert_eq!(e[0].data, "a\nb");
    }
}
