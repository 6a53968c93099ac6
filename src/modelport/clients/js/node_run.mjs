// modelport client harness, Node: transformers.js (onnxruntime-node, CPU) on a local artifact folder.
//
//   node node_run.mjs request.json
//
// request.json, by task (the same two tasks, and the same core modules, as the browser page):
//   default (feature extraction, embed_core.mjs):
//     {model_dir, pooling, normalize, cases: [{name, texts}], runs: [{device, dtype, load?, cases: [names]}], out}
//     (load: {dtype, model_file_name} for a variant that is no transformers.js dtype, embed_core.loadOptions)
//     with mode 'model' (graphs that finish the embedding: AutoModel + AutoTokenizer, runEmbedModel):
//     also {outputs, probes: [pipeline poolings], bare_queries: [{text_id, text}]}
//   task 'text-generation' (decoders, generate_core.mjs):
//     {model_dir, task, steps, prompts: [{name, text, messages, add_special_tokens}], runs: [{device, dtype}], out}
// Writes {client, versions, runs: [...]} to `out`; progress goes to stderr.
// Nothing is fetched from the network: remote models are off and the model is a local folder.
import * as tf from '@huggingface/transformers';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runEmbedModel, runVariant } from './embed_core.mjs';
import { runGenerate } from './generate_core.mjs';

const { pipeline, env } = tf;
const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dir = path.resolve(req.model_dir);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;
env.localModelPath = path.dirname(dir) + path.sep;
const modelId = path.basename(dir);

/** One run of the request's task: a variant on a device. */
function runOne(run) {
  if (req.task === 'text-generation') {
    return runGenerate(pipeline, { modelId, device: run.device, dtype: run.dtype, prompts: req.prompts, steps: req.steps });
  }
  const cases = req.cases.filter((c) => run.cases.includes(c.name));
  if (req.mode === 'model') {
    return runEmbedModel(tf, { modelId, device: run.device, dtype: run.dtype, load: run.load, cases, outputs: req.outputs,
      probes: req.probes, bareQueries: req.bare_queries });
  }
  return runVariant(pipeline, { modelId, device: run.device, dtype: run.dtype, load: run.load, cases, pooling: req.pooling,
    normalize: req.normalize });
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ortNode = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules/onnxruntime-node/package.json'), 'utf8')).version;
const result = {
  client: 'node',
  versions: { node: process.version, 'transformers.js': env.version, 'onnxruntime-node': ortNode },
  runs: [],
};
for (const run of req.runs) {
  const t0 = performance.now();
  const r = await runOne(run);
  process.stderr.write(`node ${run.device} ${run.dtype}: ${r.status} (${((performance.now() - t0) / 1000).toFixed(1)}s)\n`);
  result.runs.push(r);
}
fs.writeFileSync(req.out, JSON.stringify(result));
