"""Core ML quantization search (targets/coreml/quantize.py) and the searched variant palmix, on the
tiny XLM-R (fixed [1, 64]; its fp32 package is the shared one of tests/test_coreml.py).

The tiny model's random weights give nearly collinear embeddings, so even naive pal4 keeps 0.998
cosine on the dev texts: the search here runs with a stricter goal (cos 0.9999) so that only a
candidate with promoted weights meets it, and the test sees the promotion path chosen, written
from its plan and validated. MiniLM figures: benchmarks/quant_coreml.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport import manifest, milinterp
from modelport.cli import main
from modelport.quant.plan import Plan
from modelport.quant.search import Goal, SearchContext
from modelport.recipes import recipe_for
from modelport.source import resolve
from modelport.targets.coreml import encoder as coreml
from modelport.targets.coreml import quantize

from .conftest import convert

SHAPE = "fixed:64"
GOAL = "cos=0.9999,min=0.9999,top5=0.95"
DEV = 20  # of the 40 the search uses on real models: the same code path, half the interpreter time


@pytest.fixture(scope="module")
def fp32_artifact(shared_artifact) -> Path:
    return shared_artifact("tiny-xlm-roberta", "coreml", "fp32,fp16,w8,pal6,pal4", "--shape", SHAPE)


def _ctx(fp32: Path, work: Path) -> SearchContext:
    source = resolve("tiny-xlm-roberta")
    work.mkdir(parents=True, exist_ok=True)
    return SearchContext(source=source, recipe=recipe_for(source.path, source.config), goal=Goal.parse(GOAL),
                         fp32_dir=fp32, work=work, step=lambda _: None, quick=True)


@pytest.fixture(scope="module")
def searched(fp32_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    """(SearchResult, folder with search.json + plan-palmix.json) of a quick search."""
    root = tmp_path_factory.mktemp("coreml-search")
    result = quantize.search(_ctx(fp32_artifact, root / "work"), coreml.search_hooks(), dev_count=DEV)
    result.save(root / "search")
    return result, root / "search"


@pytest.fixture(scope="module")
def palmix(searched, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("palmix") / "a"
    assert convert("tiny-xlm-roberta", "-t", "coreml", "--variants", "palmix", "--shape", SHAPE,
                   "--quant-plan", str(searched[1]), "--out", str(out)) == 0
    return out


def test_sensitivity_ordering_is_deterministic(searched, fp32_artifact: Path, tmp_path: Path) -> None:
    """A fresh workbench (its own fp16 conversion and k-means tables) ranks the weights identically,
    losses included; every weight is ranked and the ranking is sorted, ties by name."""
    result, _ = searched
    bench = quantize.Workbench.build(_ctx(fp32_artifact, tmp_path), coreml.search_hooks(), dev_count=DEV,
                                     formats=(quantize.PAL4,))
    again = bench.sensitivity()
    assert again == result.sensitivity
    assert sorted(n for n, _ in again) == sorted(bench.shapes) and len(again) == 14  # 2 tables + 2 x 6 Linears
    assert again == sorted(again, key=lambda x: (-x[1], x[0]))
    assert again[0][1] > again[-1][1] > 0  # one weight at pal4 always costs something; not all the same


def test_search_chooses_a_mixed_plan(searched) -> None:
    """Naive pal4 misses the strict goal; the chosen palmix is the smallest searched candidate
    meeting it, a mix that gives the most sensitive weight more bits than the least sensitive."""
    result, folder = searched
    naive = next(c for c in result.candidates if c.name.startswith("pal4 (naive"))
    chosen = result.chosen[quantize.PALMIX]
    assert naive.baseline and not result.goal.met(naive.quality)
    assert not chosen.baseline and result.goal.met(chosen.quality) and chosen.size_bytes > naive.size_bytes
    assert all(not result.goal.met(c.quality) for c in result.candidates
               if not c.baseline and c.size_bytes < chosen.size_bytes)
    plan = Plan.load(folder / "plan-palmix.json")
    assert plan == chosen.plan and plan.target == "coreml"
    ranking = [n for n, _ in result.sensitivity]
    bits = {n: s.bits for n, s in quantize.layer_specs(plan, ranking).items()}
    assert bits[ranking[0]] == max(bits.values()) > min(bits.values()) == bits[ranking[-1]], bits


def test_palmix_validates_and_records_its_plan(palmix: Path, searched) -> None:
    result, folder = searched
    man = manifest.load(palmix)
    verdict = man["validation"]["variants"]["palmix"]
    assert verdict["verdict"] == "pass" and verdict["precision"] == "q4mix", verdict
    entry = man["target"]["variants"]["palmix"]
    plan = Plan.load(folder / "plan-palmix.json")
    assert entry["plan"] == plan.to_json() and entry["plan_sha256"] == plan.digest()
    assert "constexpr_lut_to_dense" in entry["ops"]
    estimate = result.chosen[quantize.PALMIX].size_bytes
    assert abs(entry["bytes"] - estimate) <= 0.01 * entry["bytes"], (entry["bytes"], estimate)
    assert "palmix" not in coreml.DEFAULT_VARIANTS


def test_search_scores_what_the_package_computes(palmix: Path, searched, fp32_artifact: Path) -> None:
    """The search swaps decompressed weights into the fp16 package; the written package (its own
    conversion, iOS16 palettes here) gives the same dev-set figures."""
    result, _ = searched
    source = resolve("tiny-xlm-roberta")
    recipe = coreml.adapt_recipe(recipe_for(source.path, source.config), SHAPE)
    feeds = quantize.dev_feeds(source, recipe, DEV)
    embed = coreml.sentence_embeddings
    dev = quantize.DevSet(feeds, embed(milinterp.Interpreter(fp32_artifact / "fp32/model.mlpackage"), feeds))
    got = dev.quality(embed(milinterp.Interpreter(palmix / "palmix/model.mlpackage"), feeds))
    want = result.chosen[quantize.PALMIX].quality
    assert got.cos_min == pytest.approx(want.cos_min, abs=1e-6) and got.top5 == want.top5
    assert got.cos_mean == pytest.approx(want.cos_mean, abs=1e-6)


def test_palmix_rebuilt_from_its_plan_is_byte_identical(palmix: Path, searched, tmp_path: Path) -> None:
    again = tmp_path / "b"
    plan_file = searched[1] / "plan-palmix.json"  # the single file works as well as the folder
    assert convert("tiny-xlm-roberta", "-t", "coreml", "--variants", "palmix", "--shape", SHAPE,
                   "--quant-plan", str(plan_file), "--skip-validation", "--out", str(again)) == 0
    files = {k: v for k, v in manifest.load(palmix)["files"].items() if k.startswith("palmix/")}
    assert files and files == {k: v for k, v in manifest.load(again)["files"].items() if k.startswith("palmix/")}


def test_palmix_needs_a_coreml_plan(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "x"
    assert main(["convert", "tiny-xlm-roberta", "-t", "coreml", "--variants", "palmix", "--out", str(out)]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and not out.exists()
    assert "variant palmix needs --quant-plan PLAN (write one with: modelport quantize-search" in errors[0]
    onnx_plan = tmp_path / "plan.json"
    Plan("onnx", default=quantize.W8).save(onnx_plan)
    assert main(["convert", "tiny-xlm-roberta", "-t", "coreml", "--variants", "palmix", "--quant-plan",
                 str(onnx_plan), "--out", str(out)]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "is a plan for the onnx target, not coreml" in errors[0]


def _error_lines(err: str) -> list[str]:
    """What the CLI said was wrong (the other stderr lines are the steps before the refusal)."""
    return [line for line in err.splitlines() if line.startswith("error")]


def test_the_search_compresses_what_the_fixed_variants_do() -> None:
    """quantize.py cannot import encoder.py (encoder writes palmix with it): the shared rules are
    repeated there and must stay equal, or the palmix grid would score other weights than pal4's."""
    assert quantize.COMPRESSED_OP_TYPES == coreml.COMPRESSED_OP_TYPES
    assert quantize.COMPRESSION_MIN_ELEMENTS == coreml.COMPRESSION_MIN_ELEMENTS
    assert quantize.W8_BLOCK == coreml.W8_BLOCK and quantize.PAL4.bits == coreml.PALETTE_BITS["pal4"]
