"""How a model holds up away from the images it was trained on: the zoom check and the survey shifts.

Both predict through the same Predictor as evaluate and predict, and zoom with the same
`zoomorph.data.augment.zoom`:

* `zoom_robustness`, the quick check training runs at its end (summary.json's "zoom"): the cached,
  model-size validation images zoomed 0.5x-1.5x (`zoom_check_caption` says what that measures).
* `shifted_outputs`, the survey-shift suite of `evaluate --shifts` (evaluation.shifts.SHIFTS): each
  galaxy's source re-read at full resolution, transformed there, then cut as the run's decoder cuts
  (`zoomorph.io.decode.cut_arrays` with the run's field of view), a batch of galaxies at a time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from zoomorph.data.augment import zoom
from zoomorph.data.dataset import PreparedData
from zoomorph.errors import ZoomorphError
from zoomorph.evaluation.shifts import SHIFTS, Shift
from zoomorph.inference import Predictor
from zoomorph.io.decode import AUTO, KAGGLE_SIZE, Fov, cut_array, cut_arrays, decode
from zoomorph.io.fits import fits_rgb
from zoomorph.io.sources import ImageError, is_fits, read_bytes
from zoomorph.schema import ANSWER_COLUMNS

ZOOMS = (0.5, 0.75, 1.0, 1.5)
# Full-resolution frames transformed at once: 32 x 424 x 424 x 3 float32 = 69 MB, a few copies in flight.
SHIFT_BATCH = 32

Setting = tuple[Shift | None, float | None]  # (None, None): the untransformed frames, through the same path


def zoom_robustness(net: torch.nn.Module, data: PreparedData, rows: np.ndarray, head: str,
                    zooms=ZOOMS) -> dict[str, dict]:
    """Accuracy and balanced accuracy (classes) or RMSE (votes) on `rows` of `data` with the images zoomed
    by each factor about their centre (0.5: the galaxy half as large), keyed by the factor ("0.5")."""
    images, table = data.images[np.sort(rows)], data.table.iloc[np.sort(rows)]
    out = {}
    for factor in zooms:
        probs = Predictor.from_model(net, head, view=partial(zoom, factor=factor)).probabilities(images)
        if head == "classes":
            truth, pred = table["label_index"].to_numpy(), probs.argmax(1)
            out[f"{factor:g}"] = {"accuracy": accuracy_score(truth, pred),
                                  "balanced_accuracy": balanced_accuracy_score(truth, pred)}
        else:
            out[f"{factor:g}"] = {"rmse": float(np.sqrt(np.mean((probs - table[ANSWER_COLUMNS].to_numpy()) ** 2)))}
    return out


def zoom_check_caption(fov: Fov) -> str:
    """What the zoom check measures for a run cut with `fov`. A fixed crop zoomed is the galaxy at another
    angular scale; an auto crop is re-cut to each galaxy's size, so zooming it is its size measured wrong,
    and another angular scale is a shift of `evaluate --shifts`, which re-cuts from the source."""
    if fov == AUTO:
        return ("the cached auto crops zoomed about their centre: each galaxy cut as if its size were measured "
                "wrong (0.5x: R90 read twice too large); at other angular scales the auto crop follows the "
                "galaxy, which `zoomorph evaluate RUN --shifts` measures")
    return "the validation images zoomed about their centre, the galaxy at another angular scale (0.5x: half as large)"


def shift_settings(shifts: Sequence[Shift] = SHIFTS) -> list[Setting]:
    """The untransformed reference first, then every shift at every strength, in table order."""
    return [(None, None)] + [(shift, strength) for shift in shifts for strength in shift.strengths]


def read_frame(source: str) -> np.ndarray:
    """A source's central square at its own resolution, (S, S, 3) uint8, decoded as prepare decodes it."""
    try:
        data = read_bytes(source)
        if is_fits(source):
            rgb = fits_rgb(data, source)[0]
            return cut_array(rgb, min(rgb.shape[:2]), KAGGLE_SIZE).pixels
        with Image.open(io.BytesIO(data)) as im:
            side = min(im.size)
        return decode(data, side, KAGGLE_SIZE, name=source).pixels  # no DCT draft at full size
    except (ImageError, OSError, ValueError) as err:
        raise ZoomorphError(f"survey shifts re-read each galaxy's source at full resolution; {source}: {err}") from err


def shifted_outputs(predictor: Predictor, sources: Sequence[str], size: int, fov, settings: list[Setting],
                    batch_size: int = SHIFT_BATCH, seed: int = 0) -> list[np.ndarray]:
    """The predictor's outputs (n, K) for each setting, on `sources` read at full resolution, transformed,
    and cut to `size` px of field of view `fov` as the run's decoder cuts them.

    Random shifts draw from a generator seeded by (seed, batch): a rerun gives the same figures, and a
    galaxy gets the same noise pattern at every strength.
    """
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in settings]
    for start in range(0, len(sources), batch_size):
        frames = [read_frame(s) for s in sources[start:start + batch_size]]
        by_shape: dict[tuple, list[int]] = {}
        for i, frame in enumerate(frames):  # a catalogue may mix frame sizes; a batch op needs one
            by_shape.setdefault(frame.shape, []).append(i)
        for members in by_shape.values():
            x = torch.from_numpy(np.stack([frames[i] for i in members])).permute(0, 3, 1, 2)
            x = x.to(predictor.device).float().div_(255)  # the transforms run on the model's device
            for k, (shift, strength) in enumerate(settings):
                generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
                shifted = x if shift is None else shift(x, strength, generator)
                pixels = (shifted * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                cut = np.stack([d.pixels for d in cut_arrays(list(pixels), size, fov)])  # the decoder's geometry
                parts[k].append((start + np.asarray(members), predictor.probabilities(cut)))
    return [_in_order(p) for p in parts]


def _in_order(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    rows = np.concatenate([r for r, _ in parts])
    return np.concatenate([o for _, o in parts])[np.argsort(rows)]
