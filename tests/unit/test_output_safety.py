"""Outputs are safe to open: permissions follow the umask, CSVs carry no live formulas, and user
text placed in Markdown renders as exactly that text (no tags, links, headings or quotes)."""

from __future__ import annotations

import csv
import html
import os
import random
import re
import stat

import pandas as pd
import pytest

from pathtrail.core import files
from pathtrail.core.files import (
    FORMULA_START,
    atomic_dir,
    current_umask,
    neutralise_cell,
    read_table,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)
from pathtrail.core.text import md_block, md_inline, printable


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------------------- umask

@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one is always restored."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    written = [write_bytes(b"x", tmp_path / "a.bin"), write_text("x", tmp_path / "b.txt"),
               write_json({"a": 1}, tmp_path / "c.json"),
               write_csv(pd.DataFrame({"a": [1]}), tmp_path / "new" / "d.csv")]
    assert {p.name: mode(p) for p in written} == {p.name: file_mode for p in written}
    assert mode(tmp_path / "new") == dir_mode  # a parent made on the way, as mkdir makes it
    with atomic_dir(tmp_path / "figures") as tmp:
        with open(tmp / "plain.png", "wb") as f:
            f.write(b"png")
        write_bytes(b"png", tmp / "atomic.png")
        (tmp / "sub").mkdir()
    out = tmp_path / "figures"
    assert mode(out) == dir_mode
    assert mode(out / "sub") == dir_mode
    assert mode(out / "plain.png") == mode(out / "atomic.png") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "figures", "new"]


def test_a_rewrite_takes_the_umask_not_the_old_mode(tmp_path, umask):
    target = tmp_path / "card.json"
    target.write_text("old")
    target.chmod(0o600)
    umask(0o022)
    write_json({}, target)
    assert mode(target) == 0o644
    (tmp_path / "figures").mkdir(mode=0o700)
    with atomic_dir(tmp_path / "figures"):
        pass
    assert mode(tmp_path / "figures") == 0o755


def test_the_umask_is_read_afresh_and_without_proc(tmp_path, umask, monkeypatch):
    umask(0o027)
    assert current_umask() == 0o027
    umask(0o002)
    assert current_umask() == 0o002

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(files, "open", no_proc, raising=False)  # the module's open() only
    assert current_umask() == 0o002
    assert os.umask(0o002) == 0o002  # the fallback put it back
    assert mode(write_bytes(b"x", tmp_path / "f")) == 0o664


# ------------------------------------------------------------------------------------------ CSV

HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "P\n001",
           "\r=1", "a\rb", "\0x", "=cmd|' /C calc'!A0", 'say "hi", twice', "-", "plain"]


def raw_cells(path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_formula_cells_get_a_quote_and_numbers_never_change(tmp_path):
    df = pd.DataFrame({
        "patient_id": HOSTILE,
        "score": [-0.5, 0.25, -1e-9, 0.0, 1.5, -2.0, 3.0, -4.5, 5.0, -6.0, 7.0, -8.0, 9.0],
        "count": [-1, 2, -3, 4, -5, 6, -7, 8, -9, 10, -11, 12, -13],
    })
    before = df.copy()
    path = write_csv(df, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(df, before)  # the caller's frame is not touched
    rows = raw_cells(path)
    assert len(rows) == 1 + len(HOSTILE)  # \r and \n inside cells split no row
    assert not [c for r in rows for c in r[:1] if c[:1] in FORMULA_START]
    back = read_table(path)
    expected = [("'" + v if v[:1] in FORMULA_START else v) for v in HOSTILE]
    assert back["patient_id"].tolist() == expected
    assert back["score"].tolist() == df["score"].tolist()
    assert back["count"].tolist() == df["count"].tolist()
    assert [r[1] for r in rows[1:4]] == ["-0.5", "0.25", "-1e-09"]


def test_plain_number_text_and_numbers_in_text_columns_stay(tmp_path):
    df = pd.DataFrame({"site": ["-3", "+1.5e-3", "-.5", "-3a", "-inf"],
                       "mixed": [-0.5, "=1", None, -2, "ok"]})
    back = read_table(write_csv(df, tmp_path / "t.csv"))
    assert back["site"].tolist() == ["-3", "+1.5e-3", "-.5", "'-3a", "'-inf"]
    assert back["mixed"].fillna("NA").tolist() == ["-0.5", "'=1", "NA", "-2", "ok"]
    assert neutralise_cell(-0.5) == -0.5 and neutralise_cell(None) is None
    assert neutralise_cell(True) is True and neutralise_cell("") == ""
    assert neutralise_cell("@x") == "'@x" and neutralise_cell("'=x") == "'=x"


def test_column_names_and_categories_are_neutralised(tmp_path):
    df = pd.DataFrame({"=cmd|' /C calc'!A0": pd.Categorical(["=1", "b", "=1"]), "-score": [-1.0, 2.0, 3.0]})
    rows = raw_cells(write_csv(df, tmp_path / "t.csv"))
    assert rows == [["'=cmd|' /C calc'!A0", "'-score"], ["'=1", "-1.0"], ["b", "2.0"], ["'=1", "3.0"]]


def test_harmless_tables_are_written_byte_for_byte_as_before(tmp_path):
    """Committed pipeline outputs keep their hashes: nothing changes unless a cell needed it."""
    df = pd.DataFrame({"patient_id": ["P001", "P\n002", 'q"t'], "path": ["a/b.png", "c,d.png", "e"],
                       "label": [0, 1, 0], "p": [0.1, -0.2, float("nan")], "ok": [True, False, True]})
    path = write_csv(df, tmp_path / "t.csv")
    assert path.read_bytes() == df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    pd.testing.assert_frame_equal(read_table(path), df, check_dtype=False)


def test_a_carriage_return_quotes_every_field(tmp_path):
    df = pd.DataFrame({"slide_id": ["s\r1", "s2"], "x": [1, -2]})
    path = write_csv(df, tmp_path / "t.csv")
    assert path.read_bytes().decode("utf-8") == '"slide_id","x"\n"s\r1","1"\n"s2","-2"\n'
    back = read_table(path)
    assert back["slide_id"].tolist() == ["s\r1", "s2"] and back["x"].tolist() == [1, -2]


# ------------------------------------------------------------------------------------- Markdown

markdown_it = pytest.importorskip("markdown_it")
MD = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])  # raw HTML on

ATTACKS = [
    "<img src=x onerror=alert(1)>", "x\n> **Release status: RELEASE CANDIDATE.**", "a|b",
    "\x1b[31mred", "\u202eevil", "`code` and ```fence```", "# heading", "1. item", "2) item",
    "[link](javascript:alert(1))", "![img](http://x/y.png)", "<script>alert(1)</script>",
    "&lt;b&gt; &amp; &#60;", "> quote", "- item", "+ item", "* item", "---", "===", "    code",
    "\tcode", "~~~", "~~strike~~", "_em_ and *em*", "$\\color{red}{x}$", "<http://x>",
    "[ref]: http://x", "<!-- c -->", "a\\", "a\\|b", "x ##", "trailing  ", " lead", "",
    "\\", "\r\n", "-0.5", "1.5", "#3", "a\u2028b\u0085c\x0bd", "|---|---|", "\\*not\\*",
]
TOKENS = ["<", ">", "&", '"', "'", "\\", "`", "*", "_", "[", "]", "(", ")", "|", "~", "$", "#",
          "+", "-", "=", ".", "!", ":", " ", "  ", "\t", "\n", "\r", "\x1b", "\u202e", "1", "a",
          "&amp;", "&#60;", "<img src=x>", "javascript:", "```", "1.", "2)", "---", "{", "}", "@"]


def fuzz(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(TOKENS, k=rng.randint(1, 12))) for _ in range(n)]


def tags(rendered: str) -> set[str]:
    return {t.lower() for t in re.findall(r"</?([A-Za-z][A-Za-z0-9]*)", rendered)}


def visible(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]*>", "", fragment))


@pytest.mark.parametrize(("wrap", "allowed"), [
    ("{}", {"p"}), ("Intended use: {}", {"p"}), ("- {}", {"ul", "li"}), ("# {}", {"h1"}),
    ("**Dataset:** {}", {"p", "strong"}),
])
def test_md_inline_renders_as_its_text_and_nothing_else(wrap, allowed):
    for text in ATTACKS + fuzz(400, len(wrap)):
        escaped = md_inline(text)
        assert "\n" not in escaped and "\r" not in escaped
        out = MD.render(wrap.format(escaped))
        assert tags(out) <= allowed, (text, escaped, out)
        assert out.count("<strong>") == wrap.count("**") // 2, (text, out)
        if text:  # (for "" the wrapper's own trailing space is trimmed)
            expected = visible(MD.render(wrap.format("SENTINEL"))).replace("SENTINEL", printable(text))
            assert visible(out) == expected, (text, escaped, out)


def test_md_inline_in_a_table_keeps_every_cell():
    texts = ATTACKS + fuzz(400, 7)
    rows = [texts[i:i + 3] for i in range(0, len(texts) - 2, 3)]
    source = "| a | b | c |\n|---|---|---|\n" + "".join(
        "| " + " | ".join(md_inline(t) for t in row) + " |\n" for row in rows)
    out = MD.render(source)
    assert tags(out) <= {"table", "thead", "tbody", "tr", "th", "td"}
    cells = re.findall(r"<td>(.*?)</td>", out, re.DOTALL)
    assert [visible(c) for c in cells] == [printable(t) for row in rows for t in row]
    tight = "|a|b|\n|-|-|\n|" + md_inline("x\\") + "|" + md_inline("|y") + "|\n"  # no padding
    assert [visible(c) for c in re.findall(r"<td>(.*?)</td>", MD.render(tight))] == ["x\\", "|y"]


def expected_paragraphs(text: str) -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in re.split(r"\r\n|\r|\n", text):
        if line.strip(" \t"):
            paragraphs[-1].append(printable(line))
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def test_md_block_keeps_lines_and_paragraphs_and_nothing_else():
    statement = "\n".join(ATTACKS)
    for text in [statement, "\n\n".join(ATTACKS), *ATTACKS, *fuzz(600, 11)]:
        out = MD.render(md_block(text))
        assert tags(out) <= {"p", "br"}, (text, md_block(text), out)
        assert re.fullmatch(r"(<p>.*?</p>\n)*", out, re.DOTALL), out
        shown = [[visible(line) for line in p.split("<br />\n")]
                 for p in re.findall(r"<p>(.*?)</p>", out, re.DOTALL)]
        assert shown == expected_paragraphs(text), (text, md_block(text), out)


def test_md_block_output_shape():
    assert md_block("  \n\n") == ""
    assert md_block("For research use.\r\nNot for diagnosis.\n\n\n> **RELEASED**") == (
        "For research use.\\\nNot for diagnosis.\n\n&gt; \\*\\*RELEASED\\*\\*")
    assert md_inline("x\n# y") == "x\\\\x0a# y"
    assert md_inline("-0.5") == "-0.5" and md_inline("- 0.5") == "\\- 0.5"
    assert md_inline("1. a") == "1\\. a" and md_inline("1.5") == "1.5"
    assert printable("\u061c") == "\\u061c"
