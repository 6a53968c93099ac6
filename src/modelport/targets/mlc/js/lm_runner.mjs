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
// stdout: one JSON line {"shapes": [[...]], "seconds": t} (or {"error": "..."}), then float32 LE bytes.
import { loadPackage, serve, tvmjs } from "./load_package.mjs";

const PAGE_SIZE = 16; // WebLLM's defaultPageSize

async function load(wasmPath, pkg) {
  const m = await loadPackage(wasmPath, pkg);
  const { tvm, meta } = m;
  const global = (name) => {
    tvm.beginScope();
    const f = tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    tvm.endScope();
    return f;
  };
  Object.assign(m, {
    embed: m.fn("embed"), prefill: m.fn("prefill_logits"), decode: m.fn("decode"),
    clear: global("vm.builtin.kv_state_clear"), add: global("vm.builtin.kv_state_add_sequence"),
    begin: global("vm.builtin.kv_state_begin_forward"), end: global("vm.builtin.kv_state_end_forward"),
  });
  tvm.beginScope();
  m.kv = tvm.detachFromCurrentScope(m.fn("create_tir_paged_kv_cache")(
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
  return { header: { shapes: [shape], seconds: (performance.now() - t0) / 1e3 }, bytes: [Buffer.from(values.buffer)] };
}

const [wasmPath, pkg] = process.argv.slice(2);
const m = await load(wasmPath, pkg);
await serve({ ready: true, context_window_size: m.meta.context_window_size }, (req) => run(m, req));
