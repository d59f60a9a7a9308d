"""Which numbers in a notebook's prose are backed by nothing.

A notebook's markdown quotes its own results ("fold 0 scored 0.071"). Each
re-execution moves the outputs, and prose left behind teaches a wrong number.
A decimal number in a markdown cell is *backed* when one of these holds:

- an output of the same section prints it (the cells between two ``## `` headings), as
  written or rounded from a longer printed value (``0.0714`` backs ``0.071`` and
  ``0.07``); a sentence that names another section (``section 4``) or links another
  notebook (``[notebook 05](05_nms.ipynb)``) is backed by that section's or notebook's
  outputs too. (Outputs of the whole notebook would back almost any three-digit number
  by coincidence: a notebook prints hundreds of them.)
- a code cell of the same notebook contains it (a parameter: ``lr=0.02``);
- the sentence or table row around it links its source (``[paper](https://...)``, or
  a numbered reference ``[2]`` whose ``[2] https://...`` line is in the notebook);
- it is a code span's setting the text proposes (``iou_thr=0.2``: a code span with ``=``;
  in an Exercises section, any code span: ``0.3``);
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
SECTION_MENTION = re.compile(r"\bsections? (\d+\.\d+)", re.IGNORECASE)
SECTION_NAMED = re.compile(r"\bsections? (\d+)\b(?!\.\d)", re.IGNORECASE)
SECTION_HEADING = re.compile(r"^## (?:(\d+)\.)?", re.MULTILINE)
NOTEBOOK_LINK = re.compile(r"\]\((\d\d_\w+\.ipynb)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
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


def _split_sections(cells: list[dict]) -> tuple[list[int], dict[str, int], set[int]]:
    """Each cell's section index (a new one at every ``## `` heading), the index of each
    numbered section (``## 4. ...`` -> "4"), and the indices of Exercises sections."""
    index, numbered, exercises, of_cell = 0, {}, set(), []
    for cell in cells:
        text = _text(cell["source"])
        if cell["cell_type"] == "markdown":
            for match in SECTION_HEADING.finditer(text):
                index += 1
                if match.group(1):
                    numbered[match.group(1)] = index
                if "exercises" in text[match.start() :].split("\n", 1)[0].lower():
                    exercises.add(index)
        of_cell.append(index)  # a heading cell belongs to the section it opens (its last)
    return of_cell, numbered, exercises


def unbacked_numbers(notebook: dict, name: str, folder: Path | None = None) -> list[Unbacked]:
    """The decimals in ``notebook``'s markdown that nothing backs (see the module's rules).

    ``folder`` holds the notebooks a sentence may link (default: none are read).
    """
    cells = notebook["cells"]
    of_cell, numbered, exercises = _split_sections(cells)
    code = [c for c in cells if c["cell_type"] == "code"]
    parameters = backing_numbers([{**c, "outputs": []} for c in code])
    by_section: dict[int, set[str]] = {}
    for section in set(of_cell):
        members = [c for c, s in zip(cells, of_cell, strict=True) if s == section]
        by_section[section] = backing_numbers([c for c in members if c["cell_type"] == "code"])
    markdown = [_text(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    references = {n for text in markdown for n in REFERENCE_LINE.findall(text)}
    headings = {n for text in markdown for n in HEADING_NUMBER.findall(text)}
    context = _Context(parameters, by_section, numbered, exercises, references, headings)
    found: list[Unbacked] = []
    for number, (cell, last) in enumerate(zip(cells, of_cell, strict=True), start=1):
        if cell["cell_type"] != "markdown":
            continue
        text = _text(cell["source"])
        section = last - len(SECTION_HEADING.findall(text))  # the one before its headings
        for chunk in re.split(r"(?m)^(?=## )", text):
            section += chunk.startswith("## ")
            found += _unbacked_in(chunk, section, number, name, folder, context)
    return found


@dataclass(frozen=True)
class _Context:
    """What a notebook offers to back its prose's numbers (see unbacked_numbers)."""

    parameters: set[str]
    by_section: dict[int, set[str]]
    numbered: dict[str, int]
    exercises: set[int]
    references: set[str]
    headings: set[str]


def _unbacked_in(
    text: str, section: int, number: int, name: str, folder: Path | None, context: _Context
) -> list[Unbacked]:
    """The unbacked decimals of the part of markdown cell ``number`` in ``section``."""
    found = []
    for sentence in _sentences(text):
        if LINK.search(sentence) or set(REFERENCE.findall(sentence)) & context.references:
            continue
        backed = context.parameters | context.by_section.get(section, set())
        for named in SECTION_NAMED.findall(sentence):
            backed |= context.by_section.get(context.numbered.get(named, -1), set())
        for linked in NOTEBOOK_LINK.findall(sentence):
            if folder is not None and (folder / linked).is_file():
                backed |= backing_numbers(json.loads((folder / linked).read_text())["cells"])
        spans = CODE_SPAN.findall(sentence) if section in context.exercises else []
        spans += SETTING_SPAN.findall(sentence)
        backed |= {d for span in spans for d in DECIMAL.findall(span)}
        backed |= set(SECTION_MENTION.findall(sentence)) & context.headings
        for decimal in DECIMAL.findall(sentence):
            if decimal not in backed and (name, decimal) not in ALLOWED:
                found.append(Unbacked(name, number, decimal, sentence.strip()))
    return found


def unbacked_in_file(path: Path) -> list[Unbacked]:
    return unbacked_numbers(json.loads(path.read_text()), path.name, path.parent)
