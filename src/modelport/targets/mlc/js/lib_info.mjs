// Loads a model library with TVM's web runtime (no GPU needed: the system lib, the Relax VM and
// _metadata run on the CPU) and prints what WebLLM looks up: _metadata and the prefill function.
//   node lib_info.mjs <model.wasm>   -> {"metadata": {...}, "functions": {"prefill": true, ...}}
import fs from "node:fs";
import { createRequire } from "node:module";

const tvmjs = createRequire(import.meta.url)("@mlc-ai/web-runtime");
const buf = fs.readFileSync(process.argv[2]);
const tvm = await tvmjs.instantiate(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength),
                                    tvmjs.createPolyfillWASI(), (...a) => process.stderr.write(a.join(" ") + "\n"));
tvm.beginScope();
const vm = tvm.createVirtualMachine(tvm.cpu());
const has = (name) => { try { vm.getFunction(name); return true; } catch { return false; } };
const metadata = JSON.parse(vm.getFunction("_metadata")().toString());
console.log(JSON.stringify({ metadata, functions: { prefill: has("prefill"), encode: has("encode"), _metadata: true } }));
tvm.endScope();
