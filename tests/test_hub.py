"""Hub side, fully offline: fetch / cache / convert from a hub id / publish / model cards, against tests/fakehub.py.

The fake hub (127.0.0.1, a thread in this process) serves a repo built from the tiny XLM-R model plus
files modelport must never download (pickle, Flax, TF, ONNX). huggingface_hub is pointed at it with
its cache under a temporary HF_HOME; no request can reach huggingface.co (ENDPOINT is the fake's).
One artifact is converted from the hub id (onnx, fp32) and shared by the publish and card tests.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelport import hub as hub_mod
from modelport import manifest, modelcard, tiny
from modelport.cli import main
from modelport.fsutil import write_json

from .fakehub import FakeHub, point_huggingface_hub_at

REPO = "modelport-test/tiny-xlm-roberta"
PICKLE_REPO = "modelport-test/pickle-only"
TOKEN = "hf_test_write_token"
CARD = b"---\nlicense: mit\nlanguage: en\n---\n# tiny XLM-R\n"
NEVER = {"pytorch_model.bin": b"pickle", "model.pt": b"pickle", "flax_model.msgpack": b"flax",
         "tf_model.h5": b"tf", "onnx/model.onnx": b"onnx", "onnx/config.json": b"{}", "1_Pooling/weights.bin": b"x"}
PUBLISH_TO = "someone/tiny-xlm-roberta-onnx"


@pytest.fixture(scope="module")
def fakehub() -> Any:
    with FakeHub(tokens=(TOKEN,)) as fake:
        model = tiny.materialize("tiny-xlm-roberta")
        fake.sha = fake.add_dir(REPO, model, extra={"README.md": CARD, **NEVER})
        fake.expected = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()} | {"README.md"}
        fake.add_repo(PICKLE_REPO, {"config.json": (model / "config.json").read_bytes(), "pytorch_model.bin": b"x"})
        yield fake


def online(mp: pytest.MonkeyPatch, fake: FakeHub, home: Path, token: str | None = TOKEN) -> None:
    point_huggingface_hub_at(mp, endpoint=fake.url, hf_home=home, offline=False, token=token)
    fake.clear_log()


def offline(mp: pytest.MonkeyPatch, fake: FakeHub, home: Path) -> None:
    point_huggingface_hub_at(mp, endpoint=fake.url, hf_home=home, offline=True)
    fake.clear_log()


def snapshot_dir(home: Path, repo: str, sha: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / sha


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- fetch and the cache ----------------------------------------------------------------------------

def test_fetch_downloads_only_what_a_conversion_reads(fakehub, tmp_path, monkeypatch, capsys) -> None:
    online(monkeypatch, fakehub, tmp_path)
    assert main(["fetch", REPO]) == 0
    err = capsys.readouterr().err
    assert fakehub.sha in err and "downloaded" in err
    snap = snapshot_dir(tmp_path, REPO, fakehub.sha)
    assert set(files_under(snap)) == fakehub.expected  # no *.bin/*.pt/*.msgpack/*.h5/onnx
    assert {r.path.rsplit(fakehub.sha + "/", 1)[1] for r in fakehub.resolve_requests("GET")} == fakehub.expected
    assert (snap.parent.parent / "refs" / "main").read_text() == fakehub.sha  # the branch is pinned to a commit
    assert fakehub.unexpected == []


def test_second_fetch_downloads_nothing(fakehub, tmp_path, monkeypatch, capsys) -> None:
    online(monkeypatch, fakehub, tmp_path)
    assert main(["fetch", REPO]) == 0
    fakehub.clear_log()
    assert main(["fetch", REPO]) == 0  # asks which commit main is now: one model-info call, no file request
    assert "nothing downloaded" in capsys.readouterr().err
    assert fakehub.resolve_requests() == []
    assert [r.path for r in fakehub.requests] == [f"/api/models/{REPO}/revision/main"]
    fakehub.clear_log()
    assert main(["fetch", f"{REPO}@{fakehub.sha}"]) == 0  # a commit never changes: no request at all
    assert fakehub.requests == []


def test_offline_uses_the_cache_and_says_what_to_do_when_it_misses(fakehub, tmp_path, monkeypatch, capsys) -> None:
    online(monkeypatch, fakehub, tmp_path / "warm")
    assert main(["fetch", REPO]) == 0
    offline(monkeypatch, fakehub, tmp_path / "warm")
    assert main(["fetch", REPO]) == 0
    assert fakehub.sha in capsys.readouterr().err
    offline(monkeypatch, fakehub, tmp_path / "cold")
    assert main(["fetch", REPO]) == 2
    err = capsys.readouterr().err
    assert f"{REPO} is not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err
    assert f"`modelport fetch {REPO}` on a machine with hub access" in err
    out = tmp_path / "artifact"
    assert main(["convert", REPO, "--target", "onnx", "--variants", "fp32", "--out", str(out)]) == 2
    assert "is not in the Hugging Face cache" in capsys.readouterr().err and not out.exists()
    assert fakehub.requests == []


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelport", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_environment_is_respected_in_a_fresh_process(fakehub, tmp_path, monkeypatch) -> None:
    """HF_HOME / HF_HUB_OFFLINE / HF_ENDPOINT as a user sets them, read when huggingface_hub is imported."""
    online(monkeypatch, fakehub, tmp_path / "home")
    assert main(["fetch", REPO]) == 0
    offline(monkeypatch, fakehub, tmp_path / "home")
    hit = run_cli(dict(os.environ), "fetch", REPO)
    assert hit.returncode == 0 and fakehub.sha in hit.stderr, hit.stderr
    cold = dict(os.environ, HF_HOME=str(tmp_path / "cold"))
    miss = run_cli(cold, "fetch", f"{REPO}@main")
    assert miss.returncode == 2 and "not in the Hugging Face cache" in miss.stderr, miss.stderr
    assert "Traceback" not in miss.stderr
    assert fakehub.requests == []


@pytest.mark.parametrize("spec, message", [
    (f"{REPO}@no-such-branch", "revision 'no-such-branch' not found in " + REPO),
    ("modelport-test/missing", "hub model modelport-test/missing not found"),
    (PICKLE_REPO, "has no *.safetensors weights: modelport never downloads pickle weights"),
    ("org/has space", "bad hub id"),
    ("a/b/c", "bad hub id"),
    (f"{REPO}@", "bad revision"),
])
def test_bad_hub_input_is_one_clear_line(fakehub, tmp_path, monkeypatch, capsys, spec, message) -> None:
    online(monkeypatch, fakehub, tmp_path)
    assert main(["fetch", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    never = [r.path for r in fakehub.resolve_requests() if r.path.endswith((".bin", ".pt", ".msgpack", ".h5", ".onnx"))]
    assert never == []  # no pickle or foreign weights, ever


def test_unreachable_hub_and_nothing_cached(tmp_path, monkeypatch, capsys) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_huggingface_hub_at(monkeypatch, endpoint=dead, hf_home=tmp_path, offline=False)
    assert main(["fetch", REPO]) == 3  # the environment (worth a retry), not the input
    err = capsys.readouterr().err
    assert f"cannot reach the Hugging Face hub at {dead} and {REPO} is not in the cache" in err, err


def test_models_lists_recipes_and_cached_hub_models(fakehub, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    online(monkeypatch, fakehub, tmp_path)
    assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert "tiny-xlm-roberta" in err and "all-minilm-l6-v2" in err and REPO not in err
    assert main(["fetch", REPO]) == 0
    capsys.readouterr()
    assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert REPO in err and f"{fakehub.sha[:12]} (main)" in err
    assert [m.repo_id for m in hub_mod.cached_models()] == [REPO]


def test_a_local_directory_wins_over_a_hub_id(tmp_path, monkeypatch) -> None:
    from modelport.source import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("org/name") and is_hub_id("org/name@v1.0")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")
    assert not is_hub_id("./org/name") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    assert not is_hub_id("tiny-xlm-roberta")


# --- convert from a hub id ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def hub_artifact(fakehub, hub_home, tmp_path_factory) -> Path:
    """`modelport convert <hub id>` on a cold cache: resolves, downloads, converts (onnx fp32), validates."""
    out = tmp_path_factory.mktemp("artifacts") / "tiny-onnx"
    with pytest.MonkeyPatch.context() as mp:
        online(mp, fakehub, hub_home)
        assert main(["convert", REPO, "--target", "onnx", "--variants", "fp32", "--out", str(out)]) == 0
        assert len(fakehub.resolve_requests("GET")) == len(fakehub.expected)
        assert fakehub.unexpected == []
    return out


def test_convert_records_the_resolved_commit(hub_artifact, hub_home, fakehub, monkeypatch) -> None:
    source = manifest.load(hub_artifact)["source"]
    assert source["revision"] == fakehub.sha
    assert source["origin"] == f"hf:{REPO}@main" and source["hub_id"] == REPO
    assert source["license"] == "mit"  # from the source repo's model card
    assert source["path"] == str(snapshot_dir(hub_home, REPO, fakehub.sha))
    # A later conversion resolves from the cache: offline, no request.
    from modelport.source import resolve

    offline(monkeypatch, fakehub, hub_home)
    again = resolve(REPO)
    assert again.revision == fakehub.sha and again.hub_id == REPO and fakehub.requests == []


# --- publish -----------------------------------------------------------------------------------------

@pytest.fixture()
def artifact_copy(hub_artifact: Path, tmp_path: Path) -> Path:
    """A hard-linked copy to break; files are replaced (unlink + write), never written in place."""
    dst = tmp_path / "artifact"
    shutil.copytree(hub_artifact, dst, copy_function=os.link)
    return dst


def expected_upload(artifact: Path) -> set[str]:
    return set(manifest.load(artifact)["files"]) | {"manifest.json", "README.md"}


def test_dry_run_writes_exactly_the_upload_and_sends_nothing(hub_artifact, fakehub, tmp_path, monkeypatch,
                                                             capsys) -> None:
    online(monkeypatch, fakehub, tmp_path / "home", token=None)  # a dry run needs no token
    out = tmp_path / "dry"
    assert main(["publish", str(hub_artifact), "--repo", PUBLISH_TO, "--dry-run", str(out)]) == 0
    assert "nothing uploaded" in capsys.readouterr().err
    written = files_under(out)
    assert set(written) == expected_upload(hub_artifact)
    for name, data in written.items():
        if name != "README.md":
            assert data == (hub_artifact / name).read_bytes(), name
            assert os.stat(out / name).st_ino != os.stat(hub_artifact / name).st_ino  # copies, not links
    man = manifest.load(hub_artifact)
    assert written["README.md"].decode() == modelcard.render(man, PUBLISH_TO)
    assert fakehub.requests == []
    assert main(["publish", str(hub_artifact), "--repo", PUBLISH_TO, "--dry-run", str(out)]) == 2  # no clobbering


def test_publish_uploads_the_artifact_files_and_the_card(hub_artifact, fakehub, tmp_path, monkeypatch,
                                                         capsys) -> None:
    online(monkeypatch, fakehub, tmp_path / "home")
    assert main(["publish", str(hub_artifact), "--repo", PUBLISH_TO, "--private"]) == 0
    assert f"published {len(expected_upload(hub_artifact))} files to {PUBLISH_TO}" in capsys.readouterr().err
    repo = fakehub.repos[PUBLISH_TO]
    received = fakehub.head(PUBLISH_TO)
    assert set(received) == expected_upload(hub_artifact)
    for name, data in received.items():
        if name != "README.md":
            assert data == (hub_artifact / name).read_bytes(), name
    assert received["README.md"].decode() == modelcard.render(manifest.load(hub_artifact), PUBLISH_TO)
    assert repo.private and len(repo.log) == 1 and set(repo.log[0]["added"]) == expected_upload(hub_artifact)
    # Binary files went through the LFS protocol (batch, PUT, verify), the rest inline in the commit.
    puts = {r.path for r in fakehub.requests if r.method == "PUT"}
    assert len(puts) == sum(1 for n in received if n.endswith((".onnx", ".npz"))) >= 2
    writes = [r for r in fakehub.requests if r.method == "POST" and "validate-yaml" not in r.path]
    assert writes and all(r.authorization == f"Bearer {TOKEN}" for r in writes)
    assert fakehub.unexpected == []
    # Publishing again updates the existing repo (create_repo answers 409, accepted).
    assert main(["publish", str(hub_artifact), "--repo", PUBLISH_TO]) == 0
    assert len(repo.log) == 2 and set(fakehub.head(PUBLISH_TO)) == expected_upload(hub_artifact)


def test_publish_without_a_token_says_how_to_get_one(hub_artifact, fakehub, tmp_path, monkeypatch, capsys) -> None:
    online(monkeypatch, fakehub, tmp_path / "home", token=None)
    assert main(["publish", str(hub_artifact), "--repo", PUBLISH_TO]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert fakehub.requests == []


def set_validation(root: Path, change: Any) -> None:
    man = manifest.load(root)
    change(man["validation"])
    write_json(root / "manifest.json", man)  # atomic replace: a new file, the linked original is untouched


def replace_file(root: Path, name: str, data: bytes) -> None:
    (root / name).unlink()
    (root / name).write_bytes(data)


@pytest.mark.parametrize("breakage, message", [
    (lambda a: set_validation(a, lambda v: v.update(status="fail",
                                                    variants={"fp32": {**v["variants"]["fp32"], "verdict": "fail"}})),
     "validation failed for fp32"),
    (lambda a: set_validation(a, lambda v: (v.clear(), v.update(status="not-run"))), "validation was not run"),
    (lambda a: set_validation(a, lambda v: v["variants"].pop("fp32")), "fp32 have no passing validation"),
    (lambda a: replace_file(a, "config.json", b"{}"), "modified: config.json"),
    (lambda a: (a / "onnx" / "model.onnx").unlink(), "missing: onnx/model.onnx"),
    (lambda a: (a / "extra.txt").write_text("x"), "not in manifest: extra.txt"),
])
def test_publish_refuses_an_unproven_artifact(artifact_copy, fakehub, tmp_path, monkeypatch, capsys, breakage,
                                              message) -> None:
    online(monkeypatch, fakehub, tmp_path / "home")
    breakage(artifact_copy)
    for extra in ([], ["--dry-run", str(tmp_path / "dry")]):
        assert main(["publish", str(artifact_copy), "--repo", "someone/broken", *extra]) == 2
        err = capsys.readouterr().err
        assert "refusing to publish" in err and message in err, err
    assert fakehub.requests == [] and not (tmp_path / "dry").exists()


def test_publish_rejects_a_bad_repo_id(hub_artifact, capsys) -> None:
    assert main(["publish", str(hub_artifact), "--repo", "no-namespace", "--dry-run", "/nonexistent/x"]) == 2
    assert "bad --repo 'no-namespace'" in capsys.readouterr().err


# --- model cards -------------------------------------------------------------------------------------

def front_matter(card: str) -> dict[str, Any]:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_card_for_an_onnx_artifact(hub_artifact, fakehub) -> None:
    man = manifest.load(hub_artifact)
    card = modelcard.render(man, PUBLISH_TO)
    assert front_matter(card) == {"license": "mit", "base_model": REPO, "library_name": "transformers.js",
                                  "pipeline_tag": "feature-extraction", "tags": ["modelport", "onnx", "fp32"]}
    # Usage: the transformers.js pipeline with the artifact's dtype and the model's own pooling (CLS here).
    assert f'pipeline("feature-extraction", "{PUBLISH_TO}", {{ dtype: "fp32", device: "webgpu" }})' in card
    assert 'pooling: "cls", normalize: true' in card and "[1, 64]" in card
    # Validation table: the manifest's own figures, the gate, and the variant's size.
    m = man["validation"]["variants"]["fp32"]["metrics"]
    size = man["files"]["onnx/model.onnx"]["bytes"]
    row = (f"| fp32 | fp32 | pass | {size / 1e6:.1f} MB | {m['tokens_max_abs']:.1e} | {m['pooled_max_abs']:.1e} | "
           f"{m['cos_min']:.6f} | {m['cos_mean']:.6f} | {m['top5_mean']:.2f} | max_abs 1e-05 |")
    assert row in card, card
    digest = man["files"]["onnx/model.onnx"]["sha256"][:16]
    assert f"| `onnx/model.onnx` | {size / 1e6:.1f} MB | `{digest}…` |" in card
    # Reproduce: pinned fetch, the exact command, how it was built.
    assert f"modelport fetch {REPO}@{fakehub.sha}" in card
    assert shlex.join(man["command"]) in card and "Converted natively" in card


def synthetic(man: dict[str, Any], target: str, variants: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The real manifest, re-labelled as another target: the card must follow whatever the manifest says."""
    fp32 = man["validation"]["variants"]["fp32"]
    files = {f: {"sha256": "ab" * 32, "bytes": 1000 + i} for i, f in enumerate(variants.values())}
    return {**man, "target": {"name": target, "variants": {v: {"file": f, "precision": "fp32"}
                                                          for v, f in variants.items()}, **extra},
            "validation": {**man["validation"], "variants": {v: {**fp32, "variant": v} for v in variants}},
            "files": files}


def test_cards_for_other_targets_come_from_the_same_table(hub_artifact) -> None:
    man = manifest.load(hub_artifact)
    mlx = synthetic(man, "mlx", {"f32": "f32/model.safetensors", "q4": "q4/model.safetensors"})
    mlx["images"] = {"convert": "modelport/mlx:0.1.0@sha256:" + "1" * 64,
                     "validate": "modelport/validator:0.1.0@sha256:" + "2" * 64}
    card = modelcard.render(mlx, "someone/x-mlx")
    meta = front_matter(card)
    assert meta["library_name"] == "mlx" and meta["tags"] == ["modelport", "mlx", "f32", "q4"]
    assert 'allow_patterns=["f32/*"]' in card and "emb = hidden[:, 0]" in card and "mx.linalg.norm" in card
    for step, ref in mlx["images"].items():
        assert f"| {step} | `{ref}` |" in card
    assert "| q4 | fp32 | pass | 1.0 kB |" in card

    coreml = synthetic(man, "coreml", {"fp32": "Model_fp32.mlpackage"})
    coreml["files"] = {"Model_fp32.mlpackage/Manifest.json": {"sha256": "cd" * 32, "bytes": 300},
                       "Model_fp32.mlpackage/Data/weight.bin": {"sha256": "ef" * 32, "bytes": 2_500_000}}
    card = modelcard.render(coreml, "someone/x-coreml")
    assert front_matter(card)["library_name"] == "coreml"
    assert '"input_ids": inputIds, "attention_mask": attentionMask' in card
    assert 'featureValue(for: "sentence_embedding")' in card and "| fp32 | fp32 | pass | 2.5 MB |" in card

    assert front_matter(modelcard.render(synthetic(man, "mlc", {"q4f16": "q4f16/params.bin"}), "s/x"))[
        "library_name"] == "mlc-llm"
    unknown = modelcard.render(synthetic(man, "tflite", {"fp32": "model.tflite"}), "s/x")
    assert "library_name" not in front_matter(unknown) and "## Usage" not in unknown and "## Validation" in unknown


def test_card_without_a_hub_source_claims_no_base_model(hub_artifact) -> None:
    man = manifest.load(hub_artifact)
    local = {**man, "source": {**man["source"], "hub_id": None, "license": None, "origin": "local:/models/x",
                               "path": "/nonexistent", "revision": None}}
    card = modelcard.render(local, "s/x")
    meta = front_matter(card)
    assert "base_model" not in meta and "license" not in meta
    assert "modelport fetch" not in card
    assert shlex.join(man["command"]) in card  # how it was made is still there
