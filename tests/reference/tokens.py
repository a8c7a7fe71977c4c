#!/usr/bin/env python3
"""Reference CLIP token ids for crate/tests/tokenizer.rs.

Writes tests/fixtures/tokens.json: for every test string the ids produced by

* ``open_clip``: ``open_clip.tokenize(text)[0]`` (77 ids, padded with 0). This is
  the reference our Rust normalisation is designed to match (ftfy-like fixes,
  ``html.unescape`` twice, whitespace collapse, lower-casing).
* ``hf``: transformers' slow, pure-Python ``CLIPTokenizer`` (transformers 4.x;
  uses ``ftfy.fix_text`` when ftfy is installed) called with
  ``padding="max_length", max_length=77, truncation=True`` and pad token
  ``<|endoftext|>`` as in openai/clip-vit-base-patch16 (so padded with 49407).
* ``hf_fast``: ``CLIPTokenizerFast`` built the same way, i.e. converted from the
  slow one by ``convert_slow_tokenizer.CLIPConverter`` (no ftfy, no html unescape).

Both HF tokenizers are built offline from a vocab.json/merges.txt generated
into a temporary directory from weights/bpe_simple_vocab_16e6.txt.gz.

transformers 5 dropped the slow tokenizers. When the running interpreter's
transformers has no slow CLIPTokenizer, the HF part runs in a subprocess of the
same interpreter with ``PYTHONPATH=$ANOSCOPE_TF4_SITE`` (default /work/tf4-site),
a directory prepared with::

    /work/venv-ref/bin/pip install --target /work/tf4-site --no-deps \
        transformers==4.57.6 "huggingface-hub>=0.34,<1.0" "tokenizers>=0.22,<=0.23.0" \
        requests urllib3 idna charset-normalizer certifi

Usage: ``/work/venv-ref/bin/python tests/reference/tokens.py [OUT.json]``
(needs open_clip_torch, ftfy, torch in that venv), or import this module and
call ``write_token_fixture(path)``.

``tokens.py --fuzz OUT.jsonl [N]`` writes open_clip ids of N random strings for the
ignored test ``fuzz_against_open_clip`` in crate/tests/tokenizer.rs
(``ANOSCOPE_TOKENS_FUZZ=OUT.jsonl cargo test -p anoscope --test tokenizer -- --ignored``).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BPE_PATH = REPO / "weights" / "bpe_simple_vocab_16e6.txt.gz"
FIXTURE_PATH = REPO / "tests" / "fixtures" / "tokens.json"
TF4_SITE = os.environ.get("ANOSCOPE_TF4_SITE", "/work/tf4-site")

CONTEXT_LENGTH = 77
SOT = 49406
EOT = 49407
NUM_MERGES = 49152 - 256 - 2  # 48894, as in open_clip / CLIP

# --------------------------------------------------------------------------
# test strings
# --------------------------------------------------------------------------

# WinCLIP prompt ensemble (compositional prompts: state words x templates).
WINCLIP_NORMAL_STATES = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
]
WINCLIP_ANOMALOUS_STATES = [
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
]
WINCLIP_TEMPLATES = [
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
]
MVTEC = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]
VISA = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]

EDGE_CASES = [
    # plain prompts
    "a photo of a flawless bottle.",
    "a photo of a damaged bottle.",
    "a photo of a metal nut.",
    "a photo of a chewing gum with defect.",
    "A photo of a cat",
    "a photo of a cat",
    "industrial inspection: scratched surface on a printed circuit board",
    # empty / whitespace
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\t\n \r\n",
    "  a photo of a cat.  ",
    "\ta photo\tof a\tcat\t",
    "a photo\nof a\r\ncat\rtoday",
    "a    photo     of      a cat",
    "line one\n\nline two",
    "a\u00a0photo\u00a0of a cat",
    "a\u2003photo\u2009of\u202fa\u205fcat",
    "a\u3000photo",
    "a\u2028photo\u2029of",
    "a\x0cphoto\x0bof",
    "a\x1cb\x1dc\x1ed\x1fe",
    # punctuation
    "hello, world!",
    "what?!",
    "...",
    "wait... what???",
    "a-b_c",
    "snake_case_name and kebab-case-name",
    "(parentheses) [brackets] {braces} <angles>",
    "@#$%^&*",
    "e-mail: someone@example.com",
    "http://example.com/path?x=1&y=2",
    "C++ / C# / F#",
    "50% off!!!",
    "\u00abguillemets\u00bb",
    "\u201ccurly double quotes\u201d",
    "\u2018curly single quotes\u2019",
    "it\u2019s broken",
    "don\u2019t",
    "em\u2014dash and en\u2013dash",
    "ellipsis\u2026",
    "~tilde `backtick` |pipe| \\backslash/",
    "!!!???...,,,;;;:::",
    "\"straight double quotes\"",
    "#hashtag @mention",
    "$100.00",
    "a/b/c",
    "x<y>z",
    # apostrophes and contractions
    "it's",
    "can't",
    "they're",
    "we've",
    "I'm",
    "you'll",
    "he'd",
    "IT'S",
    "THEY'RE HERE",
    "rock 'n' roll",
    "'s",
    "''",
    "'",
    "o'clock",
    "the dog's bone",
    "the dogs' bones",
    "'twas the night",
    "y'all'd've",
    "isn't it's",
    # numbers
    "123",
    "0",
    "3.14159",
    "1,000,000",
    "2024-01-01",
    "pcb1",
    "macaroni2",
    "4K resolution",
    "x2",
    "1st 2nd 3rd 4th",
    "\u0663\u0664\u0665",
    "\u2460\u2461\u2462",
    "\u00bd \u00bc \u00be",
    "\u216b",
    "\u00b2\u00b3",
    "1234567890" * 3,
    # case
    "A PHOTO OF A BOTTLE.",
    "PhOtO oF a BoTtLe",
    "CamelCaseWord",
    "iPhone",
    "DEFECT",
    # accented Latin
    "caf\u00e9",
    "na\u00efve",
    "r\u00e9sum\u00e9",
    "\u00c5ngstr\u00f6m",
    "Stra\u00dfe",
    "fa\u00e7ade",
    "jalape\u00f1o",
    "Z\u00fcrich",
    "\u0141\u00d3D\u0179",
    "\u0130stanbul",
    "caf\u0065\u0301 decomposed",
    "\ufb01nance \ufb02ow",
    "\u0132sselmeer",
    "\u00e6\u00f8\u00e5 \u00c6\u00d8\u00c5",
    "\u0153uvre",
    "\u0149",
    # Greek / Cyrillic
    "\u039f\u0394\u039f\u03a3",
    "\u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2",
    "\u03b1\u03b2\u03b3 \u03b4\u03b5\u03b6",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0414\u0415\u0424\u0415\u041a\u0422",
    "\u0444\u043e\u0442\u043e \u0431\u0443\u0442\u044b\u043b\u043a\u0438",
    # CJK and other scripts
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4e2d\u6587\u6d4b\u8bd5",
    "\ud55c\uad6d\uc5b4",
    "\uff21\uff22\uff23\uff11\uff12\uff13",
    "\uff76\uff80\uff76\uff85",
    "\uffe5100",
    "\u0645\u0631\u062d\u0628\u0627",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "a photo of a \u732b",
    # emoji and symbols
    "\U0001F600",
    "\U0001F44D\U0001F3FD",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\U0001F1EB\U0001F1F7",
    "\u2764\ufe0f",
    "a photo of a \U0001F431",
    "\u2713 \u2717 \u2605",
    "\u00a9 \u00ae \u2122",
    "\u00b0C",
    "\u00b5m",
    "\u2126",
    # invisible and control characters
    "zero\u200bwidth",
    "soft\u00adhyphen",
    "\ufeffbom",
    "a\x00b",
    "a\x07b",
    "\x1b[31mred\x1b[0m text",
    "a\x85b",
    "a\x96b",
    "a\x80b",
    "a\x7fb",
    "\u206aa",
    # html entities
    "&amp;",
    "fish &amp; chips",
    "&lt;tag&gt;",
    "a <b> &amp; c",
    "a &lt;b&gt; &amp; c",
    "&amp;amp;",
    "&amp;amp;amp;",
    "&#39;",
    "it&#x27;s",
    "&#8217;",
    "&quot;quoted&quot;",
    "a&nbsp;b",
    "&copy; 2024",
    "caf&eacute;",
    "P&EACUTE;REZ",
    "&amp",
    "AT&T",
    "fish&chips",
    "&ampx",
    "&notin;",
    "&#0;",
    "&#128;",
    "&#x1F600;",
    "&#99999999;",
    "&unknown;",
    "&#",
    "&;",
    "& amp;",
    "&lt",
    "x &lt 3",
    "&checkmark;",
    "first &lt;\nsecond &amp;",
    "a <b>\nP&EACUTE;REZ",
    "P&EACUTE;REZ\na <b>",
    # literal special tokens
    "<|startoftext|>",
    "<|endoftext|>",
    "a photo <|endoftext|> of a cat",
    "<start_of_text>",
    "<end_of_text>",
    "a <end_of_text> b",
    "!<end_of_text>",
    "\u093e<end_of_text>",
    "\u0e31<start_of_text>x",
    # mojibake (ftfy repairs it)
    "s\u00c3\u00b3",
    "caf\u00c3\u00a9",
    # long words / long strings
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious",
    "a" * 60,
    "Donaudampfschifffahrtsgesellschaftskapit\u00e4n",
    "a photo of a bottle " * 20,
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    " ".join(["cat"] * 74),
    "one two three four five six seven eight nine ten " * 10,
    "9" * 100,
    "\U0001F600" * 30,
    "\u65e5\u672c" * 50,
]


def test_strings() -> list[str]:
    """All strings of the fixture, in a fixed order, without duplicates."""
    out: list[str] = []
    # all WinCLIP templates with a normal and an anomalous state
    for template in WINCLIP_TEMPLATES:
        out.append(template.format("flawless bottle"))
        out.append(template.format("metal_nut with defect"))
    # all WinCLIP states with one template
    for state in WINCLIP_NORMAL_STATES + WINCLIP_ANOMALOUS_STATES:
        out.append("a photo of a {}.".format(state.format("capsule")))
    # all MVTec AD / VisA class names
    for obj in MVTEC + VISA:
        out.append("a photo of a flawless {}.".format(obj))
        out.append("a cropped photo of the damaged {}.".format(obj.replace("_", " ")))
    out.extend(EDGE_CASES)
    seen: set[str] = set()
    uniq = []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


# --------------------------------------------------------------------------
# vocabulary files for the HF tokenizers
# --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_vocab_files(dirpath: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt as in openai/clip-vit-base-patch16."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_file = dirpath / "vocab.json"
    merges_file = dirpath / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def _hf_ids_inprocess(texts: list[str], vocab_dir: str) -> dict:
    import tokenizers
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    vocab_file = os.path.join(vocab_dir, "vocab.json")
    merges_file = os.path.join(vocab_dir, "merges.txt")
    kw = dict(pad_token="<|endoftext|>")
    slow = CLIPTokenizer(vocab_file=vocab_file, merges_file=merges_file, **kw)
    fast = CLIPTokenizerFast(vocab_file=vocab_file, merges_file=merges_file, **kw)
    call = dict(padding="max_length", max_length=CONTEXT_LENGTH, truncation=True)
    return {
        "hf": [list(map(int, ids)) for ids in slow(texts, **call)["input_ids"]],
        "hf_fast": [list(map(int, ids)) for ids in fast(texts, **call)["input_ids"]],
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "hf_slow_uses_ftfy": getattr(slow, "fix_text", None) is not None,
        },
    }


def _has_slow_clip_tokenizer() -> bool:
    try:
        import transformers

        return int(transformers.__version__.split(".")[0]) < 5
    except ImportError:
        return False


def hf_ids(texts: list[str], vocab_dir: str) -> dict:
    if _has_slow_clip_tokenizer():
        return _hf_ids_inprocess(texts, vocab_dir)
    if not os.path.isdir(TF4_SITE):
        raise SystemExit(
            f"transformers>=5 has no slow CLIPTokenizer and {TF4_SITE} does not exist; "
            "see the docstring of tests/reference/tokens.py"
        )
    env = dict(os.environ, PYTHONPATH=TF4_SITE, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--hf-worker", vocab_dir],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# fixture
# --------------------------------------------------------------------------


def _until_eot(ids: list[int]) -> list[int]:
    """Ids up to and including the first EOT (i.e. without the padding)."""
    return ids[: ids.index(EOT) + 1]


def write_token_fixture(path: str | os.PathLike = FIXTURE_PATH) -> dict:
    import ftfy
    import open_clip
    import open_clip.tokenizer as oc_tok

    with open(oc_tok.default_bpe(), "rb") as f:
        assert f.read() == BPE_PATH.read_bytes(), "open_clip ships a different bpe file"

    texts = test_strings()
    oc = [list(map(int, row)) for row in open_clip.tokenize(texts).tolist()]
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(Path(tmp))
        hf = hf_ids(texts, tmp)

    names = ["open_clip", "hf", "hf_fast"]
    entries = []
    disagreements = []
    for i, text in enumerate(texts):
        ids = {"open_clip": oc[i], "hf": hf["hf"][i], "hf_fast": hf["hf_fast"][i]}
        for name in names:
            assert len(ids[name]) == CONTEXT_LENGTH and ids[name][0] == SOT, (name, text)
        entries.append({"text": text, **ids})
        groups: list[list[str]] = []
        for name in names:
            for g in groups:
                if _until_eot(ids[g[0]]) == _until_eot(ids[name]):
                    g.append(name)
                    break
            else:
                groups.append([name])
        if len(groups) > 1:
            disagreements.append({"index": i, "text": text, "groups": groups})

    doc = {
        "about": "CLIP token ids of test strings from three reference tokenizers; "
        "written by tests/reference/tokens.py",
        "versions": {
            "python": sys.version.split()[0],
            "open_clip": open_clip.__version__,
            "ftfy": ftfy.__version__,
            **hf["versions"],
        },
        "context_length": CONTEXT_LENGTH,
        "sot": SOT,
        "eot": EOT,
        "pad": {"open_clip": 0, "hf": EOT, "hf_fast": EOT},
        "disagreements": disagreements,
        "entries": entries,
    }
    _dump(doc, Path(path))
    return doc


def _dump(doc: dict, path: Path) -> None:
    """Compact JSON: one line per entry / disagreement."""

    def d(x) -> str:
        return json.dumps(x, ensure_ascii=True, separators=(",", ":"))

    head = {k: v for k, v in doc.items() if k not in ("disagreements", "entries")}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"{d(k)}:{d(v)},")
    for key in ("disagreements", "entries"):
        items = doc[key]
        lines.append(f"{d(key)}:[")
        lines.extend(d(x) + ("," if j + 1 < len(items) else "") for j, x in enumerate(items))
        lines.append("]," if key == "disagreements" else "]")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


# --------------------------------------------------------------------------
# random strings (not part of the fixture; for `cargo test ... fuzz -- --ignored`)
# --------------------------------------------------------------------------

FUZZ_PIECES = [
    "a", "photo", "of", "the", "Bottle", "DEFECT", " ", "  ", "\t", "\n", "\r\n", "\r",
    "0", "7", "42", ".", ",", "!", "?", "-", "_", "'", "'s", "'T", "'re", "\"", "(", ")",
    "<", ">", "&", ";", "#", "&amp;", "&AMP;", "&lt;", "&gt", "&quot;", "&#39;", "&#x41;",
    "&#128;", "&#0;", "&nbsp;", "&eacute;", "&EACUTE;", "&amp;amp;", "&szlig;", "&SZLIG;",
    "&Sigma;", "&hellip;", "&apos;", "&#8230;", "&#xD800;", "&ampx", "&copy",
    "<end_of_text>", "<start_of_text>", "<|endoftext|>",
    "\u00e9", "e\u0301", "\u00df", "\u0130", "\u03a3", "\u039f\u0394\u039f\u03a3",
    "\u03c3", "\u0416", "\u65e5\u672c", "\u30c6", "\uff76\uff9e", "\uff21", "\uff11",
    "\u3000", "\u00a0", "\u2003", "\u2028", "\u0085", "\u0096", "\u0080", "\u0081",
    "\ufb01", "\u0149", "\u01c4", "\u2018", "\u2019", "\u201c", "\u201d", "\u02bc",
    "\u200b", "\u200d", "\u00ad", "\ufeff", "\u206b", "\x00", "\x07", "\x0b", "\x0c",
    "\x1b[1;31m", "\x1b[0m", "\x1c", "\x7f", "\U0001F600", "\U0001F3FD", "\u2764\ufe0f",
    "\u0663", "\u2460", "\u00bd", "\u216b", "\u0928\u092e", "\u093e", "\u0e31",
    "\u05e9", "\u0645", "\u20ac", "\u00c3\u00a9",
]


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def write_fuzz(path: str | os.PathLike, n: int) -> None:
    """open_clip ids of n random strings as JSON lines {"text", "open_clip", "mojibake"};
    "mojibake" tells whether ftfy's fix_encoding (not implemented in Rust) changes the text."""
    import ftfy
    import open_clip

    texts = fuzz_strings(n)
    ids = open_clip.tokenize(texts).tolist()
    with open(path, "w", encoding="ascii") as f:
        for t, row in zip(texts, ids):
            moji = ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False)
            line = {"text": t, "open_clip": row, "mojibake": moji}
            f.write(json.dumps(line, ensure_ascii=True) + "\n")


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[1] == "--hf-worker":
        texts = json.loads(sys.stdin.read())
        json.dump(_hf_ids_inprocess(texts, argv[2]), sys.stdout)
        return
    if len(argv) >= 2 and argv[1] == "--fuzz":
        n = int(argv[3]) if len(argv) > 3 else 5000
        write_fuzz(argv[2], n)
        return
    out = Path(argv[1]) if len(argv) > 1 else FIXTURE_PATH
    doc = write_token_fixture(out)
    n = len(doc["entries"])
    print(f"wrote {out}: {n} strings, {len(doc['disagreements'])} with disagreeing references")
    for dis in doc["disagreements"]:
        print(f"  #{dis['index']} {dis['text']!r}: {dis['groups']}")


if __name__ == "__main__":
    main(sys.argv)
