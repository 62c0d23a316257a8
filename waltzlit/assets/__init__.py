"""Files shipped with waltzlit, by path: the tiny models' tokenizer and the public prompt sets.

A leaf module (imports nothing from waltzlit), so any layer may name these paths.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TINY_TOKENIZER_DIR = str(ASSETS_DIR / "tiny_tokenizer")
"""The bundled tokenizer of the tiny test models (vocab 512, chat template)."""
PROMPTS_DIR = ASSETS_DIR / "prompts"
"""XSTest, AdvBench and JailbreakBench, with licences and checksums (prompts/README.md)."""
