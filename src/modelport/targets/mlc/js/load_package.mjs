// Loads an MLC model library and its package into TVM's web runtime (@mlc-ai/web-runtime) in Node:
// the wasm module on the CPU device, a VM, the library's _metadata, and the parameters read from the
// package's tensor-cache.json by the names _metadata lists (the lookup WebLLM does, on the CPU).
// Shared by node_runner.mjs (embeddings) and lm_runner.mjs (chat).
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
export const tvmjs = require("@mlc-ai/web-runtime");
export const log = (...a) => process.stderr.write(a.join(" ") + "\n");

// -> { tvm, dev, vm, meta, params, fn(name) }; everything detached from the runtime's scopes.
export async function loadPackage(wasmPath, pkg) {
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
  const params = tvm.detachFromCurrentScope(tvm.makeTVMArray(meta.params.map((p) => byName.get(p.name))));
  tvm.endScope();
  const fn = (name) => {
    tvm.beginScope();
    const f = tvm.detachFromCurrentScope(vm.getFunction(name));
    tvm.endScope();
    return f;
  };
  return { tvm, dev, vm, meta, params, fn };
}

// The runners' protocol: write `ready` as one JSON line, then per stdin line (a JSON request) one JSON
// header line and the reply's bytes (`handle(request)` -> {header, bytes: [Buffer...]}), or {"error"}.
export async function serve(ready, handle) {
  process.stdout.write(JSON.stringify(ready) + "\n");
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    let reply;
    try {
      reply = handle(JSON.parse(line));
    } catch (e) {
      reply = { header: { error: String((e && e.stack) || e).slice(0, 2000) }, bytes: [] };
    }
    process.stdout.write(JSON.stringify(reply.header) + "\n");
    for (const b of reply.bytes) process.stdout.write(b);
  }
}
