"""The `sd3` command (installed with the package): `sd3 generate`, `sd3 quantize`, `sd3 audit`, `sd3 benchmark`.

    sd3 generate --which 3.5-medium --prompt "a photo of a cat" --final-image cat.png
    sd3 quantize t5xxl_fp16.safetensors t5xxl_fp8.safetensors --to fp8   # fp8 or GGUF files
    sd3 audit            # ours against diffusers, module by module (needs the [test] extra)
    sd3 benchmark --quick

Each subcommand's options: `sd3 SUBCOMMAND --help`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> (module with a `main(argv)`, one line of help, packages it needs beyond the library's)
COMMANDS = {
    "generate": ("sd3.cli.generate", "text to image, with the flags of Candle's stable-diffusion-3 example", ()),
    "quantize": ("sd3.cli.quantize", "write fp8 (.safetensors) or GGUF files from a checkpoint", ()),
    "audit": ("sd3.testing.audit", "parity audit against diffusers, module by module",
              ("diffusers", "transformers", "matplotlib")),
    "benchmark": ("sd3.testing.benchmark", "speed and memory against diffusers on the same files",
                  ("diffusers", "transformers")),
}


def usage() -> str:
    lines = ["usage: sd3 {" + ",".join(COMMANDS) + "} [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_, _) in COMMANDS.items()]
    return "\n".join(lines + ["", "sd3 COMMAND --help lists a command's options."])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, needs = COMMANDS[argv[0]]
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: sd3 {argv[0]} needs {', '.join(missing)}: pip install 'sd3-from-scratch[test]'", file=sys.stderr)
        return 1
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
