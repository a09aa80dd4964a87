"""The sampler explorer of notebooks/05_explore.ipynb: ipywidgets controls around cached pipelines.

Plain functions do the work (`generate`, `list_checkpoint_choices`), so they run and are tested without a browser.
"""

from __future__ import annotations

import html
import io
import os
import time
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from t2ilab.config import run_sampling
from t2ilab.sampling.pipeline import SCHEDULERS, T2IPipeline, check_prompt, load_pipeline
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints, read_manifest

DISPLAY_SIDE = 256  # generated images are upscaled (NEAREST) to about this many pixels for the screen
CACHE_SIZE = 2  # loaded pipelines kept: comparing two checkpoints or EMA/raw does not reload on every click
_PIPELINES: OrderedDict[tuple, T2IPipeline] = OrderedDict()


def list_checkpoint_choices(output_dir: str | Path) -> list[tuple[str, str]]:
    """(label, path) of the complete checkpoints in an output dir, newest first, for a dropdown."""
    choices = []
    for path, manifest in reversed(list_checkpoints(output_dir)):
        kind = "" if manifest.get("end_of_epoch", True) else " (mid-epoch)"
        val = (manifest.get("metrics") or {}).get("val_loss")
        loss = f", val loss {val:.4f}" if isinstance(val, float) else ""
        label = f"epoch {manifest.get('epoch')}, step {manifest.get('global_step')}{kind}{loss}"
        choices.append((label, str(path)))
    return choices


def get_pipeline(checkpoint: str | Path, weights: str = "ema") -> T2IPipeline:
    """A loaded pipeline, cached by checkpoint, weights and manifest time (a rewritten checkpoint reloads)."""
    key = (str(Path(checkpoint).resolve()), weights, read_manifest(checkpoint).get("written_at"))
    if key in _PIPELINES:
        _PIPELINES.move_to_end(key)
        return _PIPELINES[key]
    pipe = load_pipeline(checkpoint, weights=weights)
    _PIPELINES[key] = pipe
    while len(_PIPELINES) > CACHE_SIZE:
        _PIPELINES.popitem(last=False)
    return pipe


def generate(checkpoint: str | Path, prompt: str, scheduler: str | None = None, steps: int | None = None,
             guidance: float | None = None, seed: int = 0, weights: str = "ema") -> tuple[Image.Image, dict]:
    """One image for `prompt` and what to know about it: the prompt check, the settings, seconds taken.

    Settings left out are the run's own (its config's sampling section), as in `t2ilab sample` and the reviews."""
    run = run_sampling(checkpoint)
    scheduler = run.scheduler if scheduler is None else scheduler
    steps = run.num_inference_steps if steps is None else steps
    guidance = run.guidance_scale if guidance is None else guidance
    pipe = get_pipeline(checkpoint, weights)
    pipe.set_scheduler(scheduler)
    check = check_prompt(pipe, prompt)
    started = time.perf_counter()
    image = pipe(prompt, num_inference_steps=int(steps), guidance_scale=float(guidance), seed=int(seed)).images[0]
    info = {"checkpoint": str(checkpoint), "epoch": pipe.manifest.get("epoch"), "weights": pipe.weights,
            "scheduler": scheduler, "steps": int(steps), "guidance": float(guidance), "seed": int(seed),
            "seconds": round(time.perf_counter() - started, 3), **check}
    return image, info


def upscale(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """NEAREST upscale by an integer factor, so 32 px pixels stay visible as pixels."""
    factor = max(1, side // max(image.width, image.height))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def describe(info: dict) -> str:
    """The prompt check and settings as escaped HTML (a prompt is shown as text, never as markup)."""
    e = html.escape
    lines = [f"epoch {e(str(info['epoch']))} ({e(str(info['weights']))} weights), {e(info['scheduler'])}, "
             f"{info['steps']} steps, guidance {info['guidance']:g}, seed {info['seed']}: {info['seconds']:.2f} s"]
    lines += [f"⚠ {e(p)}" for p in info["problems"]] or ["prompt check: every word was seen in training"]
    return "<br>".join(lines)


def build_explorer(output_dir: str | Path, prompt: str = "a red circle above a blue square"):
    """An ipywidgets box: prompt, checkpoint, sampler, steps, guidance, seed, EMA/raw, Generate, image and check."""
    import ipywidgets as widgets

    choices = list_checkpoint_choices(output_dir)
    if not choices:
        raise CheckpointError(f"no complete checkpoint in {output_dir}; train first (notebooks/01_train.ipynb)")
    run = run_sampling(choices[0][1])  # the sliders start at the run's own sampling settings
    controls = {
        "prompt": widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="40em")),
        "checkpoint": widgets.Dropdown(options=choices, value=choices[0][1], description="checkpoint"),
        "scheduler": widgets.Dropdown(options=list(SCHEDULERS), value=run.scheduler, description="sampler"),
        "steps": widgets.IntSlider(value=run.num_inference_steps, min=1, max=max(100, run.num_inference_steps), description="steps"),
        "guidance": widgets.FloatSlider(value=max(1.0, run.guidance_scale), min=1.0, max=max(10.0, run.guidance_scale), step=0.5,
                                        description="guidance"),
        "seed": widgets.IntText(value=0, description="seed"),
        "weights": widgets.ToggleButtons(options=["ema", "raw"], value="ema", description="weights"),
    }
    button = widgets.Button(description="Generate", button_style="primary")
    image = widgets.Image(format="png", layout=widgets.Layout(width=f"{DISPLAY_SIDE}px"))
    check = widgets.HTML(value="")

    def on_generate(_button=None) -> None:
        values = {name: w.value for name, w in controls.items()}
        check.value = "generating ..."
        try:
            result, info = generate(**values)
        except (ValueError, CheckpointError) as exc:  # bad settings or a broken checkpoint: say so, keep the UI alive
            check.value = f"<b>error:</b> {html.escape(str(exc))}"
            return
        buf = io.BytesIO()
        upscale(result).save(buf, format="PNG")
        image.value = buf.getvalue()
        check.value = describe(info)

    button.on_click(on_generate)
    box = widgets.VBox([*controls.values(), button, image, check])
    box.controls, box.button, box.image, box.check = controls, button, image, check  # handles for tests and users
    return box


def show_explorer(output_dir: str | Path, prompt: str = "a red circle above a blue square"):
    """The explorer widget; headless (T2ILAB_HEADLESS) one static image with its prompt check instead."""
    if not os.environ.get("T2ILAB_HEADLESS"):
        return build_explorer(output_dir, prompt)
    choices = list_checkpoint_choices(output_dir)
    if not choices:
        raise CheckpointError(f"no complete checkpoint in {output_dir}; train first (notebooks/01_train.ipynb)")
    image, info = generate(choices[0][1], prompt)
    print(f"headless run: no widgets; {prompt!r} from {choices[0][0]}")
    for problem in info["problems"] or ["prompt check: every word was seen in training"]:
        print(problem)
    return upscale(image)
