"""WebLLM's conversation template, derived from a chat template and checked by rebuilding prompts the
way web-llm 0.2.86 does (no TVM needed)."""

from __future__ import annotations

import pytest

from modelport.errors import ModelportError
from modelport.targets.mlc.decoder import conv_template, webllm_prompt

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class Tok:
    """apply_chat_template of a Jinja template (what transformers does, without a vocabulary)."""

    def __init__(self, template: str) -> None:
        import jinja2

        self.template = jinja2.Environment().from_string(template)

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_chatml_decomposes_into_roles_and_separators() -> None:
    template, notes = conv_template(Tok(CHATML), [7])
    assert template["roles"] == {"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}
    assert template["seps"] == ["<|im_end|>\n", "<|im_end|>\n"]
    assert template["system_template"] == "<|im_start|>system\n{system_message}<|im_end|>\n"
    assert template["system_message"] == "" and not template["render_empty_system_message"]
    assert template["stop_token_ids"] == [7] and notes == []
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "More?")]
    assert "".join(webllm_prompt(template, turns)) == Tok(CHATML).apply_chat_template(
        [{"role": r, "content": c} for r, c in turns], tokenize=False, add_generation_prompt=True)


def test_a_default_system_prompt_travels() -> None:
    qwen_like = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}"
                 "{% endif %}" + CHATML)
    template, _ = conv_template(Tok(qwen_like), [7])
    assert template["system_message"] == "You are helpful."
    assert "".join(webllm_prompt(template, [("user", "Hi")])).startswith("<|im_start|>system\nYou are helpful.")


def test_a_template_webllm_cannot_express_is_refused() -> None:
    # the turn counter in the text: WebLLM's fixed role strings cannot reproduce it
    numbered = ("{% for m in messages %}[{{ loop.index }}] {{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"
                "{% if add_generation_prompt %}[{{ messages|length + 1 }}] assistant: {% endif %}")
    with pytest.raises(ModelportError, match="no chat package"):
        conv_template(Tok(numbered), [7])


def test_a_base_model_gets_a_pass_through_template() -> None:
    from modelport.targets.mlc.decoder import plain_template

    template = plain_template([2])
    assert "".join(webllm_prompt(template, [("user", "Once upon a time")])) == "Once upon a time"
    assert template["stop_token_ids"] == [2]


def _recipe():
    from types import SimpleNamespace

    from modelport.recipes import ARCHITECTURES

    return SimpleNamespace(architecture=ARCHITECTURES["llama"], max_length=131072, vocab_size=512, hidden_size=128,
                           num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=32, tie_word_embeddings=False,
                           quirks=ARCHITECTURES["llama"].quirks)


def test_rope_types_webllm_packages_carry() -> None:
    from modelport.targets.mlc.decoder import MAX_CONTEXT, decoder_shape

    config = {"intermediate_size": 256, "rms_norm_eps": 1e-5}
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    shape = decoder_shape(config, _recipe(), llama3, "q4f16_1")
    assert shape.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert shape.dtype == "float16" and shape.group_quantized and shape.context_window_size == MAX_CONTEXT
    assert decoder_shape(config, _recipe(), {"rope_type": "default", "rope_theta": 1e4}, "f32").rope_scaling == {}
    with pytest.raises(ModelportError, match="rope type 'yarn' is not converted to WebLLM yet"):
        decoder_shape(config, _recipe(), {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "f32")
