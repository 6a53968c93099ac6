// One variant of a modelport decoder artifact through transformers.js's `text-generation` pipeline.
//
// Shared by the Node harness (node_run.mjs) and the browser page (page.html), so both run the
// same code. Each golden prompt goes through the real pipeline call users make: a plain prompt as
// a string, the chat prompt as messages (the pipeline renders the chat template itself). Greedy,
// `max_new_tokens` = `min_new_tokens` = steps: transformers.js's MinNewTokensLengthLogitsProcessor
// sets EOS to -Infinity until then, which is the golden's "EOS masked" greedy decode.
//
// The model's generate() is tapped, not replaced, to return what the pipeline fed it (token ids:
// tokenizer and chat-template parity with Python) and the generated ids.

function errorText(e) {
  return String((e && (e.stack || e.message)) || e).slice(0, 1500);
}

/** A [1, n] int64 tensor (or a nested array) as a plain array of numbers. */
function ids(t) {
  if (t && t.data) return Array.from(t.data, Number);
  return Array.from(t.flat ? t.flat(Infinity) : t, Number);
}

/**
 * Load `modelId` with `dtype` on `device`, generate for every prompt; returns a JSON-able record.
 * prompts: [{name, text, messages|null, add_special_tokens}]; a failure becomes {status: 'error'}.
 */
export async function runGenerate(pipeline, { modelId, device, dtype, prompts, steps }) {
  const record = { device, dtype, status: 'ok', prompts: [] };
  let generator;
  try {
    const t0 = performance.now();
    generator = await pipeline('text-generation', modelId, { device, dtype });
    record.load_s = (performance.now() - t0) / 1000;
  } catch (e) {
    return { ...record, status: 'error', stage: 'load', reason: errorText(e) };
  }
  try {
    let tap = null;
    const generate = generator.model.generate.bind(generator.model);
    generator.model.generate = async (kwargs) => {
      const out = await generate(kwargs);
      tap = { inputs: kwargs.inputs ?? kwargs.input_ids, sequences: out.sequences ?? out };
      return out;
    };
    const t1 = performance.now();
    for (const p of prompts) {
      tap = null;
      const tp = performance.now();
      const input = p.messages ? p.messages : p.text;
      const options = { max_new_tokens: steps, min_new_tokens: steps, do_sample: false };
      if (!p.messages) options.add_special_tokens = p.add_special_tokens;
      const out = await generator(input, options);
      if (!tap) throw new Error(`prompt ${p.name}: the pipeline did not call model.generate`);
      const fed = ids(tap.inputs);
      const all = ids(tap.sequences);
      const generated = out[0].generated_text;
      record.prompts.push({
        name: p.name,
        input_ids: fed,
        tokens: all.slice(fed.length),
        text: Array.isArray(generated) ? generated.at(-1).content : generated,
        seconds: (performance.now() - tp) / 1000,
      });
    }
    record.run_s = (performance.now() - t1) / 1000;
  } catch (e) {
    record.status = 'error';
    record.stage = 'run';
    record.reason = errorText(e);
  } finally {
    try { await generator.dispose(); } catch { /* a failed session may not dispose cleanly */ }
  }
  return record;
}
