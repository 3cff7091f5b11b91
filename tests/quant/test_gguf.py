"""GGUF files: MMDiT (ComfyUI-GGUF and stable-diffusion.cpp layouts) and T5, every supported type, and the errors."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from sd3 import load_mmdit, load_t5  # noqa: E402
from sd3.errors import ModelLoadingError  # noqa: E402
from sd3.quant import is_quantized, state_bytes  # noqa: E402
from sd3.quant.ggml import BLOCK_TYPES  # noqa: E402
from sd3.quant.gguf_file import gguf_t5_name, t5_name  # noqa: E402
from sd3.quant.writer import write_gguf  # noqa: E402
from sd3.testing.tiny.mmdit import TinyMMDiT, mmdit_state_dict  # noqa: E402
from tests.quant.conftest import gguf_reference, mmdit_inputs, relative_error  # noqa: E402
from tests.quant.test_ggml import random_blocks  # noqa: E402

LEGACY = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("layout", ["comfyui", "sd.cpp"])
@pytest.mark.parametrize("qtype", LEGACY)
def test_mmdit_is_its_dequantised_model_and_stays_quantised(tiny, tmp_path, qtype, layout):
    path = write_gguf(tiny.checkpoint, tmp_path / f"mmdit-{qtype}.gguf", qtype, layout=layout)
    reader = gguf.GGUFReader(path)
    architecture = reader.get_field("general.architecture")
    names = [t.name for t in reader.tensors]
    if layout == "comfyui":
        assert bytes(architecture.parts[-1]).decode() == "sd3" and "joint_blocks.0.x_block.attn.qkv.weight" in names
    else:
        assert architecture is None and "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight" in names
    model = load_mmdit(path)
    qkv = model.joint_blocks[0].x_block.attn.qkv
    assert is_quantized(qkv) and qkv.parametrizations.weight.original.dtype == torch.uint8
    reference = load_mmdit(gguf_reference(path))
    inputs = mmdit_inputs(model.config)
    assert relative_error(model(*inputs), reference(*inputs)) <= 1e-5
    assert state_bytes(model) <= state_bytes(load_mmdit(tiny.checkpoint)) / 2


def write_k_quant_mmdit(path, seed=0):
    """A mixed k-quant file as stable-diffusion.cpp writes them: each 2-D weight whose rows hold whole
    256-value blocks in one of Q2_K..Q6_K (random blocks, small factors), the rest in F32.

    The gguf package has no k-quant quantiser, so the blocks are random; the model is then random too."""
    arch = TinyMMDiT(depth=2, heads=4)  # hidden 256: rows of 256 and 1024 values
    writer = gguf.GGUFWriter(str(path), arch="sd3")
    kinds = iter(K_QUANTS * 100)
    for i, (name, value) in enumerate(mmdit_state_dict(arch, seed=seed, prefix="").items()):
        if value.dim() == 2 and value.shape[1] % 256 == 0:
            kind = next(kinds)
            raw = random_blocks(kind, value.shape[0], value.shape[1] // 256, seed=i, factor=1e-3)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            writer.add_tensor(name, value.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_k_quant_mmdit_is_its_dequantised_model(tmp_path):
    path = write_k_quant_mmdit(tmp_path / "mmdit-k.gguf")
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert set(K_QUANTS) <= types
    model = load_mmdit(path)
    reference = load_mmdit(gguf_reference(path))
    inputs = mmdit_inputs(model.config)
    expected = reference(*inputs)
    assert torch.isfinite(expected).all() and expected.abs().max() > 0
    assert relative_error(model(*inputs), expected) <= 1e-5


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_t5_with_llama_cpp_names(tiny, tmp_path, qtype):
    path = write_gguf(tiny.checkpoint, tmp_path / f"t5-{qtype}.gguf", qtype, component="t5")
    reader = gguf.GGUFReader(path)
    assert bytes(reader.get_field("general.architecture").parts[-1]).decode() == "t5encoder"
    assert "enc.blk.0.attn_rel_b.weight" in [t.name for t in reader.tensors]
    t5 = load_t5(path)
    ids = torch.randint(0, tiny.t5.vocab, (2, 9))
    expected = load_t5(gguf_reference(path, rename=t5_name))(ids)
    assert relative_error(t5(ids), expected) <= 1e-5
    assert state_bytes(t5) <= state_bytes(load_t5(tiny.checkpoint)) / 2


def test_t5_names_map_onto_the_original_model(tiny, tmp_path):
    """An F16 GGUF T5 (names renamed twice) computes what the safetensors T5 does, to float16 rounding."""
    path = write_gguf(tiny.checkpoint, tmp_path / "t5-f16.gguf", "F16", component="t5")
    ids = torch.randint(0, tiny.t5.vocab, (2, 9))
    assert relative_error(load_t5(path)(ids), load_t5(tiny.checkpoint)(ids)) < 5e-3
    assert gguf_t5_name("encoder.block.3.layer.1.DenseReluDense.wi_0.weight") == "enc.blk.3.ffn_gate.weight"
    assert t5_name("enc.blk.3.ffn_gate.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"


def _write(path, arch, tensors):
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, (values, kind) in tensors.items():
        writer.add_tensor(name, values, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_another_architecture_is_named(tmp_path):
    flat = (np.ones((4, 32), dtype=np.float32), None)
    with pytest.raises(ModelLoadingError, match=r"another model \(architecture 'flux'\)"):
        load_mmdit(_write(tmp_path / "flux.gguf", "flux", {"img_in.weight": flat}))
    with pytest.raises(ModelLoadingError, match=r"another model \(architecture 'llama'\)"):
        load_t5(_write(tmp_path / "llm.gguf", "llama", {"token_embd.weight": flat}))
    sdxl = _write(tmp_path / "sdxl.gguf", "sd3", {"model.diffusion_model.input_blocks.0.0.weight": flat})
    with pytest.raises(ModelLoadingError, match=r"another model \(Stable Diffusion 1.x/2.x or SDXL"):
        load_mmdit(sdxl)


def test_an_unsupported_type_is_named_with_the_supported_ones(tmp_path):
    kind = gguf.GGMLQuantizationType.IQ4_NL  # llama.cpp's non-linear 4-bit type, which we do not dequantise
    raw = np.zeros((4, gguf.GGML_QUANT_SIZES[kind][1]), dtype=np.uint8)  # one block per row
    path = _write(tmp_path / "iq4_nl.gguf", "sd3", {"pos_embed": (raw, kind)})
    supported = ", ".join(["F32", "F16", "BF16", *BLOCK_TYPES])
    with pytest.raises(ModelLoadingError, match=rf"'pos_embed' is stored as IQ4_NL.*supported: {supported}"):
        load_mmdit(path)


def test_a_truncated_file_says_so(tiny, tmp_path):
    path = write_gguf(tiny.checkpoint, tmp_path / "mmdit.gguf", "Q8_0")
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 20):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelLoadingError, match="truncated"):
            load_mmdit(tmp_path / "cut.gguf")


def test_a_whole_file_of_another_kind_is_not_called_truncated(tiny, tmp_path):
    data = bytearray(write_gguf(tiny.checkpoint, tmp_path / "mmdit.gguf", "Q8_0").read_bytes())
    newer = bytearray(data)
    newer[4:8] = (99).to_bytes(4, "little")
    (tmp_path / "v99.gguf").write_bytes(newer)
    (tmp_path / "other.gguf").write_bytes(b"GGML" + data[4:])
    for name, message in (("v99.gguf", "is a GGUF file of version 99; this project reads GGUF versions 2, 3"),
                          ("other.gguf", "is not a GGUF file")):
        with pytest.raises(ModelLoadingError, match=message) as info:
            load_mmdit(tmp_path / name)
        assert "truncated" not in str(info.value) and "download it again" not in str(info.value)


def test_without_the_gguf_package_the_message_says_what_to_install(tiny, tmp_path, monkeypatch):
    path = write_gguf(tiny.checkpoint, tmp_path / "mmdit.gguf", "Q8_0")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(ModelLoadingError, match=r"pip install 'sd3-from-scratch\[gguf\]'"):
        load_mmdit(path)


def test_the_writer_refuses_k_quants_and_keeps_rows_it_cannot_block(tiny, tmp_path):
    from sd3.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="no quantiser for the k-quants"):
        write_gguf(tiny.checkpoint, tmp_path / "k.gguf", "Q4_K")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(
        write_gguf(tiny.checkpoint, tmp_path / "m.gguf", "Q4_0")).tensors}
    assert types["joint_blocks.0.x_block.attn.qkv.weight"] == "Q4_0"
    assert types["joint_blocks.0.x_block.attn.qkv.bias"] == "F32"  # 1-D
    assert types["x_embedder.proj.weight"] == "F16"  # a 4-D conv (and the source is float32)
    assert types["pos_embed"] == "F16"  # read whole at every step: never quantised
