"""The documentation tells the truth about the project it sits in.

- every relative link in README.md, CHANGELOG.md and docs/ resolves (the file, and the heading
  when the link names one);
- the README's configuration table lists exactly the environment variables the code reads
  (`os.environ` / `os.getenv` by name, the service's Settings fields, feature_store.yaml's
  `${VAR}`s): none missing, none stale;
- the README stays a front door (under 300 lines) and no page speaks of internal work rounds.

The walk-through blocks themselves run in tests/test_commands.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from skewless.paths import PROJECT_DIR

PAGES = [PROJECT_DIR / "README.md", PROJECT_DIR / "CHANGELOG.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
READS = re.compile(r"""os\.(?:environ\.get|environ\.setdefault|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']|os\.environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no {dest})")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                broken.append(f"{page.name}: {target} (no heading #{frag} in {dest.name})")
    assert not broken, "\n".join(broken)


def tracked_python() -> list[Path]:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.py"], cwd=PROJECT_DIR,
                           capture_output=True, check=True).stdout.decode().split("\0")
    return [PROJECT_DIR / f for f in files if f and not f.startswith("tests/") and (PROJECT_DIR / f).is_file()]


def variables_read() -> set[str]:
    from online.settings import Settings

    names = {a or b for f in tracked_python() for a, b in READS.findall(f.read_text())}
    names |= {f"SKEWLESS_{field.upper()}" for field in Settings.model_fields}
    yaml = re.sub(r"#.*", "", (PROJECT_DIR / "feature_repo" / "feature_store.yaml").read_text())  # the comments name ${VAR} itself
    names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)\}", yaml))
    return names


def configuration_table() -> set[str]:
    text = (PROJECT_DIR / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section, flags=re.M))


def test_the_configuration_table_lists_every_variable_the_code_reads():
    read, listed = variables_read(), configuration_table()
    assert read - listed == set(), f"read by the code but not in the README's configuration table: {sorted(read - listed)}"
    assert listed - read == set(), f"in the configuration table but read nowhere: {sorted(listed - read)}"


def test_the_readme_is_a_front_door_and_no_page_names_a_work_round():
    assert len((PROJECT_DIR / "README.md").read_text().splitlines()) < 300
    rounds = re.compile(r"\b(?:stop|issue|wave)s? \d+\b|\(#\d+\)", re.I)
    found = [f"{p.name}: {m.group(0)}" for p in PAGES if p.name != "CHANGELOG.md" for m in rounds.finditer(p.read_text())]
    assert not found, found
