"""The audit (`sd3 audit`, scripts/audit.py) on the tiny architecture: agreement, a perturbed weight, behaviours, outputs."""

import json

import pytest
import torch
from PIL import Image

from sd3.errors import DeviceError

from sd3.testing import audit


def _run(tmp_path, *flags) -> tuple[int, dict]:
    out = tmp_path / "report.v1"  # a dot in the name must survive
    code = audit.main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *flags])
    return code, json.loads((tmp_path / "report.v1.json").read_text())


def test_tiny_audit_agrees_and_writes_its_outputs(tmp_path, capsys):
    code, report = _run(tmp_path, "--fail-above", "1e-3")
    assert code == 0
    modules = {m["module"]: m for m in report["modules"]}
    for name in ("clip_l.text_model.encoder.layers.2", "clip_g.text_projection", "t5.encoder.block.1",
                 "mmdit.joint_blocks.0 context", "mmdit.joint_blocks.1 x", "mmdit.final_layer", "sampling step 2",
                 "vae.decoder.up_blocks.3"):
        assert modules[name]["max_rel"] < 1e-5 and modules[name]["cosine"] > 0.999999
    assert report["first_above_threshold"] is None
    image = Image.open(tmp_path / "report.v1.png")
    assert image.size[0] > 1000 and image.size[1] > 400
    assert "every module agrees" in capsys.readouterr().out


def test_a_perturbed_weight_is_found_and_fails_a_tight_threshold(tmp_path, capsys):
    code, report = _run(tmp_path, "--perturb", "mmdit.joint_blocks.1.x_block.mlp.fc2.bias=0.5", "--fail-above", "1e-4")
    assert code == 1
    assert report["first_above_threshold"] == "mmdit.joint_blocks.1 x"
    modules = {m["module"]: m for m in report["modules"]}
    assert modules["mmdit.joint_blocks.0 x"]["max_rel"] < 1e-5  # upstream of the change: still equal
    assert "first above threshold" in capsys.readouterr().out


def test_reference_behaviours_point_by_point(tmp_path):
    code, report = _run(tmp_path, "--reference", "stability")
    assert code == 0
    points = {b["point"]: b for b in report["behaviours"]}
    assert set(points) == {"t5_length", "t5_truncate", "schedule", "uncond_first", "round_latents", "all"}
    assert points["uncond_first"]["max_rel"] < 1e-5  # batch order: the same result
    assert points["t5_length"]["max_rel"] > 1e-3  # T5 attends over its padding: a different result


def test_bfloat16_drift_is_reported_not_hidden(tmp_path):
    code, report = _run(tmp_path, "--dtype", "bfloat16", "--fail-above", "1e-3")
    assert code == 1
    assert report["setup"]["dtype"] == "bfloat16" and report["first_above_threshold"] is not None


def test_an_audit_that_cannot_fit_is_refused_before_writing_anything(tmp_path, monkeypatch, capsys):
    """The real-size default needs its MMDiT (2.24 B parameters and its 384 x 384 x 1536 position table)
    in float32 plus the overhead: 12.2 GiB."""
    stages = audit.stage_parameters(audit.parser().parse_args([]))
    assert stages["mmdit"] == 2_243_171_520 + 384 * 384 * 1536 and stages["mmdit"] > stages["text"] > stages["vae"]
    monkeypatch.setattr(audit, "available_bytes", lambda device: 8 * 2**30)
    code = audit.main(["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "needs about 12.2 GiB of memory (the mmdit stage's weights in float32 plus 3.0 GiB)" in err
    assert "only 8.0 GiB is available; sd3 audit --tiny" in err
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob("report*"))
    # In bfloat16 on both sides the same machine has room: 4.6 + 3 GiB.
    audit.check_memory(audit.parser().parse_args([]), (torch.bfloat16, torch.bfloat16))
    large = audit.parser().parse_args(["--variant", "3.5-large"])
    with pytest.raises(DeviceError, match=r"needs about 33\.\d GiB"):
        audit.check_memory(large, (torch.float32, torch.float32))


def test_bad_flags_are_refused_before_anything_is_written(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert audit.main(["--t5-layers", "0", "--cache-dir", str(cache)]) == 2
    assert "--t5-layers must be between 1 and 24" in capsys.readouterr().err
    assert audit.main(["--tiny", "--cache-dir", str(cache), "--out", str(tmp_path / "missing" / "x")]) == 2
    assert "the folder" in capsys.readouterr().err and not cache.exists()


def test_stage_parameters_of_real_files_read_their_headers(tmp_path):
    """The real-files branch counts each component under its prefix, as the architecture does."""
    from sd3.testing.random_weights import write_tiny

    files, _ = write_tiny(tmp_path / "cache")
    flags = ["--checkpoint", str(files.checkpoint), "--clip-l", str(files.clip_l), "--clip-g", str(files.clip_g),
             "--t5xxl", str(files.t5xxl), "--clip-l-tokenizer", str(files.clip_l_tokenizer),
             "--clip-g-tokenizer", str(files.clip_g_tokenizer), "--t5-tokenizer", str(files.t5_tokenizer)]
    stages = audit.stage_parameters(audit.parser().parse_args(flags))
    from sd3.sampling import StableDiffusion3

    models = StableDiffusion3(files).components.architectures()
    count = lambda name: sum(t.numel() for t in models[name].state_dict().values())  # noqa: E731
    assert stages["mmdit"] == count("mmdit") > 0
    # T5 files store their tied embedding twice (`shared`, `encoder.embed_tokens`): counted as stored.
    assert stages["text"] >= count("clip_l") + count("clip_g") + count("t5") > 0
    assert stages["vae"] > 0
