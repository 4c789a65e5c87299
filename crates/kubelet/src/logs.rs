//! Container logs in CRI's file format (`<RFC3339Nano time> <stdout|stderr> <P|F> <text>`, P for a
//! partial line), read back as upstream's kubelet serves them: lines re-joined, optionally prefixed with
//! their time, selected by `sinceTime`/`sinceSeconds` and `tailLines`, cut at `limitBytes`, and followed
//! while the container runs.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use k8s_openapi::jiff::Timestamp;

/// `GET /containerLogs/…` query options (upstream `PodLogOptions`).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
}

impl LogOptions {
    /// From a query string; an invalid value is an error naming it.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut o = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let flag = || v == "true" || v == "1";
            match k.as_ref() {
                "follow" => o.follow = flag(),
                "previous" => o.previous = flag(),
                "timestamps" => o.timestamps = flag(),
                "tailLines" => {
                    o.tail_lines = Some(v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?)
                }
                "limitBytes" => {
                    let n: usize = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                    if n == 0 {
                        return Err("limitBytes must be greater than zero".into());
                    }
                    o.limit_bytes = Some(n);
                }
                "sinceSeconds" => {
                    let s: i64 = v
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    if s < 1 {
                        return Err("sinceSeconds must be greater than zero".into());
                    }
                    o.since = Timestamp::now()
                        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                        .ok();
                }
                "sinceTime" => {
                    o.since = Some(v.parse().map_err(|_| format!("invalid sinceTime {v:?}"))?)
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: String,
    pub stream: String,
    /// The text with its newline (absent for a final partial line).
    pub text: Vec<u8>,
}

/// Parses CRI log lines, joining partial (`P`) pieces with the rest of their line.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Option<Entry>,
}

impl Parser {
    /// Feeds one file line (without its newline); returns a complete entry when one ends.
    pub fn feed(&mut self, line: &[u8]) -> Option<Entry> {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let stream = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let tag = parts.next()?;
        let text = parts.next().unwrap_or(b"");
        let partial = tag.first() == Some(&b'P');
        let entry = self.pending.get_or_insert_with(|| Entry {
            time,
            stream,
            text: Vec::new(),
        });
        entry.text.extend_from_slice(text);
        if partial {
            return None;
        }
        let mut done = self.pending.take()?;
        done.text.push(b'\n');
        Some(done)
    }
}

fn render(e: &Entry, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(e.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&e.text);
}

fn selected(e: &Entry, o: &LogOptions) -> bool {
    match &o.since {
        Some(since) => e.time.parse::<Timestamp>().is_ok_and(|t| t >= *since),
        None => true,
    }
}

/// Reads the whole log as the options select it; returns the bytes and the file offset read up to.
pub fn read(path: &Path, o: &LogOptions) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw)?;
    let complete = raw.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut parser = Parser::default();
    let mut entries: Vec<Entry> = Vec::new();
    // Where the entry being read began: a partial entry at the end is left for a follower to finish.
    let (mut pos, mut entry_start) = (0usize, 0usize);
    for line in raw[..complete].split_inclusive(|b| *b == b'\n') {
        if parser.pending.is_none() {
            entry_start = pos;
        }
        pos += line.len();
        let l = line.strip_suffix(b"\n").unwrap_or(line);
        if l.is_empty() {
            continue;
        }
        if let Some(e) = parser.feed(l) {
            entry_start = pos;
            if selected(&e, o) {
                entries.push(e);
            }
        }
    }
    let end = if parser.pending.is_some() {
        entry_start
    } else {
        complete
    };
    if let Some(n) = o.tail_lines {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    let mut out = Vec::new();
    for e in &entries {
        render(e, o.timestamps, &mut out);
    }
    if let Some(limit) = o.limit_bytes {
        out.truncate(limit);
    }
    Ok((out, end as u64))
}

/// Reads entries added after `offset`; returns their bytes and the new offset.
pub fn read_from(
    path: &Path,
    offset: u64,
    parser: &mut Parser,
    o: &LogOptions,
) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < offset {
        // Rotated or truncated: start over.
        return Ok((Vec::new(), 0));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        line.pop();
        if let Some(e) = parser.feed(&line)
            && selected(&e, o)
        {
            render(&e, o.timestamps, &mut out);
        }
    }
    Ok((out, pos))
}

/// The last `lines` entries' text (at most `bytes` bytes), for a termination message from the log.
pub fn tail_messages(path: &Path, lines: usize, bytes: usize) -> String {
    let o = LogOptions {
        tail_lines: Some(lines),
        ..Default::default()
    };
    let Ok((out, _)) = read(path, &o) else {
        return String::new();
    };
    let start = out.len().saturating_sub(bytes);
    String::from_utf8_lossy(&out[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_join_and_tail_counts_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00.1Z stdout P hel\n2026-01-01T00:00:00.2Z stdout F lo\n2026-01-01T00:00:01Z stderr F two\n2026-01-01T00:00:02Z stdout F three\n2026-01-01T00:00:03Z stdout P unfinished",
        )
        .unwrap();
        let (all, end) = read(&p, &LogOptions::default()).unwrap();
        assert_eq!(String::from_utf8(all).unwrap(), "hello\ntwo\nthree\n");
        let o = LogOptions {
            tail_lines: Some(2),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(read(&p, &o).unwrap().0).unwrap(),
            "2026-01-01T00:00:01Z two\n2026-01-01T00:00:02Z three\n"
        );
        let o = LogOptions {
            since: Some("2026-01-01T00:00:01Z".parse().unwrap()),
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(read(&p, &o).unwrap().0).unwrap(),
            "two\nt"
        );
        // The partial line waits for its end: a follower reads it again with what completes it.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"\n2026-01-01T00:00:03.5Z stdout F  now\n2026-01-01T00:00:04Z stdout F four\n",
        )
        .unwrap();
        let (more, _) = read_from(&p, end, &mut Parser::default(), &LogOptions::default()).unwrap();
        assert_eq!(String::from_utf8(more).unwrap(), "unfinished now\nfour\n");
    }
}
