// onnxruntime-web (wasm backend, in Node) on token-id inputs, for benchmarks/mlc_vs_ort_web.py.
//   node bench_ort_web.mjs model.onnx request.json  -> {"seconds": [...per repeat], "threads": n}
// request.json: {"inputs": [{"input_ids": [...]}], "repeat": r, "threads": n}; batch 1, no padding,
// token_type_ids all 0. Timed: session.run only (as node_runner.mjs times the MLC library's call).
import fs from "node:fs";
import * as ort from "onnxruntime-web";

const [modelPath, requestPath] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(requestPath, "utf8"));
ort.env.wasm.numThreads = req.threads;
const session = await ort.InferenceSession.create(fs.readFileSync(modelPath), { executionProviders: ["wasm"] });
const feeds = req.inputs.map(({ input_ids }) => {
  const n = input_ids.length;
  const t = (data) => new ort.Tensor("int64", BigInt64Array.from(data, BigInt), [1, n]);
  return { input_ids: t(input_ids), attention_mask: t(Array(n).fill(1)), token_type_ids: t(Array(n).fill(0)) };
});
await session.run(feeds[0]);  // warm-up (kernel setup), not timed
const seconds = [];
for (let r = 0; r < req.repeat; r++) {
  let total = 0;
  for (const f of feeds) {
    const t0 = performance.now();
    await session.run(f);
    total += performance.now() - t0;
  }
  seconds.push(total / 1e3);
}
console.log(JSON.stringify({ seconds, threads: req.threads, "onnxruntime-web": ort.env.versions?.web || null }));
