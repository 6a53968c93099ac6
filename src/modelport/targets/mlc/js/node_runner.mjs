// Runs an MLC package's wasm32 CPU model library in Node through TVM's web runtime
// (@mlc-ai/web-runtime), with the parameters read from the package's tensor-cache.json by the
// names in the library's _metadata: the same lookup WebLLM does, on the CPU instead of WebGPU.
//
// usage: node node_runner.mjs <model.wasm> <package dir>
// Protocol (one process serves many requests, so the module and weights load once):
//   stdin, one JSON line per request: {"shape": [b, s], "input_ids": [...], "attention_mask": [...]}
//   stdout, per request: one JSON line {"shapes": [[b,s,h], [b,h], [b,s,h]], "seconds": t} (or
//   {"error": "..."}), then the float32 little-endian bytes of encode's three outputs:
//   last_hidden_state, sentence_embedding, and the tensor prefill returns (WebLLM reads row 0).
import { loadPackage, serve } from "./load_package.mjs";

async function load(wasmPath, pkg) {
  const m = await loadPackage(wasmPath, pkg);
  return { ...m, encode: m.fn("encode") };
}

function run(m, req) {
  const { tvm, dev } = m;
  const [b, s] = req.shape;
  tvm.beginScope();
  try {
    const ids = tvm.empty([b * s], "int32", dev).copyFrom(Int32Array.from(req.input_ids)).view([b, s]);
    const mask = tvm.empty([b * s], "int32", dev).copyFrom(Int32Array.from(req.attention_mask)).view([b, s]);
    const t0 = performance.now();
    const out = m.encode(ids, mask, m.params);
    const seconds = (performance.now() - t0) / 1e3;
    const tensors = [0, 1, 2].map((i) => out.get(i));
    const header = { shapes: tensors.map((t) => t.shape), seconds };
    const bytes = tensors.map((t) => Buffer.from(t.toArray().buffer));
    return { header, bytes };
  } finally {
    tvm.endScope();
  }
}

const [wasmPath, pkg] = process.argv.slice(2);
const m = await load(wasmPath, pkg);
await serve({ ready: true }, (req) => run(m, req));
