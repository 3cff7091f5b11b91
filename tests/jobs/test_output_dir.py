"""`sd3 generate --output-dir`: atomic images, the manifest, resume, torchrun shards, and checks before compute."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sd3.cli import generate
from sd3.checkpoint import sha256_file

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--height", "32", "--width", "48", "--num-inference-steps", "2", "--cpu"]


def local_flags(tiny) -> list[str]:
    c = str(tiny.checkpoint)
    return ["--checkpoint", c, "--clip-l", c, "--clip-g", c, "--t5xxl", c, "--clip-l-tokenizer",
            str(tiny.clip_l_tokenizer), "--clip-g-tokenizer", str(tiny.clip_g_tokenizer), "--t5-tokenizer",
            str(tiny.t5_tokenizer)]


def suite(tmp_path: Path, n: int = 12) -> Path:
    """A JSONL prompt list as evaluation suites ship them, some lines with their own seed or cfg."""
    lines = []
    for i in range(n):
        line = {"prompt": f"a photo of a cat number {i}" if i % 2 else f"an astronaut riding a horse {i}"}
        if i % 5 == 3:
            line["seed"] = 1000 + i
        if i % 4 == 1:
            line["cfg"] = 2.5
        lines.append(json.dumps(line))
    path = tmp_path / f"suite{n}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def command(tiny, prompts: Path, out: Path, *extra) -> list[str]:
    return [*local_flags(tiny), *SMALL, "--quiet", "--prompts-file", str(prompts), "--output-dir", str(out), "--seed", "3",
            *extra]


def images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tiny, tmp_path_factory):
    """One uninterrupted single-process run of the 12-line suite: what every other run must equal."""
    folder = tmp_path_factory.mktemp("reference")
    prompts = suite(folder)
    assert generate.main(command(tiny, prompts, folder / "out")) == 0
    return prompts, folder / "out"


def test_images_are_named_by_index_and_each_has_a_verified_manifest_line(reference_run):
    prompts, out = reference_run
    records = manifest(out)
    assert [r["index"] for r in records] == list(range(12)) and len(images(out)) == 12
    for r in records:
        assert r["file"] == f"{r['index']:05d}.png" and sha256_file(out / r["file"]) == r["sha256"]
        assert set(r) >= {"index", "file", "prompt", "negative_prompt", "seed", "settings", "sha256", "seconds"}
        assert {"which", "dtype", "reference", "height", "width", "steps", "cfg", "shift", "sampler"} <= set(r["settings"])
    assert records[3]["seed"] == 1003 and records[4]["seed"] == 3 + 4  # a line's own seed, else seed + index
    assert records[1]["settings"]["cfg"] == 2.5 and records[2]["settings"]["cfg"] == 4.0
    for r in records:  # the PNG and the manifest speak with one set of names
        recorded = json.loads(Image.open(out / r["file"]).text["sd3"])
        texts = ("prompt", "negative_prompt", "seed", "index")
        assert {k: recorded[k] for k in texts} == {k: r[k] for k in texts}
        assert {k: v for k, v in recorded.items() if k not in texts} == {k: v for k, v in r["settings"].items()
                                                                        if k != "loras" or v}
    assert not list(out.glob(".*tmp")) and not list(out.glob("manifest.rank*"))


def test_a_second_run_skips_everything_and_redoes_a_missing_or_damaged_image(tiny, reference_run, tmp_path, capsys):
    prompts, reference = reference_run
    out = tmp_path / "out"
    assert generate.main(command(tiny, prompts, out)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    (out / "00004.png").unlink()
    (out / "00007.png").write_bytes(b"half a PNG")  # damaged: its sha256 no longer verifies
    assert generate.main(command(tiny, prompts, out)) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert [n for n in before if after[n] != before[n]] == ["00004.png", "00007.png"]  # only those two were made
    assert images(out) == images(reference) and [r["index"] for r in manifest(out)] == list(range(12))


def test_a_changed_setting_is_refused_unless_overwrite(tiny, reference_run, tmp_path, capsys):
    prompts, reference = reference_run
    out = tmp_path / "out"
    assert generate.main(command(tiny, prompts, out)) == 0
    capsys.readouterr()
    assert generate.main(command(tiny, prompts, out, "--cfg-scale", "6")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds image 0 made with a different cfg (4.0, now 6.0)" in err[0] and "--overwrite" in err[0]
    assert images(out) == images(reference)
    assert generate.main(command(tiny, prompts, out, "--cfg-scale", "6", "--overwrite")) == 0
    assert manifest(out)[0]["settings"]["cfg"] == 6.0 and images(out)["00000.png"] != images(reference)["00000.png"]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> float:
    start = time.perf_counter()
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.perf_counter() - start < timeout
        time.sleep(0.02)
    return time.perf_counter() - start


def test_killed_run_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    prompts, reference, out = suite(tmp_path, 40), tmp_path / "reference", tmp_path / "out"
    assert generate.main(command(tiny, prompts, reference)) == 0
    argv = [sys.executable, "-m", "sd3.cli", "generate", *command(tiny, prompts, out)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "00002.png", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in manifest(out)}
    assert 3 <= len(saved) < 40, "the kill came too late to test anything"
    for name in images(out):
        Image.open(out / name).load()  # every PNG on disk decodes: nothing half-written under a real name
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in saved.items())  # none redone
    assert images(out) == images(reference) and [r["index"] for r in manifest(out)] == list(range(40))


def test_first_image_is_on_disk_in_the_first_half_of_the_run(tiny, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sd3.cli", "generate", *command(tiny, suite(tmp_path, 200), out)]
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = _wait_for(out / "00000.png", process)
    assert process.wait(timeout=600) == 0
    total = time.perf_counter() - start
    assert first < total / 2, (first, total)


def test_two_torchrun_ranks_write_the_same_bytes_and_one_manifest(tiny, reference_run, tmp_path):
    prompts, _ = reference_run
    # CPU kernels sum in an order that depends on the thread count; torchrun gives each rank one
    # thread, so the single process it is compared with gets one too.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, out = tmp_path / "single", tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), *command(tiny, prompts, single)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
            str(ROOT / "scripts" / "generate.py"), *command(tiny, prompts, out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert images(out) == images(single) and len(images(out)) == 12
    assert [r["index"] for r in manifest(out)] == list(range(12)) and not list(out.glob("manifest.rank*"))
    made = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = subprocess.run([sys.executable, "-m", "sd3.cli", "generate", *command(tiny, prompts, out)],
                           capture_output=True, text=True, timeout=600)  # resumed by one process: nothing to do
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == made


PEAK = """
import resource, sys
from sd3.cli import generate
code = generate.main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def test_peak_memory_does_not_grow_with_the_list(tiny, tmp_path):
    peaks = {}
    for n in (4, 48):
        done = subprocess.run([sys.executable, "-c", PEAK, *command(tiny, suite(tmp_path, n), tmp_path / f"out{n}")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[n] = int(done.stdout.strip().splitlines()[-1]) * 1024
    assert peaks[48] - peaks[4] < 16 * 2**20, peaks  # 12 times the prompts, under 16 MiB more (measured: see docs)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--output-dir", "FILE"], "--output-dir {tmp}/file.txt is a file, not a folder"),
        (["--output-dir", "FILE/sub"], "--output-dir {tmp}/file.txt/sub cannot be written"),
        (["--final-image", "{tmp}/out.xyz"], "--final-image {tmp}/out.xyz: unknown image format '.xyz'"),
        (["--final-image", "{tmp}"], "--final-image {tmp} is a directory"),
        (["--prompts-file", "LATIN1"], "is not UTF-8 text"),
        (["--prompts-file", "BADJSON"], "line 2 is not valid JSON"),
        (["--cfg-scale", "nan", "--output-dir", "{tmp}/new"], "--cfg-scale must be a finite number, got nan"),
        (["--time-shift", "inf", "--output-dir", "{tmp}/new"], "--time-shift must be a finite number, got inf"),
    ],
)
def test_bad_inputs_fail_in_one_line_before_any_model_loads(tiny, tmp_path, capsys, monkeypatch, flags, message):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": \n')
    names = {"FILE": str(tmp_path / "file.txt"), "LATIN1": str(tmp_path / "latin1.txt"),
             "BADJSON": str(tmp_path / "bad.jsonl")}
    flags = [names.get(f.split("/")[0], f.split("/")[0]) + f[len(f.split("/")[0]):] if f.split("/")[0] in names
             else f.format(tmp=tmp_path) for f in flags]
    monkeypatch.setattr("sd3.sampling.pipeline.StableDiffusion3.__init__",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was about to load")))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if "--output-dir" not in flags and "--prompts-file" in flags:
        flags += ["--output-dir", str(tmp_path / "new")]
    assert generate.main([*local_flags(tiny), *SMALL, *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_comfyui_jobs_record_the_noise_stream_and_resume_by_it(tiny, tmp_path, capsys):
    """Under --reference comfyui image k is row k of the run seed's stream (its line's seed: row 0): the
    manifest records that seed and `batch_index`, chunks give the bytes of one pass, and a resume whose
    line now names the seed its row was drawn from, but as row 0, is refused."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a (dog:1.3)"}\n{"prompt": "a cow", "seed": 9}\n')
    one, chunked = tmp_path / "one", tmp_path / "chunked"
    assert generate.main(command(tiny, prompts, one, "--reference", "comfyui")) == 0
    assert generate.main(command(tiny, prompts, chunked, "--reference", "comfyui", "--chunk-size", "1")) == 0
    assert images(one) == images(chunked)
    assert [(r["seed"], r["batch_index"]) for r in sorted(manifest(one), key=lambda r: r["index"])] == [(3, 0), (3, 1), (9, 0)]
    capsys.readouterr()
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a (dog:1.3)", "seed": 3}\n{"prompt": "a cow", "seed": 9}\n')
    assert generate.main(command(tiny, prompts, one, "--reference", "comfyui")) == 1
    assert "holds image 1 made with a different batch_index" in capsys.readouterr().err
