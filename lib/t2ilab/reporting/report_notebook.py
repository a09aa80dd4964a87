"""One report: execute a notebook headless with papermill, keep its images small, export HTML with code hidden,
and write the .metrics.json sidecar last, so a killed runner never leaves a report that looks complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from t2ilab.files import jsonable, read_json, write_text  # noqa: F401  (reports.py and report_index.py import them from here)
from t2ilab.training.checkpoint import MANIFEST

KERNEL = "t2ilab"  # registered by `make install`; the venv's own python3 kernel is the fallback
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 3600  # seconds per notebook cell (papermill's execution_timeout)
NOT_IN_KEY = ("metrics_path", "previous_review", "reports_dir")  # where reports live is not an input: moving
# reports/ must not rerun them (a previous review read from its sidecar gives the same numbers as rescoring its
# checkpoint; the loss diagnosis reads the skill curve from reports_dir as it stands when it runs)
IMAGE_MAX_BYTES = 250_000  # one output image above this is recompressed (JPEG) or downscaled
REPORT_BUDGET_BYTES = 3_000_000  # each report file (.ipynb, .html) stays below this
IMAGES_BUDGET_BYTES = 2_500_000  # all images of one report: the budget less the HTML page's ~0.4 MB of styles


@dataclass
class ReportResult:
    """One report of one milestone: where it is and how it went."""

    run: str
    epoch: int
    notebook: str
    status: str  # "ok" | "failed" | "skipped" (up to date)
    seconds: float
    notebook_path: Path
    html_path: Path
    sidecar_path: Path
    error: str | None = None
    size_bytes: int = 0
    index_html: Path | None = None  # the run's index.html, written after all reports


def report_key(checkpoint: Path, notebook: Path, parameters: dict) -> str:
    """Hash of what a report depends on: the checkpoint manifest, the notebook's bytes and the parameters."""
    h = hashlib.sha256(f"t2ilab-report-v{SCHEMA_VERSION}\n".encode())
    h.update((checkpoint / MANIFEST).read_bytes())
    h.update(notebook.read_bytes())
    h.update(json.dumps({k: v for k, v in parameters.items() if k not in NOT_IN_KEY}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def kernel_name() -> str:
    """'t2ilab' when registered (make install), else the python3 kernel of this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def run_one(name: str, source: Path, checkpoint: Path, epoch_dir: Path, parameters: dict, run: str, epoch: int,
            kernel: str, cwd: Path, timeout: int, force: bool = False) -> ReportResult:
    """Execute one notebook into epoch_dir (unless up to date): .ipynb, .html, then the .metrics.json sidecar."""
    epoch_dir.mkdir(parents=True, exist_ok=True)
    out_nb, out_html, sidecar = (epoch_dir / f"{name}{ext}" for ext in (".ipynb", ".html", ".metrics.json"))
    data_path = epoch_dir / f".{name}.notebook-metrics.json"
    parameters = parameters | {"metrics_path": str(data_path)}
    key = report_key(checkpoint, source, parameters)
    result = ReportResult(run, epoch, name, "skipped", 0.0, out_nb, out_html, sidecar)
    previous = read_json(sidecar)
    if (not force and previous and previous.get("key") == key and previous.get("status") == "ok"
            and out_nb.is_file() and out_html.is_file()):
        result.size_bytes = previous.get("size_bytes", {}).get("total", 0)
        return result
    sidecar.unlink(missing_ok=True)  # from here on the old report no longer looks complete
    data_path.unlink(missing_ok=True)
    tmp_nb = epoch_dir / f".{name}.running.ipynb"
    started = time.perf_counter()
    error = execute_notebook(source, tmp_nb, parameters, kernel, cwd, timeout)
    try:
        sizes = {"ipynb": 0, "html": 0}
        try:
            if tmp_nb.is_file():  # papermill saves the notebook on failure too: keep it, the traceback is in it
                sizes = _write_report_files(tmp_nb, out_nb, out_html)
        except Exception as exc:  # an unreadable output or an export bug: this report fails, the others go on
            error = error or f"writing the report files: {type(exc).__name__}: {exc}"
        metrics = read_json(data_path) if error is None else None
        result.status, result.error = ("ok", None) if error is None else ("failed", error)
        result.seconds = round(time.perf_counter() - started, 2)
        result.size_bytes = sum(sizes.values())
        manifest = read_json(checkpoint / MANIFEST) or {}
        record = {"schema_version": SCHEMA_VERSION, "run": run, "epoch": epoch,
                  "global_step": manifest.get("global_step"), "checkpoint": str(checkpoint), "notebook": name, "source": str(source), "parameters": parameters,
                  "status": result.status, "error": error, "seconds": result.seconds, "metrics": metrics,
                  "key": key, "size_bytes": sizes | {"total": result.size_bytes}, "kernel": kernel,
                  "over_budget": max(sizes.values()) > REPORT_BUDGET_BYTES,
                  "finished_at": time.time()}
        write_text(sidecar, json.dumps(jsonable(record), indent=2, sort_keys=True))  # last: marks it complete
    finally:
        tmp_nb.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
    return result


def _write_report_files(executed: Path, out_nb: Path, out_html: Path) -> dict[str, int]:
    """The executed notebook without output scripts and with small images, and its HTML; returns their sizes."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    drop_output_scripts(nb)
    shrink_images(nb)
    write_text(out_nb, nbformat.writes(nb))
    write_text(out_html, export_html(nb))
    return {"ipynb": out_nb.stat().st_size, "html": out_html.stat().st_size}


def execute_notebook(source: Path, output: Path, parameters: dict, kernel: str | None = None, cwd: Path | None = None,
                     timeout: int = DEFAULT_TIMEOUT) -> str | None:
    """Run a notebook headless with papermill (parameters via its API); None when it succeeded, else 'ename: evalue'."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config as TraitletsConfig

    # IPC sockets (files readable by this user only) instead of unencrypted TCP on localhost. They live in a private
    # temp dir, not the kernel's cwd: a killed run would otherwise leave socket files beside the notebooks.
    ipc_dir = tempfile.mkdtemp(prefix="t2ilab-ipc-")
    kernel_config = TraitletsConfig({"KernelManager": {"transport": "ipc", "ip": os.path.join(ipc_dir, "k")}})
    old = os.environ.get("T2ILAB_HEADLESS")
    os.environ["T2ILAB_HEADLESS"] = "1"  # inherited by the kernel: static images and plain progress lines
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel or kernel_name(),
                                   cwd=str(cwd or Path(source).parent),
                                   execution_timeout=timeout, progress_bar=False, log_output=False,
                                   config=kernel_config)
        return None
    except PapermillExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}"
    except TimeoutError as exc:  # nbclient's CellTimeoutError
        return f"timeout: a cell ran longer than {timeout} s ({str(exc).splitlines()[0] if str(exc) else ''})"
    except Exception as exc:  # a dead kernel, a kernel that never started, an unreadable notebook
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
        if old is None:
            os.environ.pop("T2ILAB_HEADLESS", None)
        else:
            os.environ["T2ILAB_HEADLESS"] = old


def epoch_folder(run_reports_dir: Path, epoch: int) -> Path:
    """Where one milestone's reports of a run live: reports/<run>/epoch-NNNN."""
    return run_reports_dir / f"epoch-{epoch:04d}"


def shrink_images(nb, max_image_bytes: int = IMAGE_MAX_BYTES, budget: int = IMAGES_BUDGET_BYTES) -> int:
    """Recompress or downscale image outputs in place: each ≤ max_image_bytes, all ≤ budget; returns their bytes."""
    outputs = [o for cell in nb.cells for o in cell.get("outputs", []) if _mime(o)]
    for output in outputs:
        _keep_one_image(output)
        if _size(output) > max_image_bytes:
            _recode(output, max_image_bytes)
    for _ in range(20):  # each pass shrinks the largest image by ~30 %
        total = sum(_size(o) for o in outputs)
        if total <= budget:
            return total
        largest = max(outputs, key=_size)
        _recode(largest, int(_size(largest) * 0.7))
    return sum(_size(o) for o in outputs)


def _mime(output) -> str | None:
    data = output.get("data", {})
    return next((m for m in ("image/png", "image/jpeg") if m in data), None)


def _size(output) -> int:
    return len(output["data"][_mime(output)]) * 3 // 4  # base64 -> bytes


def _keep_one_image(output) -> None:
    """PIL images come as PNG and JPEG; viewers show one (PNG first): keep the smaller, so none is dead weight."""
    data = output["data"]
    if "image/png" in data and "image/jpeg" in data:
        larger = max(("image/png", "image/jpeg"), key=lambda m: len(data[m]))
        del data[larger]
        output.get("metadata", {}).pop(larger, None)


def _recode(output, target: int) -> None:
    """Replace the image by a PNG or JPEG, downscaled as far as needed, of at most `target` bytes if possible."""
    from PIL import Image

    mime = _mime(output)
    image = Image.open(io.BytesIO(base64.b64decode(output["data"][mime])))
    image.load()
    image = image.convert("RGB")
    scale = 1.0
    for _ in range(8):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = image if scale == 1.0 else image.resize(size, Image.LANCZOS)
        candidates = []
        for fmt in ("PNG", "JPEG"):  # PNG stays sharp for flat-colour grids; JPEG wins for plots with gradients
            buf = io.BytesIO()
            resized.save(buf, fmt, **({"quality": 80} if fmt == "JPEG" else {"optimize": True}))
            candidates.append((len(buf.getvalue()), fmt, buf.getvalue()))
        fitting = [c for c in candidates if c[0] <= target]
        if fitting:
            candidates = fitting[:1]  # PNG when it fits, else JPEG
            break
        scale *= 0.7
    _, fmt, data = min(candidates, key=lambda c: c[0])
    new_mime = "image/png" if fmt == "PNG" else "image/jpeg"
    del output["data"][mime]
    output["data"][new_mime] = base64.b64encode(data).decode("ascii")
    meta = output.get("metadata", {})
    if mime in meta:
        meta[new_mime] = {k: v for k, v in meta.pop(mime).items() if k not in ("width", "height")}


def export_html(nb) -> str:
    """The notebook as standalone HTML without code or prompts; text outputs are escaped by nbconvert."""
    import logging

    from nbconvert import HTMLExporter

    # nbconvert warns once per report that plots have no alt text (the markdown cell above each says what it
    # shows); a logger of our own keeps that out of the runner's output.
    quiet = logging.getLogger("t2ilab.report_html")
    quiet.setLevel(logging.ERROR)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True, log=quiet)
    body, _ = exporter.from_notebook_node(nb)
    return body


def drop_output_scripts(nb) -> int:
    """Replace HTML outputs that carry <script> by their plain-text form; returns how many.

    pandas tables escape their cells, so a prompt like "<script>..." is text; this catches any output that
    does not (nbconvert's sanitize_html would also escape our own headings and tables). Reports are headless,
    so no legitimate widget output is lost.
    """
    dropped = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/html" in data and "<script" in str(data["text/html"]).lower():
                del data["text/html"]
                data.setdefault("text/plain", "(HTML output with a script removed)")
                dropped += 1
    return dropped
