"""Every soraplan command shown in the README and docs parses as written: the command word, its
flags, the config file and every `key.path=value` it names load (strict keys, ranges). Nothing is
run: the console scripts' runner is swapped for one that stops after loading the config (the
commands that run are walked by hand; see the docs' figures and the heavy end-to-end tests).
Placeholders (`<curated dir>`) become a dummy path; optional `[...]` groups are dropped."""

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

import soraplan.core.cli as core_cli
from soraplan.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/curation.md", "docs/captioner.md", "docs/vae.md", "docs/dit.md", "docs/operations.md"]
SCRIPTS = {  # console script -> its entry point
    "soraplan-curate": "soraplan.curation.cli", "soraplan-caption": "soraplan.captioner.caption",
    "soraplan-refine": "soraplan.captioner.refine.cli", "soraplan-vae": "soraplan.model.vae.cli",
    "soraplan-dit": "soraplan.model.dit.cli", "soraplan-sample": "soraplan.model.sample",
    "soraplan-toyworld": "soraplan.core.testing.toyworld_cli",
}


def documented_commands():
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"<[^>]+>", "placeholder", line)
                line = re.sub(r"\s\[[^\]]*\]", "", line)
                if line.startswith("$ "):  # a shown session: its output follows (an error, on purpose)
                    continue
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:  # prose in a block (a folder listing), not a command
                    continue
                start = next((i for i, w in enumerate(words) if w in SCRIPTS or w.startswith("pipelines/")), None)
                if start is not None and (words[:2] == ["uv", "run"] or "--" in words or "deepspeed" in words):
                    yield pytest.param(words[start], words[start + 1:], id=f"{doc}:{' '.join(words[start:start + 2])}")


def parse_only(prog, description, commands, argv=None):
    command, args, overrides = core_cli.parse(prog, description, commands, sys.argv[1:] if argv is None else argv)
    if command.config is not None:
        load_config(command.config, args.config, overrides)
    return 0


@pytest.mark.heavy  # a few seconds a command: loading configs imports every package
@pytest.mark.parametrize("script, argv", list(documented_commands()))
def test_documented_command_parses(script, argv, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(core_cli, "run_command", parse_only)
    if script in SCRIPTS:
        main = __import__(SCRIPTS[script], fromlist=["main"]).main
        main(argv)
    else:
        monkeypatch.setattr(sys, "argv", [script, *argv])
        runpy.run_path(str(REPO / script), run_name="__main__")
