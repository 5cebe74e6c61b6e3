"""The ChatterBot corpus as labelled sentences: ``--data chatterbot`` (every language) or
``--data chatterbot:english`` / ``chatterbot:english,german`` (those languages only).

The corpus is read from the files of the ``chatterbot-corpus`` package (pure data, no code runs):
``chatterbot_corpus/data/<language>/<topic>.yml``, each a list of conversations, each a list of
utterances. Every utterance becomes one row with the columns

    text      the utterance, white space collapsed to single spaces (case and punctuation kept)
    language  the folder name (english, german, ...; 28 languages in version 1.3.3)
    topic     the file name without .yml (ai, emotion, food, ...; about 20 topics per large language)

Duplicates are removed: one row per distinct (language, text). An utterance found under several
topics of a language (e.g. "Hello" in greetings and conversations) keeps the first topic in file-name
order. Rows come in a fixed order (languages, then topics, then as written), so a row's "line" in
cvae's skip messages is its 1-based position in that order.

    python -m pip install --no-deps chatterbot-corpus==1.3.3
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CvaeError

INSTALL = "python -m pip install --no-deps chatterbot-corpus==1.3.3"
COLUMNS = ["text", "language", "topic"]


def corpus_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise CvaeError(f"--data chatterbot is read from the files of the chatterbot-corpus package: {INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0], "data")
    if not folder.is_dir():
        raise CvaeError(f"the chatterbot-corpus package has no data folder at {folder}; reinstall it: {INSTALL}")
    return folder


def languages() -> list[str]:
    return sorted(p.name for p in corpus_folder().iterdir() if p.is_dir() and any(p.glob("*.yml")))


def _utterances(conversations) -> list:
    """The utterances of a file's conversations (a bare string is a conversation of one utterance)."""
    out = []
    for conv in conversations or []:
        out += [conv] if not isinstance(conv, list) else conv
    return out


def _text(value) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""  # not an utterance: counted as an empty cell by the loader
    return " ".join(str(value).split())


def chatterbot_rows(option: str | None = None) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows ``[text, language, topic]`` and their positions (see the module's docstring)."""
    import yaml

    folder = corpus_folder()
    known = languages()
    if option:
        wanted = [w.strip().lower() for w in option.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in known]
        if unknown or not wanted:
            raise CvaeError(f"--data chatterbot:{option}: no language {', '.join(unknown) or '(empty)'} in the "
                            f"corpus; choose from {', '.join(known)} (comma-separated)")
    else:
        wanted = known
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    rows, seen = [], set()
    for language in wanted:
        for path in sorted((folder / language).glob("*.yml")):
            try:
                doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise CvaeError(f"cannot read {path}: {str(e).splitlines()[0]}; reinstall the package: {INSTALL}") from None
            conversations = doc.get("conversations") if isinstance(doc, dict) else None
            for value in _utterances(conversations):
                text = _text(value)
                if text and (language, text) in seen:
                    continue
                seen.add((language, text))
                rows.append([text, language, path.stem])
    if not rows:
        raise CvaeError(f"the chatterbot corpus at {folder} holds no conversations; reinstall it: {INSTALL}")
    return list(COLUMNS), rows, list(range(1, len(rows) + 1))
