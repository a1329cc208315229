//! The binary encoding of the input document: what the host writes for the `evaluate_binary`
//! export, decoded here into the same [`Input`] the JSON document gives.
//!
//! The layout (`docs/reference/policy-input.md`, "Binary input") is the input's fields in
//! document order, little-endian, with no field names:
//!
//! - integers are fixed width (`u16` for `port`, `u32` for `version` and lengths, `u64` otherwise);
//! - a string is a `u32` byte length, then UTF-8 bytes;
//! - an optional value is a `u8` tag (0 = `null`, 1 = present), then the value if present;
//! - a list is a `u32` count, then its items; `headers` is a list of name, value string pairs;
//! - a bool is a `u8`, 0 or 1.
//!
//! Bytes after the last field are ignored: fields added to the document later are appended there,
//! so a pack built today keeps decoding what a newer proxy writes. Anything else that does not fit
//! (a length past the end, bad UTF-8, a tag other than 0 or 1) is an error, which the caller turns
//! into a deny verdict.

use std::collections::BTreeMap;

use crate::input::{Input, Llm, Mcp, Request, Run, State};

/// Why a binary document does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the layout front to back, naming the field that does not fit.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(|| {
            DecodeError(format!(
                "{field}: needs {n} bytes at offset {}, the document has {}",
                self.at,
                self.bytes.len()
            ))
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn len(&mut self, field: &str) -> Result<usize, DecodeError> {
        // u32 always fits usize on the targets packs build for (32 and 64 bits).
        Ok(self.u32(field)? as usize)
    }

    fn bool(&mut self, field: &str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("{field}: {other} is not a bool (0 or 1)"))),
        }
    }

    fn present(&mut self, field: &str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("{field}: tag {other} is neither null (0) nor present (1)"))),
        }
    }

    fn str(&mut self, field: &str) -> Result<String, DecodeError> {
        let len = self.len(field)?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| DecodeError(format!("{field}: not UTF-8: {e}")))
    }

    fn opt_str(&mut self, field: &str) -> Result<Option<String>, DecodeError> {
        if self.present(field)? { self.str(field).map(Some) } else { Ok(None) }
    }

    fn strs(&mut self, field: &str) -> Result<Vec<String>, DecodeError> {
        let count = self.len(field)?;
        // Each item takes at least its 4-byte length: refuse counts the bytes cannot hold before
        // reserving memory for them.
        if count > (self.bytes.len() - self.at) / 4 {
            return Err(DecodeError(format!("{field}: {count} items cannot fit in the document")));
        }
        (0..count).map(|_| self.str(field)).collect()
    }
}

/// Decodes the binary input document. Trailing bytes are ignored (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<Input, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u32("version")?;
    if version != crate::INPUT_VERSION {
        // The layout after the version is version 1's: do not read on.
        return Err(DecodeError(format!(
            "input version {version} is not supported (this pack understands version {})",
            crate::INPUT_VERSION
        )));
    }
    let time = r.str("time")?;
    let run = Run {
        id: r.str("run.id")?,
        agent: r.opt_str("run.agent")?,
        tenant: r.opt_str("run.tenant")?,
        step: r.u64("run.step")?,
    };
    let method = r.str("request.method")?;
    let scheme = r.str("request.scheme")?;
    let host = r.str("request.host")?;
    let port = r.u16("request.port")?;
    let path = r.str("request.path")?;
    let query = r.str("request.query")?;
    let count = r.len("request.headers")?;
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let name = r.str("request.headers")?;
        let value = r.str("request.headers")?;
        headers.insert(name, value);
    }
    let request = Request { method, scheme, host, port, path, query, headers };
    let llm = if r.present("llm")? {
        Some(Llm {
            provider: r.str("llm.provider")?,
            model: r.str("llm.model")?,
            max_tokens: if r.present("llm.max_tokens")? { Some(r.u64("llm.max_tokens")?) } else { None },
            stream: r.bool("llm.stream")?,
            messages: r.u64("llm.messages")?,
            tools: r.strs("llm.tools")?,
        })
    } else {
        None
    };
    let mcp = if r.present("mcp")? {
        Some(Mcp {
            method: r.str("mcp.method")?,
            tool: r.opt_str("mcp.tool")?,
            argument_keys: r.strs("mcp.argument_keys")?,
        })
    } else {
        None
    };
    let state = State {
        calls: r.u64("state.calls")?,
        tokens: r.u64("state.tokens")?,
        cost_micro_usd: r.u64("state.cost_micro_usd")?,
        hosts: r.strs("state.hosts")?,
        tools: r.strs("state.tools")?,
    };
    Ok(Input { version, time, run, request, llm, mcp, state })
}

/// Encodes `input` in the binary layout: what the proxy writes (the SDK uses it in tests and in
/// [`testing`](crate::testing)).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let len = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    let str = |out: &mut Vec<u8>, s: &str| {
        len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    };
    let opt_str = |out: &mut Vec<u8>, s: &Option<String>| match s {
        Some(s) => {
            out.push(1);
            str(out, s);
        }
        None => out.push(0),
    };
    let strs = |out: &mut Vec<u8>, items: &[String]| {
        len(out, items.len());
        for s in items {
            str(out, s);
        }
    };
    out.extend_from_slice(&input.version.to_le_bytes());
    str(&mut out, &input.time);
    str(&mut out, &input.run.id);
    opt_str(&mut out, &input.run.agent);
    opt_str(&mut out, &input.run.tenant);
    out.extend_from_slice(&input.run.step.to_le_bytes());
    let q = &input.request;
    for s in [&q.method, &q.scheme, &q.host] {
        str(&mut out, s);
    }
    out.extend_from_slice(&q.port.to_le_bytes());
    str(&mut out, &q.path);
    str(&mut out, &q.query);
    len(&mut out, q.headers.len());
    for (name, value) in &q.headers {
        str(&mut out, name);
        str(&mut out, value);
    }
    match &input.llm {
        Some(llm) => {
            out.push(1);
            str(&mut out, &llm.provider);
            str(&mut out, &llm.model);
            match llm.max_tokens {
                Some(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                None => out.push(0),
            }
            out.push(u8::from(llm.stream));
            out.extend_from_slice(&llm.messages.to_le_bytes());
            strs(&mut out, &llm.tools);
        }
        None => out.push(0),
    }
    match &input.mcp {
        Some(mcp) => {
            out.push(1);
            str(&mut out, &mcp.method);
            opt_str(&mut out, &mcp.tool);
            strs(&mut out, &mcp.argument_keys);
        }
        None => out.push(0),
    }
    let s = &input.state;
    for n in [s.calls, s.tokens, s.cost_micro_usd] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    strs(&mut out, &s.hosts);
    strs(&mut out, &s.tools);
    out
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use crate::testing::example_input;

    /// The proxy's encoding of the documented example (`proxy/src/policy/input.rs` checks that it
    /// writes exactly these bytes).
    const EXAMPLE: &[u8] = include_bytes!("../example-input.bin");

    #[test]
    fn the_example_decodes_to_the_json_example() {
        assert_eq!(decode(EXAMPLE).unwrap(), example_input());
        assert_eq!(encode(&example_input()), EXAMPLE);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut longer = EXAMPLE.to_vec();
        longer.extend_from_slice(b"\x01\x02fields added later");
        assert_eq!(decode(&longer).unwrap(), example_input());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for n in 0..EXAMPLE.len() {
            assert!(decode(&EXAMPLE[..n]).is_err(), "decoded {n} of {} bytes", EXAMPLE.len());
        }
    }

    #[test]
    fn bad_utf8_tags_and_counts_are_errors_naming_the_field() {
        let mut input = example_input();
        input.run.id = "r\u{e9}".into();
        let mut bytes = encode(&input);
        let at = bytes.windows(3).position(|w| w == "r\u{e9}".as_bytes()).unwrap();
        bytes[at + 1] = 0xff;
        assert!(decode(&bytes).unwrap_err().to_string().starts_with("run.id: not UTF-8"));

        let mut bytes = encode(&example_input());
        let tag = 4 + 4 + example_input().time.len() + 4 + example_input().run.id.len();
        bytes[tag] = 7;
        assert!(decode(&bytes).unwrap_err().to_string().starts_with("run.agent: tag 7"));

        let mut input = example_input();
        input.state.tools.clear();
        let mut bytes = encode(&input);
        let end = bytes.len();
        bytes[end - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bytes).unwrap_err().to_string().starts_with("state.tools: 4294967295 items"));
    }

    #[test]
    fn another_version_is_refused_before_reading_on() {
        let err = decode(&[2u8, 0, 0, 0]).unwrap_err().to_string();
        assert_eq!(err, "input version 2 is not supported (this pack understands version 1)");
    }
}
