"""Which numbers in a notebook's prose are backed by nothing.

A notebook's markdown quotes its own results ("fold 0 scored 0.071"). Each
re-execution moves the outputs, and prose left behind teaches a wrong number.
A decimal number in a markdown cell is *backed* when one of these holds:

- an output of the same notebook prints it, as written or rounded from a longer
  printed value (``0.0714`` backs ``0.071`` and ``0.07``);
- a code cell of the same notebook contains it (a parameter: ``lr=0.02``);
- the sentence or table row around it links its source (``[paper](https://...)``, or
  a numbered reference ``[2]`` whose ``[2] https://...`` line is in the notebook);
- it is a code span's setting the text proposes (``iou_thr=0.2``: a code span with ``=``);
- it names a section (``section 6.1``) whose heading the notebook has; headings'
  own numbers are not checked;
- :data:`ALLOWED` lists it for that notebook, with the reason.

Integers are not checked (counts of classes, radiologists, folds are parameters
of the task); version numbers (``2.0.8``) are not decimals.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

# A decimal: digits, a point, digits; not part of a version (2.0.8), an address or a word.
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w]|\.\d)")
# Any number an output prints, including ones with more digits than the prose quotes.
PRINTED = re.compile(r"(?<![\w.])-?(\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w])")
LINK = re.compile(r"\]\((?:https?://|\.\./|\.\./README)|<https?://")
REFERENCE = re.compile(r"\[(\d+)\]")
REFERENCE_LINE = re.compile(r"^\s*\[(\d+)\]:?\s+.*https?://", re.MULTILINE)
SETTING_SPAN = re.compile(r"`[^`]*=[^`]*`")
SECTION_MENTION = re.compile(r"\bsections? (\d+\.\d+)")
HEADING_NUMBER = re.compile(r"^#+\s+(\d+(?:\.\d+)*)\b", re.MULTILINE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(*`])")

# The rare number that is right but has no output, parameter or link in its sentence.
# (notebook name, number): reason. Keep it short: most numbers can be printed by a cell.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Unbacked:
    """A decimal in a markdown cell that nothing in the notebook backs."""

    notebook: str
    cell: int  # 1-based, counting every cell, as JupyterLab numbers them
    number: str
    sentence: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.cell}: {self.number!r} in {self.sentence[:140]!r}"


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def _outputs_text(cells: list[dict]) -> str:
    parts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                parts.append(_text(output["text"]))
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in output.get("data", {}):
                    parts.append(_text(output["data"][mime]))
    return "\n".join(parts)


def _roundings(printed: str) -> set[str]:
    """``printed`` and every shorter rounding of it (half-up and half-even)."""
    if "e" in printed:
        return {printed}
    found = {printed}
    value = Decimal(printed)
    digits = len(printed.split(".")[1]) if "." in printed else 0
    for places in range(digits):
        quantum = Decimal(1).scaleb(-places)
        for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN):
            found.add(str(value.quantize(quantum, rounding=mode)))
    return found


def backing_numbers(cells: list[dict]) -> set[str]:
    """Every decimal the outputs print (with its roundings) or a code cell contains."""
    backed: set[str] = set()
    for printed in PRINTED.findall(_outputs_text(cells)):
        backed |= _roundings(printed)
        if "." in printed:  # 0.50 printed backs 0.5 written
            backed.add(printed.rstrip("0").rstrip("."))
    for cell in cells:
        if cell["cell_type"] == "code":  # a parameter, or a measurement its comment quotes
            for written in PRINTED.findall(_text(cell["source"])):
                backed |= _roundings(written)
    return backed


def _sentences(markdown: str) -> list[str]:
    """Table rows and list items whole; running text split into sentences; no headings."""
    found = []
    for block in re.split(r"\n(?=\s*(?:\||[-*] |\d+\. |#))|\n\s*\n", markdown):
        if block.lstrip().startswith("#"):
            continue
        if block.lstrip().startswith("|"):
            found += block.splitlines()
        else:
            found += SENTENCE_END.split(block)
    return found


def unbacked_numbers(notebook: dict, name: str) -> list[Unbacked]:
    """The decimals in ``notebook``'s markdown that nothing backs (see the module's rules)."""
    cells = notebook["cells"]
    backed = backing_numbers(cells)
    markdown = [_text(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    references = {n for text in markdown for n in REFERENCE_LINE.findall(text)}
    sections = {n for text in markdown for n in HEADING_NUMBER.findall(text)}
    found = []
    for number, cell in enumerate(cells, start=1):
        if cell["cell_type"] != "markdown":
            continue
        for sentence in _sentences(_text(cell["source"])):
            if LINK.search(sentence) or set(REFERENCE.findall(sentence)) & references:
                continue
            proposed = {d for span in SETTING_SPAN.findall(sentence) for d in DECIMAL.findall(span)}
            named = set(SECTION_MENTION.findall(sentence)) & sections
            for decimal in DECIMAL.findall(sentence):
                if decimal in backed | proposed | named or (name, decimal) in ALLOWED:
                    continue
                found.append(Unbacked(name, number, decimal, sentence.strip()))
    return found


def unbacked_in_file(path: Path) -> list[Unbacked]:
    return unbacked_numbers(json.loads(path.read_text()), path.name)
