"""Regenerate the README's example evaluation table (tiny models; numbers meaningless).

    python benchmarks/readme_example.py            # prints the table (~4 min on 2 CPU cores)
    python benchmarks/readme_example.py --write    # and replaces it in README.md

It runs exactly the README's two commands, ``fit --config conf/tiny.yaml`` then ``evaluate
--config conf/eval/tiny.yaml``, in a scratch folder, and takes the ASR/ORR table of
``table.md``. ``tests/integration/test_readme_example.py`` (slow) runs it and checks that the
README holds that table, so the docs cannot go stale silently.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN = "<!-- readme_example: begin (python benchmarks/readme_example.py --write) -->"
END = "<!-- readme_example: end -->"


def regenerate(scratch: Path) -> str:
    """The ASR/ORR table of a fresh tiny run's evaluation (the lines of table.md up to the FTR part)."""
    runs = scratch / "runs"
    subprocess.run([sys.executable, "-m", "waltzlit", "fit", "--config", "conf/tiny.yaml",
                    f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = runs / "tiny" / "version_0"
    subprocess.run([sys.executable, "-m", "waltzlit", "evaluate", "--config", "conf/eval/tiny.yaml",
                    f"--base.config={run / 'config.yaml'}", f"--trained.exported={run / 'agents'}",
                    f"--output_dir={scratch / 'eval'}", "--progress=false"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table: list[str] = []
    for line in (scratch / "eval" / "table.md").read_text().splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:  # the first table ends; the second (interventions) is not shown in the README
            break
    return "\n".join(table)


def readme_table() -> str:
    text = README.read_text()
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    return "\n".join(line for line in block.splitlines() if line.startswith("|"))


def write(table: str) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        table = regenerate(Path(scratch))
    print(table)
    if args.write:
        write(table)


if __name__ == "__main__":
    main()
