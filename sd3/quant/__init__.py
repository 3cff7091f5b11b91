"""Low-precision weights: fp8 safetensors files and GGUF files, kept quantised in memory.

    model = load_mmdit("sd3.5_large-Q4_0.gguf", dtype=torch.bfloat16)      # blocks stay 4.5 bits a value
    t5 = load_t5("t5xxl_fp8_e4m3fn_scaled.safetensors", dtype=torch.bfloat16)

Files: `weights.py` (the stored tensor and the parametrization that dequantises it per layer),
`ggml.py` (GGML block formats in torch), `fp8.py` (fp8 scale conventions), `gguf_file.py` (GGUF
reading), `writer.py` (making fp8 and GGUF files from ours). docs/reference.md §8 has the formats.
"""

from sd3.quant.weights import FP8, SUPPORTED, Dequantize, QuantizedTensor, attach, compute_in, is_quantized, state_bytes

__all__ = ["FP8", "SUPPORTED", "Dequantize", "QuantizedTensor", "attach", "compute_in", "is_quantized", "state_bytes"]
