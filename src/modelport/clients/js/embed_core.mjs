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

function errorText(e) {
  return String((e && (e.stack || e.message)) || e).slice(0, 1500);
}

/**
 * Load `modelId` with `dtype` on `device` and run every case; returns a JSON-able record.
 * A load or run failure becomes {status: 'error'} so one bad variant never hides the others.
 */
export async function runVariant(pipeline, { modelId, device, dtype, cases, pooling, normalize }) {
  const record = { device, dtype, status: 'ok', cases: [] };
  if (!(pooling in POOLING)) return { ...record, status: 'error', reason: `unsupported pooling ${pooling}` };
  let extractor;
  try {
    const t0 = performance.now();
    extractor = await pipeline('feature-extraction', modelId, { device, dtype });
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
      if (!tap || !tap.hidden) throw new Error(`case ${c.name}: the model returned no last_hidden_state`);
      record.cases.push({
        name: c.name,
        input_ids: rows(tap.inputs.input_ids),
        attention_mask: rows(tap.inputs.attention_mask),
        token_type_ids: tap.inputs.token_type_ids ? rows(tap.inputs.token_type_ids) : null,
        hidden: packFloat32(tap.hidden, 'last_hidden_state'),
        pooled: packFloat32(pooled, 'pipeline output'),
        seconds: (performance.now() - tc) / 1000,
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
