"""Text that ships with Python, for the embedded `tiny` family: pre-training prose, code, three SFT sets.

Everything comes from the standard-library install that runs this module, so nothing is downloaded:

* prose: the pydoc reference topics (`pydoc_data.topics`, the text behind `help("assert")`), split by topic
  into "train" and "heldout" with a stable hash of the topic key (about 10% held out);
* code: standard-library `.py` sources, in sorted path order, test directories excluded;
* three different post-training sets (`instruction_pairs`): pydoc topics in an Alpaca-like template, module
  docstrings as a chat, builtin docstrings as Q/A.

The functions are pure and deterministic for a given Python installation (sorted inputs, no randomness),
but the text itself changes between Python versions, so the trained family records the version it used.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

__all__ = [
    "SPLITS", "INSTRUCTION_KINDS", "prose_topics", "topic_split", "pretrain_text", "heldout_text",
    "code_text", "instruction_pairs",
]

SPLITS = ("train", "heldout")
INSTRUCTION_KINDS = ("instruct", "chat", "qa")
HELDOUT_MODULUS = 10          # a topic is held out when sha256(key) % 10 == 0, i.e. ~10% of topics
DOC_SEPARATOR = "\n\n"
# Directory names never read for code (tests are huge, repetitive and full of deliberately odd code).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
_MAX_ANSWER_CHARS = 600       # answers are cut at a paragraph boundary below this, so SFT examples stay short
_MIN_ANSWER_WORDS = 4
_VERSION_NOTES = ("New in version", "Changed in version", "Deprecated since version")
# Methods of these builtin types join the builtin functions and classes in the "qa" set.
_QA_TYPES = (str, bytes, list, tuple, dict, set, int, float)


def prose_topics() -> dict[str, str]:
    """All pydoc reference topics, key -> text, in sorted key order."""
    from pydoc_data.topics import topics
    return {key: topics[key] for key in sorted(topics)}


def topic_split(key: str) -> str:
    """Which split a topic belongs to: "heldout" when sha256(key) % 10 == 0, else "train".

    A hash of the key (not of the text, not a random draw) keeps the split stable across runs and
    machines, and a topic whose text changes between Python versions stays on the same side.
    """
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    return "heldout" if digest % HELDOUT_MODULUS == 0 else "train"


def pretrain_text(split: str = "train") -> str:
    """The prose of one split: its topics' texts joined by blank lines, in sorted key order.

    Args:
        split: "train" (pre-training text) or "heldout" (never trained on; see `heldout_text`).

    Returns:
        The concatenated topic texts.

    Raises:
        ValueError: `split` is not one of `SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return DOC_SEPARATOR.join(text for key, text in prose_topics().items() if topic_split(key) == split)


def heldout_text() -> str:
    """The package's embedded evaluation text: the held-out pydoc topics (no `tiny` variant saw them)."""
    return pretrain_text("heldout")


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def _stdlib_sources() -> tuple[tuple[str, str], ...]:
    """(relative path, source) of every readable standard-library `.py` file outside test dirs, sorted."""
    root = _stdlib_dir()
    out = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        try:
            out.append((rel.as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue    # a few files are deliberately not UTF-8; skipping keeps the list stable
    return tuple(out)


def code_text(max_bytes: int = 2_000_000) -> str:
    """Standard-library Python source, whole files in sorted path order, up to `max_bytes` UTF-8 bytes.

    Each file is preceded by a `# file: <relative path>` line. Files are added while the total stays
    within the cap (the first file is cut if it alone is too long), so the text is a fixed prefix list.

    Args:
        max_bytes: cap on the UTF-8 size of the returned text.

    Returns:
        The concatenated sources.
    """
    parts, used = [], 0
    for rel, source in _stdlib_sources():
        chunk = f"# file: {rel}\n{source.rstrip()}\n{DOC_SEPARATOR}"
        size = len(chunk.encode("utf-8"))
        if used + size > max_bytes:
            if not parts:
                parts.append(chunk.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore"))
            break
        parts.append(chunk)
        used += size
    return "".join(parts)


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a text, each re-flowed onto one line.

    Dropped: indented blocks (code samples, grammar productions), headings and their underlines, version
    notes ("New in version 3.10."), and fragments under `_MIN_ANSWER_WORDS` words (signatures, "Note:").
    """
    paras = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not lines or block.lstrip("\n").startswith(" ") or set(lines[-1]) <= set("*=-~^"):
            continue
        para = " ".join(lines)
        if para.startswith(_VERSION_NOTES) or len(para.split()) < _MIN_ANSWER_WORDS:
            continue
        paras.append(para)
    return paras


def _answer(text: str | None) -> str:
    """First paragraph(s) of a docstring, up to `_MAX_ANSWER_CHARS` (always at least the first one)."""
    paras = _paragraphs(text or "")
    if not paras:
        return ""
    out = paras[0]
    for para in paras[1:]:
        if len(out) + 1 + len(para) > _MAX_ANSWER_CHARS:
            break
        out += "\n" + para
    return out[: 2 * _MAX_ANSWER_CHARS]


_HEADING = re.compile(r"\n\n([^\n]+)\n[=\-]+\n")    # a section title underlined with = or -


def _sections(text: str) -> list[tuple[str, str]]:
    """(title, body) of a pydoc topic's sections; the first is the topic's own title and introduction."""
    title, _, rest = text.partition("\n")
    pieces = _HEADING.split("\n" + rest)    # [intro, title1, body1, title2, body2, ...]
    return [(title.strip(), pieces[0])] + list(zip(pieces[1::2], pieces[2::2]))


@lru_cache(maxsize=1)
def _instruct_pairs() -> tuple[tuple[str, str], ...]:
    # One pair per section of each train topic: "explain X" -> the section's opening paragraph.
    pairs = []
    for key, text in prose_topics().items():
        if topic_split(key) != "train":
            continue
        for i, (title, body) in enumerate(_sections(text)):
            paras = _paragraphs(body)
            if not paras:
                continue
            subject = f"the Python topic '{key}'" if i == 0 else f"'{title}' (Python topic '{key}')"
            pairs.append((f"### Instruction:\nExplain {subject}.\n### Response:\n", paras[0]))
    return tuple(pairs)


def _module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=1)
def _chat_pairs() -> tuple[tuple[str, str], ...]:
    # Module docstrings read with `ast` (never imported: importing arbitrary stdlib modules has effects).
    pairs = []
    for rel, source in _stdlib_sources():
        name = _module_name(rel)
        if not name or any(part.startswith("_") for part in name.split(".")):
            continue
        try:
            doc = ast.get_docstring(ast.parse(source))
        except (SyntaxError, ValueError):
            continue
        answer = _answer(doc)
        if answer:
            pairs.append((f"User: What is the `{name}` module for?\nAssistant: ", answer))
    return tuple(pairs)


@lru_cache(maxsize=1)
def _qa_pairs() -> tuple[tuple[str, str], ...]:
    # Builtin functions and classes, then public methods of the common builtin types, help()-style.
    objects = [(name, getattr(builtins, name)) for name in sorted(dir(builtins))
               if not name.startswith("_") and callable(getattr(builtins, name))]
    for cls in _QA_TYPES:
        objects += [(f"{cls.__name__}.{name}", getattr(cls, name)) for name in sorted(vars(cls))
                    if not name.startswith("_")]
    pairs = []
    for name, obj in objects:
        answer = _answer(inspect.getdoc(obj))
        if answer:
            pairs.append((f"Q: What does `{name}` do?\nA: ", answer))
    return tuple(pairs)


def instruction_pairs(kind: str) -> list[tuple[str, str]]:
    """Prompt/answer pairs of one post-training data set.

    The three kinds differ in template and source, so SFT variants of the same base see different data:

    * "instruct": `### Instruction: / ### Response:` over the train pydoc topics (held-out topics excluded);
    * "chat": `User: / Assistant:` over standard-library module docstrings (read with `ast`);
    * "qa": `Q: / A:` over docstrings of builtins and of builtin types' methods (`inspect.getdoc`).

    Args:
        kind: one of `INSTRUCTION_KINDS`.

    Returns:
        (prompt, answer) pairs in a fixed order; the prompt ends where the answer starts. Answers carry no
        end-of-sequence marker: the trainer appends the tokenizer's eos token.

    Raises:
        ValueError: `kind` is unknown.
    """
    builders = {"instruct": _instruct_pairs, "chat": _chat_pairs, "qa": _qa_pairs}
    if kind not in builders:
        raise ValueError(f"unknown instruction kind {kind!r}; expected one of {INSTRUCTION_KINDS}")
    return list(builders[kind]())    # cached builders; a fresh list so callers may mutate it
