"""`zoomorph pack RUN -o NAME.zoomorph`: a trained run as one file to hand on (docs/packing.md).

The file is a zip, read by zoomorph.packed, of flat members:

    config.json            the run's config: model, head, classes, image size, fov, data, split hash, recipe
    model.safetensors      the weights (tensors only, no pickle), recording the image size they were trained at
    preprocessing.json     what an image must become before the network sees it, and what comes out
    summary.json, history.csv, metrics.json   training's outcome and the evaluation, where the run has them
    model.onnx (+ .json)   the float32 graph (exported first when missing), model.int8.onnx when exported
    MODEL_CARD.md          the model card (zoomorph.card)
    manifest.json          the sha256 and size of every other member

Packing the same run twice gives the same bytes: the members in a fixed order, each with a fixed date.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable

import safetensors.torch

import zoomorph
from zoomorph.card import model_card
from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.files import replace_atomically
from zoomorph.io.decode import AUTO, describe_fov
from zoomorph.packed import FORMAT, FORMAT_VERSION, MANIFEST, SUFFIX, sha256
from zoomorph.predict.onnx import exported
from zoomorph.runs import PACKED_WEIGHTS, RECORD, Run, RunConfig

PREPROCESSING = "preprocessing.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no packing time in the bytes


def pack_run(run: Run | str | Path, out: Path | None = None, *, onnx: bool = True,
             say: Callable[[str], object] | None = None) -> Path:
    """Write `run` (a run folder, or a packed file to repack) as one packed file; its path.

    `out` must end in .zoomorph (default: beside the run, RUN.zoomorph). `onnx`: export the float32 graph
    first when the run has none or a stale one, so the packed model predicts with onnxruntime as the run
    does; `say` hears about that export before it starts."""
    run = Run.of(run)
    run.check_cut()
    out = Path(out) if out is not None else run.source.parent / (run.name + SUFFIX)
    if out.suffix != SUFFIX:
        raise ZoomorphError(f"{out}: a packed model's name ends in {SUFFIX} (that is how predict, evaluate, serve "
                            "and export tell it from a run folder)")
    if run.packed is not None and out.resolve() == run.packed.resolve():
        raise ZoomorphError(f"{out} is the packed file being read: give another -o")
    if not run.weights_file.exists():
        raise InputNotFound(f"{run.weights_file}: no such file (the run has no trained weights: train it first)")
    if onnx:
        exported(run, say=say)
    members = _members(run)
    replace_atomically(out, lambda tmp: _write_zip(tmp, run, members))
    return out


def safetensors_weights(run: Run) -> bytes:
    """The run's weights as safetensors bytes; loading them through the run's config first checks they fit."""
    state = run.load_model("cpu").state_dict()
    tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}  # clone: no shared storage
    return safetensors.torch.save(tensors, metadata={RECORD: json.dumps({"image_size": run.config.image_size})})


def preprocessing(cfg: RunConfig) -> dict:
    """What an image must become before the network sees it, and what it answers: for readers of the ONNX
    graph without zoomorph."""
    return {
        "image_size": cfg.image_size, "fov": cfg.fov,
        **({"fov_auto": cfg.extra.get("fov_auto")} if cfg.fov == AUTO else {}),
        "crop": describe_fov(cfg.fov, cfg.image_size),
        "input": {"dtype": "uint8", "layout": "NHWC, RGB 0-255", "shape": ["batch", cfg.image_size, cfg.image_size, 3]},
        "normalisation": "pixels / 255 into [0, 1], no mean or std subtracted; the ONNX graph does this "
                         "itself (give it uint8)",
        "head": cfg.head, "classes": list(cfg.classes),
        "output": "class probabilities (softmax)" if cfg.head == "classes" else "cumulative vote fractions (37)",
    }


def _members(run: Run) -> dict[str, bytes]:
    weights = safetensors_weights(run)
    members = {run.config_file.name: run.config_file.read_bytes(), PACKED_WEIGHTS: weights,
               PREPROCESSING: _json(preprocessing(run.config))}
    for path in (run.summary_file, run.history_file):
        if path.exists():
            members[path.name] = path.read_bytes()
    metrics = run.metrics()
    if metrics is not None:
        members[run.metrics_file.name] = _json(metrics)
    for int8 in (False, True):
        if run.graph_is_current(int8):
            graph = run.graph_file(int8)
            # the graph was made from these tensors: its sidecar names the packed weights' digest
            meta = json.loads(run.graph_sidecar(int8).read_text()) | {"weights_sha256": sha256(weights)}
            members[graph.name], members[run.graph_sidecar(int8).name] = graph.read_bytes(), _json(meta)
    members[run.card_file.name] = model_card(run).encode()
    return members


def _json(value) -> bytes:
    return json.dumps(value, indent=2).encode()


def _write_zip(path: Path, run: Run, members: dict[str, bytes]) -> None:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoomorph": zoomorph.__version__,
                "run": run.name, "source_weights_sha256": run.weights_digest,
                "members": {name: {"sha256": sha256(data), "size": len(data)} for name, data in members.items()}}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {MANIFEST: _json(manifest), **members}.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, data)


def describe(run: Run | str | Path) -> str:
    """What `zoomorph info` prints: the model card (a run folder's MODEL_CARD.md, or one made now for a run
    that has none; a packed file's own card) and, for a packed file, what it holds and that it was checked."""
    run = Run.of(run)
    if run.packed is None:
        return run.card_file.read_text(encoding="utf-8") if run.card_file.exists() else model_card(run)
    card = (run.dir / run.card_file.name).read_text(encoding="utf-8")
    manifest = json.loads((run.dir / MANIFEST).read_text())
    rows = "\n".join(f"| `{name}` | {entry['size']:,} | `{entry['sha256'][:16]}…` |"
                     for name, entry in manifest["members"].items())
    evaluated = (f"\n- Evaluated here: `{run.card_file}` is the card refreshed by that evaluation."
                 if run.card_file.exists() else "")
    return (f"{card}\n\n## The packed file\n\n- `{run.packed}`: sha256 `{run.dir.name}`, packed by zoomorph "
            f"{manifest.get('zoomorph')}; every member matches the sha256 its manifest gives (checked now).\n"
            f"- Opened from `{run.dir}` (read-only); what commands derive from it goes to `{run.out_dir}`."
            f"{evaluated}\n\n| member | bytes | sha256 |\n| --- | ---: | --- |\n{rows}\n")
