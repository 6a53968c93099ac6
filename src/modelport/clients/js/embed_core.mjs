// One variant of a modelport ONNX artifact through transformers.js's `feature-extraction` pipeline.
//
// Shared by the Node harness (node_run.mjs) and the browser page (page.html), so both clients run
// exactly the same code; only how `pipeline` is imported differs. The caller configures `env`
// (remote loading off, local model path, local wasm files) before calling runVariant.
//
// Every validation case goes through the real pipeline call users make
// (`extractor(texts, { pooling, normalize })`). The model's forward is tapped, not replaced, to
// also return what the pipeline fed the model (token ids, attention mask: tokenizer parity) and the
// raw last_hidden_state (token-level comparison with the golden outputs). Float arrays travel as
// base64 of their float32 bytes: exact, and ~4x smaller than JSON numbers.

const POOLING = { mean: 'mean', cls: 'cls' };  // modelport recipe pooling -> transformers.js pooling

/** base64 of a typed array's bytes; btoa exists in browsers and in Node >= 16. */
export function toBase64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** A float32 tensor as {dims, b64}; anything else is a harness error (our artifacts keep fp32 io). */
function packFloat32(tensor, what) {
  if (tensor.type !== 'float32') throw new Error(`${what} is ${tensor.type}, expected float32 (fp32 graph io)`);
  return { dims: tensor.dims.map(Number), b64: toBase64(tensor.data) };
}

/** An int64 [batch, seq] tensor as nested plain arrays (small: token ids and masks). */
function rows(tensor) {
  const [b, s] = tensor.dims.map(Number);
  const out = [];
  for (let i = 0; i < b; i++) out.push(Array.from(tensor.data.subarray(i * s, (i + 1) * s), Number));
  return out;
}

/**
 * transformers.js options that load variant `dtype`: its own dtype name (the file suffix it implies),
 * or, for a variant that is no transformers.js dtype (modelport's searched q4mix), `load` =
 * {dtype, model_file_name}: e.g. dtype 'fp32' (no suffix) + model_file_name 'model_q4mix' ->
 * onnx/model_q4mix.onnx (transformers.js 4.x session_config / model-loader).
 */
export function loadOptions(device, dtype, load) {
  if (!load) return { device, dtype };
  return { device, dtype: load.dtype, model_file_name: load.model_file_name };
}

function errorText(e) {
  return String((e && (e.stack || e.message)) || e).slice(0, 1500);
}

/**
 * Load `modelId` with `dtype` on `device` and run every case; returns a JSON-able record.
 * A load or run failure becomes {status: 'error'} so one bad variant never hides the others.
 */
export async function runVariant(pipeline, { modelId, device, dtype, load, cases, pooling, normalize }) {
  const record = { device, dtype, status: 'ok', cases: [] };
  if (!(pooling in POOLING)) return { ...record, status: 'error', reason: `unsupported pooling ${pooling}` };
  let extractor;
  try {
    const t0 = performance.now();
    extractor = await pipeline('feature-extraction', modelId, loadOptions(device, dtype, load));
    record.load_s = (performance.now() - t0) / 1000;
  } catch (e) {
    return { ...record, status: 'error', stage: 'load', reason: errorText(e) };
  }
  try {
    let tap = null;
    const forward = extractor.model.forward.bind(extractor.model);
    extractor.model.forward = async (inputs) => {
      const outputs = await forward(inputs);
      tap = { inputs, hidden: outputs.last_hidden_state };
      return outputs;
    };
    const t1 = performance.now();
    for (const c of cases) {
      tap = null;
      const tc = performance.now();
      const pooled = await extractor(c.texts, { pooling: POOLING[pooling], normalize });
      const seconds = (performance.now() - tc) / 1000;  // the call alone (tokenize + run + pool): `modelport bench`
      if (!tap || !tap.hidden) throw new Error(`case ${c.name}: the model returned no last_hidden_state`);
      record.cases.push({
        name: c.name,
        input_ids: rows(tap.inputs.input_ids),
        attention_mask: rows(tap.inputs.attention_mask),
        token_type_ids: tap.inputs.token_type_ids ? rows(tap.inputs.token_type_ids) : null,
        hidden: packFloat32(tap.hidden, 'last_hidden_state'),
        pooled: packFloat32(pooled, 'pipeline output'),
        seconds,
      });
    }
    record.run_s = (performance.now() - t1) / 1000;
  } catch (e) {
    record.status = 'error';
    record.stage = 'run';
    record.reason = errorText(e);
  } finally {
    try { await extractor.dispose(); } catch { /* a failed session may not dispose cleanly */ }
  }
  return record;
}

// ---------------------------------------------------------------------------------------------------
// Models whose graph finishes the embedding itself (issue 15: last-token pooling, sentence-transformers
// Dense layers, Matryoshka truncation, BGE-M3's sparse / ColBERT outputs). The feature-extraction
// pipeline cannot express them (it pools last_hidden_state and normalizes, nothing more), so this runs
// what such a model's users run: AutoTokenizer + AutoModel, the artifact's own `sentence_embedding`
// (and extra outputs) read by name. The tokenizer pads on the side its tokenizer_config.json says
// (transformers.js reads `padding_side` from it); the side it used is returned and checked.
//
// In the same run it measures what a client would get that does NOT use the graph's final output
// (the "would have failed" probes), each through transformers.js's real code on the same session:
//   pipeline_mean        FeatureExtractionPipeline({pooling: 'mean', normalize: true}): mean-pools
//                        last_hidden_state, skipping last-token pooling / the Dense layers
//   pipeline_last_token  ({pooling: 'last_token', normalize: true}), for last-token models: correct
//                        only when the tokenizer pads left and the model has no Dense layer / truncation
//   bare_queries         the graph's sentence_embedding of each query text without its prompt (alone)

const MODEL_OUTPUTS = ['last_hidden_state', 'sentence_embedding'];

/**
 * Load `modelId` with AutoModel (dtype, device) and run every case and probe; JSON-able record.
 * `tf` is the transformers.js module (AutoModel, AutoTokenizer, FeatureExtractionPipeline).
 */
export async function runEmbedModel(tf, { modelId, device, dtype, load, cases, outputs, probes, bareQueries }) {
  const record = { device, dtype, status: 'ok', mode: 'model', cases: [], probes: {} };
  let model;
  let tokenizer;
  try {
    const t0 = performance.now();
    tokenizer = await tf.AutoTokenizer.from_pretrained(modelId);
    model = await tf.AutoModel.from_pretrained(modelId, loadOptions(device, dtype, load));
    record.load_s = (performance.now() - t0) / 1000;
    record.padding_side = tokenizer.padding_side;
    record.model_class = model.constructor.name;
  } catch (e) {
    return { ...record, status: 'error', stage: 'load', reason: errorText(e) };
  }
  const wanted = outputs && outputs.length ? outputs : MODEL_OUTPUTS;
  try {
    const t1 = performance.now();
    for (const c of cases) {
      const tc = performance.now();
      const inputs = tokenizer(c.texts, { padding: true, truncation: true });
      const out = await model(inputs);
      const seconds = (performance.now() - tc) / 1000;  // the call alone (tokenize + run): `modelport bench`
      for (const name of wanted) {
        if (!out[name]) throw new Error(`case ${c.name}: the model returned no ${name} (outputs: ${Object.keys(out).join(', ')})`);
      }
      const extra = {};
      for (const name of wanted.filter((n) => !MODEL_OUTPUTS.includes(n))) extra[name] = packFloat32(out[name], name);
      record.cases.push({
        name: c.name,
        input_ids: rows(inputs.input_ids),
        attention_mask: rows(inputs.attention_mask),
        token_type_ids: inputs.token_type_ids ? rows(inputs.token_type_ids) : null,
        hidden: packFloat32(out.last_hidden_state, 'last_hidden_state'),
        pooled: packFloat32(out.sentence_embedding, 'sentence_embedding'),
        extra,
        seconds,
      });
    }
    record.run_s = (performance.now() - t1) / 1000;
    // The probes: the same session, through transformers.js's own pipeline code.
    const tp = performance.now();
    const extractor = new tf.FeatureExtractionPipeline({ task: 'feature-extraction', model, tokenizer });
    for (const pooling of probes || []) {
      const per = {};
      for (const c of cases) per[c.name] = packFloat32(await extractor(c.texts, { pooling, normalize: true }), `pipeline ${pooling}`);
      record.probes[`pipeline_${pooling}`] = per;
    }
    const ran = new Set(cases.map((c) => c.name));
    const queries = (bareQueries || []).filter((q) => ran.has(q.case));  // compared only where the prompted one ran
    if (queries.length) {
      const per = {};
      for (const q of queries) {
        const out = await model(tokenizer([q.text], { padding: true, truncation: true }));
        per[String(q.text_id)] = packFloat32(out.sentence_embedding, 'bare query sentence_embedding');
      }
      record.probes.bare_queries = per;
    }
    record.probes_s = (performance.now() - tp) / 1000;
  } catch (e) {
    record.status = 'error';
    record.stage = 'run';
    record.reason = errorText(e);
  } finally {
    try { await model.dispose(); } catch { /* a failed session may not dispose cleanly */ }
  }
  return record;
}
