// Checks the built policy modules the way the proxy's host uses them (run by build.sh when node is
// installed): each packs/<name>/<name>.wasm must import nothing and export `memory`, `alloc` and
// `evaluate`; then each is run, one fresh instance per call, on sample call documents and its
// verdicts are compared with the expected ones. Usage: node check-modules.mjs [pack...]
import { readFileSync } from "node:fs";

const EXAMPLE = {
  version: 1,
  time: "2026-11-26T18:00:00.123Z",
  run: { id: "run-1", agent: "planner", tenant: "default", step: 3 },
  request: { method: "POST", scheme: "https", host: "api.openai.com", port: 443,
             path: "/v1/chat/completions", query: "", headers: { "content-type": "application/json" } },
  llm: { provider: "openai", model: "gpt-4o-mini", max_tokens: 512, stream: false, messages: 2, tools: ["get_weather"] },
  mcp: { method: "tools/call", tool: "read_file", argument_keys: ["path"] },
  state: { calls: 2, tokens: 1200, cost_micro_usd: 3400, hosts: ["api.openai.com"], tools: ["read_file"] },
};

// The example input with `patch` applied (one level deep per top-level key; null replaces).
function input(patch = {}) {
  const out = structuredClone(EXAMPLE);
  for (const [key, value] of Object.entries(patch)) {
    out[key] = value === null || typeof value !== "object" || Array.isArray(value) ? value : { ...out[key], ...value };
  }
  return out;
}

const doc = (config, patch) => JSON.stringify({ config, input: input(patch) });
const INVALID = "policy input is not valid: ";

// [document, allow, reason substring or null, max_tokens_cap or undefined]
const CASES = {
  allowlist: [
    [doc({ hosts: ["api.openai.com", "*.anthropic.com"], models: ["gpt-4o*"] }), true, null],
    [doc({ hosts: ["*.anthropic.com"] }), false, "host api.openai.com is not in the allowlist"],
    [doc({ hosts: ["*"], models: ["claude-*"] }), false, "model gpt-4o-mini is not in the allowlist"],
    [doc({ hosts: ["*"], models: ["claude-*"] }, { llm: null }), true, null],
  ],
  "model-limits": [
    [doc({ models: { "gpt-4o*": { max_tokens: 256 } }, deny_models: ["o1-*"] }), true, "exceeds the cap 256", 256],
    [doc({ models: { "gpt-4o*": { max_tokens: 256 } } }, { llm: { max_tokens: null } }), true, "max_tokens not set", 256],
    [doc({ models: { "gpt-4o*": { max_tokens: 1024 } } }), true, null, undefined],
    [doc({ deny_models: ["gpt-4o-*"] }), false, "model gpt-4o-mini is denied (deny_models: gpt-4o-*)"],
    [doc({ default_max_tokens: 100 }), true, "capped to 100", 100],
  ],
  "mcp-tools": [
    [doc({ deny_tools: ["read_*"] }), false, "MCP tool read_file is denied"],
    [doc({ deny_tools: ["read_*"] }, { mcp: { method: "tools/list", tool: null } }), true, null],
    [doc(null), true, null],
  ],
  "info-flow": [
    [doc({ secret_reading_tools: ["read_file"], outbound_hosts: ["api.openai.com"] }), false,
      "run read secrets with MCP tool read_file; outbound calls to host api.openai.com"],
    [doc({ secret_reading_tools: ["read_file"], outbound_hosts: ["api.openai.com"] }, { state: { tools: [] }, mcp: null }), true, null],
    [doc({ secret_reading_tools: ["vault_*"], outbound_hosts: ["*"] }), true, null],
  ],
};
// Every pack must deny documents it cannot read, without trapping.
const BAD = ["", "{", "[]", doc({ no_such_field: 1 }), JSON.stringify({ config: null, input: { version: 1 } }),
  JSON.stringify({ config: null, input: { ...EXAMPLE, version: 2 } })];

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

// One call, as the host makes it: fresh instance, alloc, write, evaluate, read the verdict.
function call(module, text) {
  const { memory, alloc, evaluate } = new WebAssembly.Instance(module, {}).exports;
  const bytes = encoder.encode(text);
  const ptr = alloc(bytes.length) >>> 0;
  new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
  const packed = BigInt.asUintN(64, evaluate(ptr, bytes.length));
  const outPtr = Number(packed >> 32n), outLen = Number(packed & 0xffffffffn);
  return JSON.parse(decoder.decode(new Uint8Array(memory.buffer, outPtr, outLen)));
}

let failures = 0;
const fail = (msg) => { failures++; console.error(`FAIL ${msg}`); };

const packs = process.argv.length > 2 ? process.argv.slice(2) : Object.keys(CASES);
for (const name of packs) {
  const bytes = readFileSync(new URL(`packs/${name}/${name}.wasm`, import.meta.url));
  const module = new WebAssembly.Module(bytes);
  const imports = WebAssembly.Module.imports(module);
  const exports = Object.fromEntries(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
  if (imports.length) fail(`${name}: imports ${JSON.stringify(imports)}`);
  for (const [want, kind] of [["memory", "memory"], ["alloc", "function"], ["evaluate", "function"]]) {
    if (exports[want] !== kind) fail(`${name}: export ${want} is ${exports[want]}, want ${kind}`);
  }
  const cases = CASES[name] ?? [];
  if (!cases.length) fail(`${name}: no sample documents in check-modules.mjs`);
  for (const [i, [text, allow, reason, cap]] of cases.entries()) {
    const verdict = call(module, text);
    const ok = verdict.allow === allow
      && (reason === null ? verdict.reasons.length === 0 : verdict.reasons.some((r) => r.includes(reason)))
      && (cap === undefined || verdict.obligations.max_tokens_cap === cap);
    if (!ok) fail(`${name} case ${i}: ${JSON.stringify(verdict)}`);
  }
  for (const text of BAD) {
    const verdict = call(module, text);
    if (verdict.allow || !verdict.reasons[0]?.startsWith(INVALID)) fail(`${name} bad ${JSON.stringify(text)}: ${JSON.stringify(verdict)}`);
  }
  const rounds = 2000, text = cases[0][0], start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) call(module, text);
  const micros = Number(process.hrtime.bigint() - start) / rounds / 1000;
  console.log(`${name}: ${bytes.length} bytes; imports none; exports ${Object.keys(exports).join(", ")}; `
    + `${cases.length + BAD.length} documents ok; ${micros.toFixed(1)} µs/call incl. instantiation (node)`);
}
if (failures) {
  console.error(`${failures} module check(s) failed`);
  process.exit(1);
}
