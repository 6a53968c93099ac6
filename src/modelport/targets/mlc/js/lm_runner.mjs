// Runs an MLC chat package's wasm32 CPU model library in Node through TVM's web runtime
// (@mlc-ai/web-runtime) and its paged KV cache, with WebLLM's call order: create_tir_paged_kv_cache,
// kv_state_clear + kv_state_add_sequence(0), then per forward embed -> kv_state_begin_forward ->
// prefill_logits / decode -> kv_state_end_forward. Parameters are read from tensor-cache.json by the
// names in the library's _metadata, as WebLLM reads them.
//
// usage: node lm_runner.mjs <model.wasm> <package dir>
// stdin, one JSON line per request:
//   {"op": "prefill", "ids": [...]}   a fresh sequence; replies every position's logits [T, V]
//   {"op": "decode", "token": t}      one more token of the current sequence; replies logits [V]
// stdout: one JSON line {"shape": [...], "seconds": t} (or {"error": "..."}), then float32 LE bytes.
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const tvmjs = require("@mlc-ai/web-runtime");
const log = (...a) => process.stderr.write(a.join(" ") + "\n");
const PAGE_SIZE = 16; // WebLLM's defaultPageSize

async function load(wasmPath, pkg) {
  const buf = fs.readFileSync(wasmPath);
  const tvm = await tvmjs.instantiate(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength),
    tvmjs.createPolyfillWASI(), log);
  const dev = tvm.cpu();
  tvm.beginScope();
  const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
  const meta = JSON.parse(vm.getFunction("_metadata")().toString());
  const cache = JSON.parse(fs.readFileSync(path.join(pkg, "tensor-cache.json"), "utf8"));
  const byName = new Map();
  for (const shard of cache.records) {
    const data = fs.readFileSync(path.join(pkg, shard.dataPath));
    for (const r of shard.records) {
      const t = tvm.detachFromCurrentScope(tvm.empty(r.shape, r.dtype, dev));
      t.copyFromRawBytes(new Uint8Array(data.buffer, data.byteOffset + r.byteOffset, r.nbytes));
      byName.set(r.name, t);
    }
  }
  const missing = meta.params.filter((p) => !byName.has(p.name)).map((p) => p.name);
  if (missing.length) throw new Error(`tensor-cache.json lacks ${missing.slice(0, 5).join(", ")}`);
  const fn = (name) => tvm.detachFromCurrentScope(vm.getFunction(name));
  const global = (name) => tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
  const m = {
    tvm, dev, meta,
    params: tvm.detachFromCurrentScope(tvm.makeTVMArray(meta.params.map((p) => byName.get(p.name)))),
    embed: fn("embed"), prefill: fn("prefill_logits"), decode: fn("decode"),
    clear: global("vm.builtin.kv_state_clear"), add: global("vm.builtin.kv_state_add_sequence"),
    begin: global("vm.builtin.kv_state_begin_forward"), end: global("vm.builtin.kv_state_end_forward"),
  };
  m.kv = tvm.detachFromCurrentScope(fn("create_tir_paged_kv_cache")(
    tvm.makeShapeTuple([1]), tvm.makeShapeTuple([meta.context_window_size]),
    tvm.makeShapeTuple([meta.prefill_chunk_size]), tvm.makeShapeTuple([PAGE_SIZE]), tvm.makeShapeTuple([0])));
  tvm.endScope();
  return m;
}

// One forward of `ids` (at most prefill_chunk_size) through `f`; returns logits as a Float32Array.
function forward(m, f, ids) {
  const { tvm, dev } = m;
  tvm.beginScope();
  try {
    const idsT = tvm.empty([ids.length], "int32", dev).copyFrom(Int32Array.from(ids));
    const embed = m.embed(idsT, m.params);
    const hidden = embed.view([1, ids.length, embed.shape[1]]);
    m.begin(m.kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([ids.length]));
    const out = f(hidden, m.kv, m.params);
    m.end(m.kv);
    return out.get(0).toArray();
  } finally {
    tvm.endScope();
  }
}

function run(m, req) {
  const t0 = performance.now();
  let values, shape;
  if (req.op === "prefill") {
    m.clear(m.kv);
    m.add(m.kv, new tvmjs.Scalar(0, "int64"));
    const chunk = m.meta.prefill_chunk_size, parts = [];
    for (let i = 0; i < req.ids.length; i += chunk) parts.push(forward(m, m.prefill, req.ids.slice(i, i + chunk)));
    const vocab = parts[0].length / Math.min(chunk, req.ids.length);
    values = new Float32Array(req.ids.length * vocab);
    let at = 0;
    for (const p of parts) { values.set(p, at); at += p.length; }
    shape = [req.ids.length, vocab];
  } else if (req.op === "decode") {
    values = forward(m, m.decode, [req.token]);
    shape = [values.length];
  } else {
    throw new Error(`unknown op ${req.op}`);
  }
  return { header: { shape, seconds: (performance.now() - t0) / 1e3 }, bytes: Buffer.from(values.buffer) };
}

const [wasmPath, pkg] = process.argv.slice(2);
const m = await load(wasmPath, pkg);
process.stdout.write(JSON.stringify({ ready: true, context_window_size: m.meta.context_window_size }) + "\n");
for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let reply;
  try {
    reply = run(m, JSON.parse(line));
  } catch (e) {
    reply = { header: { error: String((e && e.stack) || e).slice(0, 2000) }, bytes: Buffer.alloc(0) };
  }
  process.stdout.write(JSON.stringify(reply.header) + "\n");
  process.stdout.write(reply.bytes);
}
