"""The docs cannot drift from the code: every `python scripts/...` command they show parses, and the sample output
they show is the command's real output."""

import glob
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every `python scripts/...` command in a code block or a code span."""
    found = []
    for page in PAGES:
        text = open(page).read().replace("\\\n", " ")  # continued lines
        code = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        for block in code:
            for line in block.splitlines():
                for part in re.split(r"&&|;|\|", line):
                    part = part.split("#")[0].strip()
                    if re.match(r"python3? scripts/\w+\.py", part):
                        found.append((os.path.relpath(page, ROOT), part))
    return sorted(set(found))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"shown_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page, command", shown_commands())
def test_every_command_the_docs_show_parses(page, command, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    words = shlex.split(command)
    name, args = os.path.basename(words[1]).removesuffix(".py"), words[2:]
    assert "{" not in command, f"{page}: {command!r} relies on the shell's brace expansion"
    if "--help" in args:
        with pytest.raises(SystemExit, match="0"):
            parse(name, args)
        return
    parse(name, args)


def parse(name: str, args: list[str]) -> None:
    """What the script's own command line would make of `args` (tyro exits with code 2 for a bad option)."""
    if name == "train":
        from trainer.config import PRESETS, TrainConfig

        preset = args[args.index("--preset") + 1] if "--preset" in args else "cpu"
        rest = [a for i, a in enumerate(args) if a != "--preset" and (i == 0 or args[i - 1] != "--preset")]
        tyro.cli(TrainConfig, default=PRESETS[preset], args=rest)
    else:
        module = load_script(name)
        if hasattr(module, "Args"):
            tyro.cli(module.Args, args=args)
        else:
            assert not args, f"scripts/{name}.py takes no options"


def test_the_docs_show_commands_of_every_script():
    shown = {os.path.basename(shlex.split(c)[1]) for _, c in shown_commands()}
    assert {"train.py", "evaluate.py", "play.py", "bench.py", "reproduce_collapse.py", "learning_bench.py"} <= shown


def links(page: str) -> list[tuple[str, str, str]]:
    """A page's links within the repository: (as written, the file it reaches, the anchor or '')."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", open(os.path.join(ROOT, page)).read()):
        if not re.match(r"[a-z]+://", target):
            path, _, anchor = target.partition("#")  # no path: a section of the page itself
            found.append((target, os.path.normpath(os.path.join(ROOT, os.path.dirname(page) if path else page, path)),
                          anchor))
    return found


@pytest.mark.parametrize("page", [os.path.relpath(p, ROOT) for p in PAGES])
def test_every_link_of_the_docs_is_a_file_of_the_repository(page):
    """A link to a file outside the repository (or to one since moved) is a link the reader cannot follow."""
    text = open(os.path.join(ROOT, page)).read()
    for target, path, _ in links(page):
        if target.startswith("#"):
            continue
        assert os.path.commonpath([path, ROOT]) == ROOT, f"{page} links {target}, outside the repository"
        assert os.path.exists(path), f"{page} links {target}, which does not exist"
    assert "../shared" not in text, f"{page} names ../shared, which readers of the repository do not have"


def headings(path: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens, -1, -2 on
    repeats."""
    text, seen = re.sub(r"```.*?```", "", open(path).read(), flags=re.S), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
    return {slug if n == 0 else f"{slug}-{n}" for slug, count in seen.items() for n in range(count + 1)}


@pytest.mark.parametrize("page", [os.path.relpath(p, ROOT) for p in PAGES])
def test_every_link_to_a_section_reaches_its_heading(page):
    for target, path, anchor in links(page):
        if anchor:
            assert anchor in headings(path), f"{page} links {target}: no such heading there"


def readme_units(text: str) -> list[str]:
    """The README's prose as the reader meets it: table rows, and the sentences of every paragraph and list item;
    code blocks left out."""
    units = []
    for block in re.split(r"\n\s*\n", re.sub(r"```.*?```", "", text, flags=re.S)):
        lines = block.strip().splitlines()
        if lines and all(line.startswith("|") for line in lines):
            units += lines
            continue
        for item in re.split(r"\n(?=\s*- |#)", block.strip()):  # a list item or a heading is a paragraph of its own
            units += re.split(r"(?<=[.!?])\s+(?=[A-Z(\[`*])", " ".join(item.split()))
    return units


def test_every_figure_in_the_readme_links_to_the_section_that_measured_it():
    """The README is a front door: its figures live in docs/ (learning.md, benchmarks.md: date, machine, commit,
    command), once. So any number in its prose or its status table (any digit outside code and link targets) sits
    in a sentence or table row that links the docs section where it was measured or is defined."""
    unlinked = []
    for unit in readme_units(open(os.path.join(ROOT, "README.md")).read()):
        words = re.sub(r"`[^`]*`", "", re.sub(r"\]\([^)]*\)", "]", unit))  # code spans and link targets are not prose
        if re.search(r"\d", words) and not re.search(r"\]\(docs/\w+\.md#[^)]+\)", unit):
            unlinked.append(unit)
    assert not unlinked, "figures without a link to docs/<page>.md#<section>:\n" + "\n".join(unlinked)


def test_readme_play_sample_is_the_real_output():
    readme = open(os.path.join(ROOT, "README.md")).read()
    sample = re.search(r"```\n\$ (python scripts/play\.py[^\n]*)\n(.*?)```", readme, re.S)
    command, shown = sample.group(1), sample.group(2)
    real = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True, cwd=ROOT)
    assert real.stdout == shown


def test_the_walkthroughs_worked_example_is_what_the_advantage_code_computes():
    import torch

    from trainer.advantage import compute_advantages

    doc = open(os.path.join(ROOT, "docs", "walkthrough.md")).read()
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([-\d.]+ \| [-\d.]+ \| [-\d.]+ \| [-\d.]+) \|$", doc, re.M))
    assert len(rows) == 4
    values, rewards = torch.tensor([[0.5, 0.6, 0.2, 0.7]]), torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    none = torch.zeros(1, 4, dtype=torch.bool)
    at_2 = torch.tensor([[False, False, True, False]])
    ratio = torch.ones(1, 4)
    half = torch.tensor([[1.0, 0.5, 1.0, 1.0]])
    cases = {"no episode end": (none, none, ratio), "terminal with observation 2 (`dones[2]`)": (at_2, none, ratio),
             "truncation with observation 2 (`truncateds[2]`)": (none, at_2, ratio),
             "ratio 0.5 at t = 1 (ρ̄ = c̄ = 1)": (none, none, half)}
    assert set(rows) == set(cases)
    for case, (dones, truncateds, r) in cases.items():
        shown = [float(x) for x in rows[case].split(" | ")]
        computed = compute_advantages(values, rewards, dones, truncateds, r, 0.9, 0.8, 1.0, 1.0)[0].tolist()
        assert computed == pytest.approx(shown, abs=5e-5), case


def test_the_walkthroughs_diagram_is_the_scripts_real_output():
    doc = open(os.path.join(ROOT, "docs", "walkthrough.md")).read()
    shown = re.search(r"```\n(row = one agent's segment.*?)```", doc, re.S).group(1)
    real = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "segments_diagram.py")], capture_output=True,
                          text=True, cwd=ROOT)
    assert real.returncode == 0, real.stderr
    assert real.stdout == shown


DATA = os.path.join(ROOT, "docs", "data")


def studies(kind: str) -> list[str]:
    folder = os.path.join(DATA, kind)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def shown_summary(page: str, kind: str, study: str) -> str:
    """docs/data/<kind>/<study>/summary.md, checked to be shown unchanged on the page between its markers."""
    summary = open(os.path.join(DATA, kind, study, "summary.md")).read()
    text = open(os.path.join(ROOT, "docs", page)).read()
    shown = re.search(rf"<!-- begin data/{kind}/{study}/summary.md -->\n(.*?)<!-- end -->", text, re.S)
    assert shown, f"docs/{page} has no block for {study}'s summary"
    assert shown.group(1).strip() == summary.strip()
    return summary


def copy_study(source: str, target, names=("study.json", "runs.csv", "curves.csv")) -> None:
    os.makedirs(target, exist_ok=True)
    for name in names:
        shutil.copy(os.path.join(source, name), os.path.join(target, name))


@pytest.mark.parametrize("study", studies("collapse"))
def test_the_collapse_page_shows_each_studys_summary_as_its_csv_gives_it(study, tmp_path):
    """docs/collapse.md shows docs/data/collapse/<study>/summary.md unchanged between its markers, and the analysis
    of the committed curves.csv and runs.csv writes that summary again: every number on the page is the CSV's."""
    summary = shown_summary("collapse.md", "collapse", study)
    copy_study(os.path.join(DATA, "collapse", study), tmp_path)
    analysis = load_script("reproduce_collapse")
    analysis.analyze(tyro.cli(analysis.Args, args=["--out", str(tmp_path), "--analyze-only"]))
    assert (tmp_path / "summary.md").read_text() == summary


@pytest.mark.parametrize("study", studies("learning"))
def test_the_learning_page_shows_each_benchmarks_summary_as_its_csv_gives_it(study, tmp_path):
    """docs/learning.md shows docs/data/learning/<study>/summary.md unchanged between its markers, and
    `learning_bench.py --analyze-only` on the committed CSVs (one folder per task) writes that summary again."""
    summary = shown_summary("learning.md", "learning", study)
    bench = load_script("learning_bench")
    tasks = [task for task in bench.BUDGETS if os.path.isdir(os.path.join(DATA, "learning", study, task))]
    for task in tasks:
        copy_study(os.path.join(DATA, "learning", study, task), tmp_path / task,
                   ("study.json", "runs.csv", "curves.csv", "reference.json"))
    bench.main(tyro.cli(bench.Args, args=["--out", str(tmp_path), "--analyze-only", "--tasks", *tasks]))
    assert (tmp_path / "summary.md").read_text() == summary


def test_the_training_page_shows_the_searchs_trials_as_its_journal_gives_them(tmp_path):
    """docs/training.md shows the search's trials.md unchanged between its markers, and scripts/tune.py's
    write_trials on the committed Optuna journal and runs writes that table again."""
    optuna = pytest.importorskip("optuna", reason='the search needs the tune extra: pip install -e ".[tune]"')
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    source = os.path.join(DATA, "learning", "tune_nav", "nav")
    table = open(os.path.join(source, "trials.md")).read()
    text = open(os.path.join(ROOT, "docs", "training.md")).read()
    shown = re.search(r"<!-- begin data/learning/tune_nav/nav/trials.md -->\n(.*?)<!-- end -->", text, re.S)
    assert shown and shown.group(1).strip() == table.strip()
    copy_study(source, tmp_path, ("runs.csv", "curves.csv", "optuna.log"))
    sys.path.insert(0, os.path.join(ROOT, "scripts"))  # tune.py imports learning_bench
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    load_script("tune").write_trials(str(tmp_path), optuna.load_study(study_name="tune", storage=journal))
    assert (tmp_path / "trials.md").read_text() == table
