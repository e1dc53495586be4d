"""docs/notebooks/quickstart.ipynb: stored without outputs, and it runs top to bottom in this interpreter's kernel."""

import base64
import io
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def _kernel(tmp_path: Path):
    """A kernel manager for `python3` started by this very interpreter (sys.executable, the venv's when the
    tests run from it): the kernel spec is written here, so no user's or system's python3 spec is used."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert specs.get_kernel_spec("python3").argv[0] == sys.executable
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _seconds(cell) -> float:
    times = cell.metadata.execution  # nbclient's timestamps, ISO 8601 in UTC
    start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00"))
                  for k in ("iopub.execute_input", "shell.execute_reply"))
    return (end - start).total_seconds()


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _png(cell) -> Image.Image:
    pngs = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, f"cell {cell.id}: {len(pngs)} PNG outputs"
    return Image.open(io.BytesIO(base64.b64decode(pngs[0])))


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    pytest.importorskip("nbclient", reason="the notebook test needs nbclient (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (pip install -e '.[dev]')")
    import nbformat
    from nbclient import NotebookClient

    import zoomorph

    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel inherits it: the notebook's tempfile folder goes here
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One cell more, in memory only: which interpreter and which zoomorph the kernel ran.
    nb.cells.append(nbformat.v4.new_code_cell("import sys, zoomorph; print(sys.executable); print(zoomorph.__file__)",
                                              id="which-python"))
    client = NotebookClient(nb, km=_kernel(tmp_path), timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    started = time.perf_counter()
    client.execute()  # any cell's error raises CellExecutionError
    print(f"quickstart.ipynb executed in {time.perf_counter() - started:.1f} s; per cell:",
          ", ".join(f"{c.id} {_seconds(c):.1f}" for c in nb.cells if "execution" in c.metadata))

    cells = {c.id: c for c in nb.cells}
    by_source = {key: next(c for c in nb.cells if c.cell_type == "code" and key in c.source) for key in
                 ("working in", "plots.training_curves", "plots.confusion_figure", "api.predict",
                  "plots.grad_cam_overlays", "plots.class_samples")}
    assert cells["which-python"].outputs[0].text.split() == [sys.executable, zoomorph.__file__]

    work = Path(_text(by_source["working in"]).split("working in", 1)[1].strip())
    assert work.parent == scratch and (work / "run" / "model.pt").exists()
    assert not any(cwd.iterdir())  # nothing written where it ran

    evaluated = _text(by_source["plots.confusion_figure"])
    found = re.search(r"validation accuracy: ([\d.]+) \(95% CI ([\d.]+)-([\d.]+)\), balanced accuracy: ([\d.]+)",
                      evaluated)
    assert found, evaluated
    accuracy, low, high, balanced = map(float, found.groups())
    assert 0 <= low <= accuracy <= high <= 1 and 0 <= balanced <= 1
    assert "16 of 16 images classified" in _text(by_source["api.predict"])
    assert any("text/html" in o.get("data", {}) for o in by_source["api.predict"].outputs)  # the table

    for key in ("plots.training_curves", "plots.confusion_figure", "plots.grad_cam_overlays", "plots.class_samples"):
        image = _png(by_source[key])
        assert image.format == "PNG" and min(image.size) > 100, (key, image.size)
