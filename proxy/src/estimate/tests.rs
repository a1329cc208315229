#![allow(clippy::unwrap_used)]

use super::*;

const CORPUS: &str = include_str!("chat-corpus.jsonl");

/// Each corpus line: a chat request and its input tokens by OpenAI's tokenizer (scripts/chat-corpus).
fn corpus() -> Vec<(Value, u64)> {
    CORPUS
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["request"].clone(), v["input_tokens"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn openai_estimates_are_within_one_percent_of_the_real_tokenizer_on_the_corpus() {
    let corpus = corpus();
    assert!(corpus.len() >= 100, "the corpus holds {} requests", corpus.len());
    let (mut worst, mut total_err, mut total) = (0.0f64, 0u64, 0u64);
    for (request, truth) in &corpus {
        let body = serde_json::to_vec(request).unwrap();
        let model = request["model"].as_str().unwrap();
        let (estimate, method) = input_tokens("openai", model, &body);
        assert_eq!(method, Method::Tokenizer, "{model} is an OpenAI model tiktoken knows");
        assert_eq!(input_tokens("openai", model, &body), (estimate, method), "a remembered count is the same");
        let err = (estimate as f64 - *truth as f64).abs() / *truth as f64;
        worst = worst.max(err);
        total_err += estimate.abs_diff(*truth);
        total += truth;
    }
    println!(
        "corpus: {} requests, {total} tokens; worst error {:.3}%, total error {total_err} tokens",
        corpus.len(),
        worst * 100.0
    );
    assert!(worst <= 0.01, "worst relative error {:.3}% is over 1%", worst * 100.0);
}

#[test]
fn the_bound_is_never_below_the_real_count() {
    // Anthropic and Gemini tokenizers are not public; o200k and cl100k stand in for byte-level BPE
    // tokenizers here, whose tokens each cover at least one byte.
    for (request, truth) in corpus() {
        let body = serde_json::to_vec(&request).unwrap();
        let (bound, method) = input_tokens("anthropic", "claude-sonnet-4-5", &body);
        assert_eq!(method, Method::Bound);
        assert!(bound >= truth, "bound {bound} < {truth}");
    }
}

#[test]
fn models_tiktoken_does_not_know_get_the_bound() {
    let body = br#"{"model":"llama-3.1-70b","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(input_tokens("openai", "llama-3.1-70b", body), (body.len() as u64, Method::Bound));
    let tools = br#"{"model":"claude","tools":[{"name":"x"}],"messages":[]}"#;
    assert_eq!(bound(tools), tools.len() as u64 + TOOLS_MARGIN);
}

#[test]
fn parts_images_tools_and_responses_input_are_counted() {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let text = |s: &str| bpe.encode_with_special_tokens(s).len() as u64;
    let chat = br#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
    let (n, _) = input_tokens("openai", "gpt-4o", chat);
    assert_eq!(n, PER_MESSAGE + text("user") + text("What is in this image?") + IMAGE_MAX + REPLY_PRIMING);
    let responses = br#"{"model":"gpt-4o","input":"Say hello","instructions":"Be brief"}"#;
    let (n, _) = input_tokens("openai", "gpt-4o", responses);
    assert_eq!(n, text("Say hello") + PER_MESSAGE + REPLY_PRIMING + text("Be brief") + PER_MESSAGE);
    let embeddings = br#"{"model":"text-embedding-3-small","input":["alpha beta","gamma"]}"#;
    let (n, _) = input_tokens("openai", "text-embedding-3-small", embeddings);
    assert_eq!(n, text("alpha beta") + text("gamma"));
    let with_tools =
        br#"{"model":"gpt-4o","messages":[],"tools":[{"type":"function","function":{"name":"get_weather"}}]}"#;
    let (n, _) = input_tokens("openai", "gpt-4o", with_tools);
    let tools: Value = serde_json::from_slice::<Value>(with_tools).unwrap()["tools"].clone();
    assert_eq!(n, REPLY_PRIMING + text(&tools.to_string()));
}

#[test]
fn the_roles_counted_as_one_token_are_one_token_in_both_tokenizers() {
    for bpe in [O200K.as_ref().unwrap(), CL100K.as_ref().unwrap()] {
        for role in super::ONE_TOKEN_ROLES {
            assert_eq!(bpe.count(role), 1, "{role}");
        }
    }
}

/// Every string inside a JSON value.
fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Text built to hit every branch of both split patterns and of the merge: contractions in both
/// cases, digit runs, punctuation runs with newlines, trailing and inner whitespace, CJK, emoji,
/// combining marks, special tokens of one vocabulary and not the other, a half-written special
/// token, and pieces long enough for the heap merge.
fn tricky_texts() -> Vec<String> {
    const PARTS: [&str; 24] = [
        "Hello",
        " world",
        "'s",
        "'LL",
        "'Re",
        " don't",
        "12345678",
        " 3.14159",
        "!!!\n\n",
        "\r\n",
        "   ",
        "\t",
        "日本語のテキスト",
        "🙂🙃",
        "e\u{301}",
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|endofprompt|>",
        "<|",
        "|>",
        " -->",
        "/path/to/file\n",
        "ÆØÅ",
        "\u{a0}",
    ];
    let mut texts: Vec<String> = PARTS.iter().map(|p| (*p).to_owned()).collect();
    texts.push("a".repeat(5_000));
    texts.push("ab".repeat(700));
    texts.push(" ".repeat(300) + "x");
    texts.push("0123456789".repeat(40));
    texts.push("Pneumonoultramicroscopicsilicovolcanoconiosis".repeat(5));
    texts.push("\u{1F600}".repeat(60));
    // A fixed pseudo-random walk over the parts.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        let mut text = String::new();
        for _ in 0..(state % 40) {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            text.push_str(PARTS[(state >> 33) as usize % PARTS.len()]);
        }
        texts.push(text);
    }
    texts
}

#[test]
fn the_compact_tokenizers_count_every_text_as_tiktoken_does() {
    let mut texts: Vec<String> = tricky_texts();
    for (request, _) in corpus() {
        let mut found = Vec::new();
        strings(&request, &mut found);
        texts.extend(found.into_iter().map(str::to_owned));
        texts.push(request.to_string());
    }
    let pairs = [
        (O200K.as_ref().unwrap(), tiktoken_rs::o200k_base_singleton()),
        (CL100K.as_ref().unwrap(), tiktoken_rs::cl100k_base_singleton()),
    ];
    let mut tokens = 0;
    for (ours, theirs) in pairs {
        for text in &texts {
            let want = theirs.encode_with_special_tokens(text).len();
            assert_eq!(ours.count(text), want, "{text:?}");
            tokens += want;
        }
    }
    assert!(texts.len() > 1_000 && tokens > 100_000, "{} texts, {tokens} tokens", texts.len());
}

#[test]
fn the_compact_tokenizers_hold_a_few_mib() {
    let o200k = O200K.as_ref().unwrap().heap_bytes();
    let cl100k = CL100K.as_ref().unwrap().heap_bytes();
    assert!(o200k < 5 << 20 && cl100k < 3 << 20, "o200k_base {o200k} B, cl100k_base {cl100k} B");
}

#[test]
fn a_repeated_token_or_a_bad_pattern_is_refused() {
    let tokens: [&[u8]; 3] = [b"a", b"b", b"a"];
    assert!(bpe::Bpe::new(tokens.into_iter(), r"\w+", &[]).is_none());
    let tokens: [&[u8]; 2] = [b"a", b"b"];
    assert!(bpe::Bpe::new(tokens.into_iter(), r"(", &[]).is_none());
    let small = bpe::Bpe::new([b"a" as &[u8], b"b", b"ab", b"abab"].into_iter(), r"\w+|\s", &[]).unwrap();
    assert_eq!(small.count("abab ab ba"), 1 + 1 + 1 + 1 + 2);
}
