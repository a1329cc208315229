#!/usr/bin/env node
// One HTTP request with the real undici `fetch`, configured only by the environment.
//
// Node 20's built-in fetch ignores proxy variables, so (as a Node 20 user must) this installs
// undici's EnvHttpProxyAgent as the global dispatcher: it reads http_proxy/HTTP_PROXY,
// https_proxy/HTTPS_PROXY (lowercase first) and no_proxy/NO_PROXY. Extra CA: NODE_EXTRA_CA_CERTS
// (read by Node at start-up). undici comes from NODE_PATH ($DEPS/node/node_modules).
//
// usage: node_fetch.cjs METHOD URL [--data STRING] [--header K=V ...] [--stream]
'use strict'

const { EnvHttpProxyAgent, setGlobalDispatcher, fetch } = require('undici')
const { performance } = require('node:perf_hooks')

function parseArgs (argv) {
  const args = { headers: [], data: undefined, stream: false, positional: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--stream') args.stream = true
    else if (a === '--data') args.data = next()
    else if (a === '--header') {
      const kv = next()
      const eq = kv.indexOf('=')
      if (eq <= 0) throw new Error(`--header wants K=V, got ${JSON.stringify(kv)}`)
      args.headers.push([kv.slice(0, eq), kv.slice(eq + 1)])
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`)
    else args.positional.push(a)
  }
  if (args.positional.length !== 2) {
    throw new Error('usage: node_fetch.cjs METHOD URL [--data STRING] [--header K=V ...] [--stream]')
  }
  ;[args.method, args.url] = args.positional
  return args
}

function emit (doc) {
  process.stdout.write(JSON.stringify(doc) + '\n')
}

function headersObject (headers) {
  // Headers iterates lowercased names, repeated ones joined with ", " (set-cookie kept apart).
  const out = {}
  for (const [k, v] of headers) out[k] = k in out ? `${out[k]}, ${v}` : v
  return out
}

async function main () {
  const args = parseArgs(process.argv.slice(2))
  setGlobalDispatcher(new EnvHttpProxyAgent())

  const start = performance.now()
  const res = await fetch(args.url, {
    method: args.method,
    headers: args.headers,
    body: args.data
  })

  if (!args.stream) {
    const body = Buffer.from(await res.arrayBuffer())
    emit({
      status: res.status,
      headers: headersObject(res.headers),
      body_b64: body.toString('base64'),
      http_version: 'HTTP/1.1' // undici fetch speaks HTTP/1.1 unless allowH2 is set
    })
    return
  }

  const decoder = new TextDecoder()
  const parts = []
  const reader = res.body.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    parts.push(Buffer.from(value))
    emit({ t_ms: performance.now() - start, len: value.length, text: decoder.decode(value, { stream: true }) })
  }
  emit({ done: true, status: res.status, body_b64: Buffer.concat(parts).toString('base64') })
}

main().then(
  () => { process.exitCode = 0 },
  (err) => {
    console.error(err && err.stack ? err.stack : String(err))
    if (err && err.cause) console.error('cause:', err.cause)
    process.exit(1)
  }
)
