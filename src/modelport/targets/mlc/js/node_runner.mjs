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
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const tvmjs = require("@mlc-ai/web-runtime");
const log = (...a) => process.stderr.write(a.join(" ") + "\n");

async function load(wasmPath, pkg) {
  const buf = fs.readFileSync(wasmPath);
  const wasm = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const tvm = await tvmjs.instantiate(wasm, tvmjs.createPolyfillWASI(), log);
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
  const params = tvm.detachFromCurrentScope(tvm.makeTVMArray(meta.params.map((p) => byName.get(p.name))));
  const encode = tvm.detachFromCurrentScope(vm.getFunction("encode"));
  tvm.endScope();
  return { tvm, dev, params, encode };
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
process.stdout.write(JSON.stringify({ ready: true }) + "\n");
for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let reply;
  try {
    reply = run(m, JSON.parse(line));
  } catch (e) {
    reply = { header: { error: String((e && e.stack) || e).slice(0, 2000) }, bytes: [] };
  }
  process.stdout.write(JSON.stringify(reply.header) + "\n");
  for (const b of reply.bytes) process.stdout.write(b);
}
