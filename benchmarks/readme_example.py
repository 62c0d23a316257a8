"""Regenerate the README's example evaluation table (tiny models; numbers meaningless).

    python benchmarks/readme_example.py            # prints the tables (~1 min on 2 CPU cores)
    python benchmarks/readme_example.py --write    # and replaces them in README.md and docs/evaluation.md

It runs exactly the README's two commands, ``fit --config conf/tiny.yaml`` then ``evaluate
--config conf/eval/tiny.yaml``, in a scratch folder, and takes from ``table.md`` the ASR/ORR table
(README.md) and the whole Table 1 report, interventions included (docs/evaluation.md).
``tests/integration/test_readme_example.py`` (slow) runs it and checks that both files hold what it
produced, so the docs cannot go stale silently.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs" / "evaluation.md"
BEGIN = "<!-- readme_example: begin (python benchmarks/readme_example.py --write) -->"
END = "<!-- readme_example: end -->"


def _table_md(scratch: Path) -> str:
    """``table.md`` of a fresh tiny run's evaluation."""
    runs = scratch / "runs"
    subprocess.run([sys.executable, "-m", "waltzlit", "fit", "--config", "conf/tiny.yaml",
                    f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = runs / "tiny" / "version_0"
    subprocess.run([sys.executable, "-m", "waltzlit", "evaluate", "--config", "conf/eval/tiny.yaml",
                    f"--base.config={run / 'config.yaml'}", f"--trained.exported={run / 'agents'}",
                    f"--output_dir={scratch / 'eval'}", "--progress=false"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (scratch / "eval" / "table.md").read_text()


def blocks(table_md: str) -> dict[Path, str]:
    """What goes between the markers: README.md takes the ASR/ORR table (the lines of table.md up
    to the interventions part); docs/evaluation.md the Table 1 report without its heading."""
    lines = table_md.strip().splitlines()
    first: list[str] = []
    for line in lines:
        if line.startswith("|"):
            first.append(line)
        elif first:  # the first table ends
            break
    report = [line for line in lines if not line.startswith("### ")]
    return {README: "\n".join(first), DOCS: "\n".join(report).strip()}


def regenerate(scratch: Path) -> dict[Path, str]:
    """Each file's block, from a fresh run in ``scratch``."""
    return blocks(_table_md(scratch))


def current(path: Path) -> str:
    """The block ``path`` holds now."""
    text = path.read_text()
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip()


def write(path: Path, block: str) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in README.md and docs/evaluation.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        produced = regenerate(Path(scratch))
    print(produced[DOCS])
    if args.write:
        for path, block in produced.items():
            write(path, block)


if __name__ == "__main__":
    main()
