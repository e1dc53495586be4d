"""Static int8 quantisation of an exported model, for fast CPU serving (backend "onnx-int8").

onnxruntime's static quantisation (QDQ format): weights int8 per output
channel, activations uint8 with ranges measured on calibration images, so that
convolutions run as int8 dot products (AVX-512 VNNI, AVX2, ARM dot). About
2.4x the float32 graph on a CPU; the probabilities move a little, so the
export measures how much against the float32 graph and records it in the sidecar.

Calibration images, in order of preference: the ones given (any predict
inputs), else a seeded sample of the run's own training images from its
prepared folder. The check uses the run's validation images when it has them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zoomorph.data.dataset import PreparedData
from zoomorph.errors import ZoomorphError
from zoomorph.io.decode import decode_batch
from zoomorph.io.inputs import expand_inputs
from zoomorph.runs import RunConfig

CALIBRATION_IMAGES = 1024
CHECK_IMAGES = 4096  # at most, of the validation split
BATCH = 64
# Activation ranges: +-the 99.999th percentile of each tensor's |values| over the calibration images,
# so that one bright pixel does not stretch a range. On the q1 run this moved the probabilities half
# as much as min/max ranges; asymmetric percentile ranges did no better (docs/predict.md).
PERCENTILE = 99.999


class NoCalibrationImages(ZoomorphError):
    """Neither calibration images were given nor the run's prepared folder is readable."""


def _prepared(cfg: RunConfig) -> PreparedData | None:
    """The run's prepared folder, when it is readable here and still matches the run."""
    try:
        data = PreparedData.load(Path(cfg.data)) if cfg.data else None
    except (FileNotFoundError, ValueError):
        return None
    if data is None or data.images.shape[1] != cfg.image_size or data.fov != cfg.fov:
        return None
    return data if cfg.head != "classes" or data.classes == cfg.classes else None


def _sample(indices: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(indices)[:n])


def calibration_pixels(cfg: RunConfig, sources: list[str | Path] | None = None,
                       n: int = CALIBRATION_IMAGES) -> tuple[np.ndarray, str]:
    """(uint8 pixels (m, S, S, 3), where they came from) for calibrating the activation ranges."""
    if sources:
        listing = expand_inputs(list(sources))["path"].dropna().to_numpy()  # a row without a path is no image
        chosen = listing[_sample(np.arange(len(listing)), n)].tolist()
        _, pixels, errors, _ = decode_batch((0, chosen, cfg.image_size, cfg.fov))
        unreadable = [e for e in errors if e]
        if not len(pixels):
            raise NoCalibrationImages(f"none of the {len(chosen)} calibration images could be read"
                                      + (f" (first error: {unreadable[0]})" if unreadable else ""))
        skipped = f" ({len(unreadable)} unreadable skipped, e.g. {unreadable[0]})" if unreadable else ""
        return pixels, f"{len(pixels)} images sampled from {', '.join(map(str, sources))}{skipped}"
    data = _prepared(cfg)
    train = data.indices("train", labelled=False) if data is not None else np.empty(0, int)
    if not len(train):
        raise NoCalibrationImages(
            f"int8 quantisation needs calibration images: the run's prepared data ({cfg.data or 'not recorded'}) "
            "is not readable here, so give some, e.g. `zoomorph export RUN --int8 --calibration IMAGES`")
    rows = _sample(train, n)
    return np.asarray(data.images[rows]), f"{len(rows)} training images of {data.root}"


def check_pixels(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray | None, str] | None:
    """(pixels, labels or None, description) of the run's validation images, to check int8 against fp32."""
    data = _prepared(cfg)
    if data is None or not len(rows := data.indices("val", labelled=False)):
        return None
    rows = _sample(rows, CHECK_IMAGES)
    labels = data.table["label_index"].to_numpy()[rows] if cfg.head == "classes" else None  # -1: unassigned
    return np.asarray(data.images[rows]), labels, f"{len(rows)} validation images"


def _outputs(model: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: np.ascontiguousarray(pixels[i:i + BATCH])})[0]
                           for i in range(0, len(pixels), BATCH)])


def compare_outputs(fp32: Path, int8: Path, pixels: np.ndarray, labels: np.ndarray | None,
                    top: slice = slice(None)) -> dict:
    """How far the int8 graph's outputs are from the fp32 graph's on `pixels`: the share with the same
    top output among columns `top` (a votes run: the first question), the mean and largest absolute
    difference, and both accuracies on the labelled ones (`labels` >= 0)."""
    exact, quantised = _outputs(fp32, pixels), _outputs(int8, pixels)
    gap = np.abs(quantised - exact)
    check = {"images": len(pixels),
             "same_top_output": float(np.mean(quantised[:, top].argmax(1) == exact[:, top].argmax(1))),
             "mean_abs_difference": float(gap.mean()), "max_abs_difference": float(gap.max())}
    labelled = labels >= 0 if labels is not None else np.zeros(len(pixels), bool)
    if labelled.any():
        check |= {"labelled_images": int(labelled.sum()),
                  "accuracy_fp32": float(np.mean(exact[labelled].argmax(1) == labels[labelled])),
                  "accuracy_int8": float(np.mean(quantised[labelled].argmax(1) == labels[labelled]))}
    return check


def describe(quantization: dict) -> str:
    """One sentence for people: what the int8 graph was calibrated on and how far it is from float32."""
    check = quantization["check"]
    accuracy = (f"; accuracy {check['accuracy_fp32']:.4f} -> {check['accuracy_int8']:.4f} on the "
                f"{check['labelled_images']} labelled" if "accuracy_int8" in check else "")
    return (f"calibrated on {quantization['calibration']}; against float32 on {check['on']}: same top output "
            f"for {check['same_top_output']:.1%}, mean |difference| {check['mean_abs_difference']:.4f}, "
            f"max {check['max_abs_difference']:.4f}{accuracy}")


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an array of pixels, in batches.

    `set_range` lets quantize_static collect one batch at a time (CalibStridedMinMax):
    otherwise it keeps every intermediate tensor of every calibration image in memory.
    """

    def __init__(self, input_name: str, pixels: np.ndarray):
        self.input_name, self.pixels = input_name, pixels
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.pixels) // BATCH)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter(range(start_index, end_index))

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.pixels[batch * BATCH:(batch + 1) * BATCH])}


def head_nodes(model_path: Path) -> list[str]:
    """The nodes from the last linear layer on (the head: logits, softmax, vote products).

    They stay float32: they cost nothing, and quantised they would round the probabilities
    to multiples of 1/255, which then no longer sum to 1.
    """
    import onnx  # heavy (~0.7 s): only the int8 export needs it, so predict does not load it

    nodes = onnx.load(str(model_path)).graph.node  # topologically sorted
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=len(nodes))
    return [n.name for n in nodes[last:]]


def _producer(nodes, op_type: str, output: str):
    return next((n for n in nodes if n.op_type == op_type and output in n.output), None)


def _consumers(nodes, tensor: str) -> list:
    return [n for n in nodes if tensor in n.input]


def _scaled_pixels(model) -> str | None:
    """The float graph's pixels/255 tensor: Div(Cast(the uint8 input, maybe transposed), 255)."""
    from onnx import numpy_helper  # heavy: see head_nodes

    nodes, constants = model.graph.node, {i.name: i for i in model.graph.initializer}
    divide = next((n for n in nodes if n.op_type == "Div" and n.input[1] in constants
                   and numpy_helper.to_array(constants[n.input[1]]) == 255), None)
    cast = divide and _producer(nodes, "Cast", divide.input[0])
    source = cast and (_producer(nodes, "Transpose", cast.input[0]) or cast)
    return divide.output[0] if source and source.input[0] == model.graph.input[0].name else None


def _feed_pixels(path: Path, scaled: str) -> None:
    """Let the quantised graph take the uint8 pixels as they come.

    Quantised with scale 1/255 and zero point 0, pixels/255 is the pixels themselves, so
    Cast -> Div -> QuantizeLinear is an exact no-op: drop it (2% of the int8 model's time).
    """
    import onnx  # heavy: see head_nodes
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = model.graph.node
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    divide = _producer(nodes, "Div", scaled)
    cast = divide and _producer(nodes, "Cast", divide.input[0])
    users = _consumers(nodes, scaled)
    quantize = users[0] if len(users) == 1 and users[0].op_type == "QuantizeLinear" else None
    exact = quantize and constants[quantize.input[1]] == np.float32(1 / 255) and constants[quantize.input[2]] == 0
    if not (cast and exact and len(_consumers(nodes, cast.output[0])) == 1):
        return  # not that chain (e.g. the first layer stayed float): keep the graph as it is
    for node in nodes:
        for k, name in enumerate(node.input):
            if name == quantize.output[0]:
                node.input[k] = cast.input[0]
    for node in (cast, divide, quantize):
        nodes.remove(node)
    used = {i for n in nodes for i in n.input}
    for unused in [i for i in model.graph.initializer if i.name not in used]:  # the 255
        model.graph.initializer.remove(unused)
    onnx.save(model, str(path))


def quantize_int8(fp32: Path, out: Path, pixels: np.ndarray, input_name: str) -> str:
    """Write `out`: `fp32` with int8 per-channel weights and uint8 activations calibrated on `pixels`.

    Returns how the activation ranges were set: percentiles, or min/max where a tensor with
    almost no spread of values (e.g. an untrained, zero-initialised branch) defeats the histograms.
    The input's range is known, not measured: pixels/255 is quantised as the pixels themselves.
    """
    # heavy (~1.5 s with onnx): only the int8 export needs them, so predict does not load them
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime prints its calibration progress: keep it off the caller's stdout
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and BatchNorm folded: what quantises well
        quant_pre_process(str(fp32), str(prepared))
        scaled = _scaled_pixels(onnx.load(str(prepared)))
        pixel_range = {"scale": np.array(1 / 255, np.float32), "zero_point": np.array(0, np.uint8)}
        exact = {scaled: [pixel_range]} if scaled else {}

        def quantize(method: CalibrationMethod, options: dict) -> None:
            quantize_static(str(prepared), str(out), _Batches(input_name, pixels), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, nodes_to_exclude=head_nodes(prepared),
                            extra_options={"CalibStridedMinMax": 1, "TensorQuantOverrides": exact, **options})

        try:
            quantize(CalibrationMethod.Percentile, {"CalibPercentile": PERCENTILE, "CalibTensorRangeSymmetric": True})
            ranges = f"+-the {PERCENTILE}th percentile of |values|"
        except ValueError as err:  # numpy: "Too many bins for data range"
            if "bins" not in str(err):
                raise
            quantize(CalibrationMethod.MinMax, {})
            ranges = f"min/max (percentile histograms failed: {err})"
        if scaled:
            _feed_pixels(out, scaled)
        return ranges
